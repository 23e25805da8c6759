"""fer_sdk.metrics (numpy) agrees with scikit-learn's definitions, misses (-1) and empty classes included."""

from __future__ import annotations

import numpy as np
import pytest

from fer_sdk.metrics import classification_report

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 7, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(-1, 7, 500))  # some misses (-1)
    y_true[y_true == 2] = 3  # class 2 never occurs: zero support, zero division
    report = classification_report(y_true, y_pred)
    idx = list(range(7))
    precision, recall, f1, support = sk.precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0))
    for i, row in enumerate(report["per_class"].values()):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]
    assert report["confusion_matrix"] == sk.confusion_matrix(y_true, y_pred, labels=idx).tolist()


def test_edge_cases():
    assert classification_report([], [])["accuracy"] == 0.0
    perfect = classification_report([0, 1, 6], [0, 1, 6])
    assert perfect["accuracy"] == 1.0 and perfect["per_class"]["disgust"]["f1"] == 1.0
    with pytest.raises(ValueError, match="entries"):
        classification_report([0, 1], [0])

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
    assert report["macro_f1"] == pytest.approx(
        sk.f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)
    )
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


def test_calibration_report_by_hand():
    from fer_sdk.metrics import calibration_report

    # top probabilities 0.9 (right), 0.9 (wrong), 0.65 (right), 0.45 (wrong) in three classes
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.1, 0.0], [0.2, 0.65, 0.15], [0.45, 0.3, 0.25]])
    y = np.array([0, 1, 1, 2])
    report = calibration_report(y, proba)
    # bins: the two 0.9s share one (accuracy 0.5 vs 0.9), 0.65 (1 vs 0.65), 0.45 (0 vs 0.45)
    assert report["ece"] == pytest.approx(2 / 4 * 0.4 + 1 / 4 * 0.35 + 1 / 4 * 0.45)
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.65, 0.25])))
    assert [(b["n"], b["accuracy"]) for b in report["reliability"]] == [(1, 0.0), (1, 1.0), (2, 0.5)]
    assert sum(b["n"] for b in report["reliability"]) == 4


def test_calibration_report_of_a_calibrated_model_is_near_zero():
    from fer_sdk.metrics import calibration_report

    rng = np.random.default_rng(0)
    n = 200_000
    confidence = rng.uniform(0.3, 1.0, n)
    correct = rng.uniform(size=n) < confidence  # right exactly as often as it claims
    proba = np.stack([confidence, 1 - confidence], axis=1)
    y = np.where(correct, 0, 1)
    assert calibration_report(y, proba)["ece"] < 0.01
    over = calibration_report(y, np.stack([np.sqrt(confidence), 1 - np.sqrt(confidence)], axis=1))
    assert over["ece"] > 0.05  # claims more than it delivers


def test_calibration_report_rejects_mismatched_shapes():
    from fer_sdk.metrics import calibration_report

    with pytest.raises(ValueError, match="proba must be"):
        calibration_report([0, 1], np.zeros((3, 7)))

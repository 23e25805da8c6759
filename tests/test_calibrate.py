"""Temperature scaling folded into the ONNX graph: fit, fold, and the runtime's probabilities follow."""

from __future__ import annotations

import numpy as np
import pytest

from fer_sdk.metrics import calibration_report

onnx = pytest.importorskip("onnx")


def _overconfident(make_onnx, path, seed=0):
    """A linear model whose logits are scaled up 10x: sharp, often wrong, so over-confident."""
    w = np.random.default_rng(seed).normal(0, 0.05, (48 * 48, 7)).astype(np.float32) * 10
    return make_onnx(path, weights=w)


def _faces_and_noisy_labels(clf, n, seed):
    """Faces, and labels drawn from the model's own probabilities softened 3x: the model is over-confident by a
    temperature of 3 by construction."""
    from fer_sdk.export.calibrate import apply_temperature

    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    truth = apply_temperature(clf.predict_proba(faces), 3.0)
    labels = np.array([rng.choice(7, p=row / row.sum()) for row in truth])
    return faces, labels


def test_fit_temperature_recovers_a_known_temperature():
    from fer_sdk.export.calibrate import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20_000, 7))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(7, p=row) for row in true])
    sharp = apply_temperature(true, 0.4)  # what a model 2.5x over-confident would say
    assert fit_temperature(sharp, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(true, labels) == pytest.approx(1.0, rel=0.05)


def test_calibrate_model_folds_the_temperature_into_the_graph(make_onnx, tmp_path):
    from fer_sdk.export.calibrate import apply_temperature, calibrate_model
    from fer_sdk.export.convert import onnx_metadata

    from fer_sdk import Classifier

    src = _overconfident(make_onnx, tmp_path / "sharp.onnx")
    clf = Classifier(src)
    fit_x, fit_y = _faces_and_noisy_labels(clf, 3000, 1)
    test_x, test_y = _faces_and_noisy_labels(clf, 2000, 2)
    block = calibrate_model(
        src,
        tmp_path / "calibrated.onnx",
        faces=fit_x,
        labels=fit_y,
        fitted_on="synthetic",
        eval_faces=test_x,
        eval_labels=test_y,
    )
    assert block["temperature"] == pytest.approx(3.0, rel=0.15)  # the over-confidence built in
    assert block["ece_after"] < 0.03 < block["ece_before"]
    assert block["nll_after"] < block["nll_before"]

    calibrated = Classifier(tmp_path / "calibrated.onnx")
    before, after = clf.predict_proba(test_x), calibrated.predict_proba(test_x)
    np.testing.assert_allclose(after, apply_temperature(before, block["temperature"]), atol=2e-3)
    np.testing.assert_allclose(after.sum(1), 1.0, atol=1e-5)
    assert (after.argmax(1) == before.argmax(1)).all()  # accuracy cannot change
    assert calibration_report(test_y, after)["ece"] == pytest.approx(block["ece_after"], abs=2e-3)
    assert onnx_metadata(tmp_path / "calibrated.onnx").calibration["fitted_on"] == "synthetic"

    with pytest.raises(Exception, match="already calibrated"):
        calibrate_model(
            tmp_path / "calibrated.onnx", tmp_path / "twice.onnx", faces=fit_x, labels=fit_y, fitted_on="synthetic"
        )
    with pytest.raises(Exception, match="is the model being calibrated"):
        calibrate_model(src, src, faces=fit_x, labels=fit_y, fitted_on="synthetic")


def test_fold_after_averaged_probabilities(make_onnx, tmp_path):
    """An ensemble ends on averaged probabilities, not one Softmax: T goes after them as softmax(log p / T)."""
    from fer_sdk.export.calibrate import apply_temperature, fold_temperature
    from onnx import helper

    from fer_sdk import Classifier
    from fer_sdk.constants import OUTPUT_NAME

    src = _overconfident(make_onnx, tmp_path / "one.onnx")
    model = onnx.load(str(src))
    for node in model.graph.node:  # rename the Softmax output, then average it with itself (Mean)
        node.output[:] = ["p" if o == OUTPUT_NAME else o for o in node.output]
    model.graph.node.append(helper.make_node("Mean", ["p", "p"], [OUTPUT_NAME]))
    folded = fold_temperature(model, 2.0)
    (tmp_path / "mean.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "folded.onnx").write_bytes(folded.SerializeToString())
    faces = np.random.default_rng(3).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    plain, scaled = (
        Classifier(tmp_path / "mean.onnx").predict_proba(faces),
        Classifier(tmp_path / "folded.onnx").predict_proba(faces),
    )
    np.testing.assert_allclose(scaled, apply_temperature(plain, 2.0), atol=1e-4)

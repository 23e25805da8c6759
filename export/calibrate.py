"""Temperature scaling (Guo et al. 2017): make ``predict_proba`` mean what it says, inside the ONNX file.

:func:`fit_temperature` finds the T that minimises the negative log-likelihood of held-out faces;
:func:`fold_temperature` writes it into the graph as a ``Div`` in front of the final ``Softmax`` (the INT8
models keep that head in float), so every runtime that loads the file (INT8 included) gets calibrated
probabilities, and records it in the metadata's ``calibration`` block. Argmax, hence accuracy, is unchanged.

Fit T on faces the reported numbers are not measured on (a validation slice of Training that the network did
not train on); :func:`calibrate_model` refuses nothing, so that choice is the caller's and goes on record.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_sdk.constants import OUTPUT_NAME
from fer_sdk.errors import InvalidInputError, ModelError
from fer_sdk.metrics import calibration_report

#: The search range of the temperature (T < 1 sharpens, T > 1 softens).
T_RANGE = (0.05, 20.0)
#: Probabilities below this (float32's smallest normal number) are read as this: log 0 is not a logit.
_TINY = float(np.finfo(np.float32).tiny)


def _scaled(log_p: np.ndarray, temperature: float) -> np.ndarray:
    z = log_p / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """Probabilities re-scaled by ``temperature``: softmax(log p / T), what the folded graph computes (the
    model's logits are log p up to a per-row constant, which softmax ignores)."""
    p = np.asarray(proba, dtype=np.float64)
    return _scaled(np.log(np.clip(p, _TINY, 1.0)), float(temperature))


def fit_temperature(proba, labels) -> float:
    """The temperature minimising the mean negative log-likelihood of ``labels`` under ``proba`` re-scaled
    (golden-section search on log T, which the NLL is unimodal in)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).ravel()
    if p.ndim != 2 or len(p) != len(y) or len(y) < 100:
        raise InvalidInputError(
            f"fit_temperature needs (N, 7) probabilities and N labels with N >= 100; got {p.shape} and {y.shape}"
        )
    log_p = np.log(np.clip(p, _TINY, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.log(np.clip(_scaled(log_p, np.exp(log_t))[rows, y], 1e-12, 1.0)).mean())

    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def fold_temperature(model, temperature: float):
    """A copy of ``model`` (an ONNX ModelProto) whose final Softmax divides its input by ``temperature``."""
    import onnx
    from onnx import helper, numpy_helper

    if not np.isfinite(temperature) or temperature <= 0:
        raise InvalidInputError(f"temperature={temperature!r} must be a finite number > 0")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if OUTPUT_NAME not in {o.name for o in graph.output}:
        raise ModelError(f"the model has no {OUTPUT_NAME!r} output; export it with this project (fer-sdk export)")
    names = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    scale, scaled = "fer_sdk_temperature", "fer_sdk_scaled_logits"
    if scale in names or scaled in names:
        raise ModelError("this model already holds a folded temperature; calibrate the uncalibrated export")
    graph.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=np.float32), scale))
    softmax = [n for n in graph.node if n.op_type == "Softmax" and OUTPUT_NAME in n.output]
    if len(softmax) == 1:  # one network: divide its logits
        node = softmax[0]
        div = helper.make_node("Div", [node.input[0], scale], [scaled], name="fer_sdk_temperature_div")
        node.input[0] = scaled
        graph.node.insert(list(graph.node).index(node), div)
    else:  # an ensemble's averaged probabilities: softmax(log p / T) after them
        mean = "fer_sdk_uncalibrated"
        for n in graph.node:
            n.output[:] = [mean if o == OUTPUT_NAME else o for o in n.output]
        floor = "fer_sdk_probability_floor"
        graph.initializer.append(numpy_helper.from_array(np.array(1e-12, dtype=np.float32), floor))
        graph.node.extend(
            [
                helper.make_node("Max", [mean, floor], ["fer_sdk_floored"], name="fer_sdk_temperature_floor"),
                helper.make_node("Log", ["fer_sdk_floored"], ["fer_sdk_log_p"], name="fer_sdk_temperature_log"),
                helper.make_node("Div", ["fer_sdk_log_p", scale], [scaled], name="fer_sdk_temperature_div"),
                helper.make_node("Softmax", [scaled], [OUTPUT_NAME], axis=-1, name="fer_sdk_temperature_softmax"),
            ]
        )
    onnx.checker.check_model(out)
    return out


def calibrate_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    faces: np.ndarray,
    labels: np.ndarray,
    fitted_on: str,
    eval_faces: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
) -> dict:
    """Fit a temperature for the model at ``src`` on ``faces``/``labels`` (``fitted_on`` names them, e.g.
    "Training rows 25,838-28,708 (held out)"), fold it in and write ``dst`` atomically; return the metadata's
    ``calibration`` block: T, and ECE / NLL before and after on ``eval_faces`` (else on the fitting faces)."""
    import onnx

    from fer_sdk import Classifier
    from fer_sdk.files import atomic_write_bytes
    from fer_sdk.runtime import create_session

    from .convert import checked_bytes, onnx_metadata, set_metadata

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InvalidInputError(f"{dst} is the model being calibrated; write the calibrated copy elsewhere")
    model = onnx.load(str(src))
    meta = onnx_metadata(model)
    if meta.calibration:
        raise ModelError(f"{src} is already calibrated (T={meta.calibration.get('temperature')}); use its source")
    proba = Classifier(src).predict_proba(faces)
    temperature = fit_temperature(proba, labels)
    ex, ey = (faces, labels) if eval_faces is None else (eval_faces, eval_labels)
    before = proba if eval_faces is None else Classifier(src).predict_proba(ex)
    after_report = calibration_report(ey, apply_temperature(before, temperature))
    before_report = calibration_report(ey, before)
    block = {
        "method": "temperature",
        "temperature": round(temperature, 6),
        "fitted_on": fitted_on,
        "faces": len(faces),
        "measured_on": "the fitting faces" if eval_faces is None else f"{len(ex)} other faces",
        "ece_before": before_report["ece"],
        "ece_after": after_report["ece"],
        "nll_before": before_report["nll"],
        "nll_after": after_report["nll"],
    }
    calibrated = fold_temperature(model, temperature)
    set_metadata(calibrated, meta.replace(calibration=block))
    data = checked_bytes(calibrated, str(dst))
    # checked in memory first: a failure leaves an earlier file at dst as it was
    check = Classifier(session=create_session(data), model=dst.name).predict_proba(ex[:256])
    expected = apply_temperature(before[:256], temperature)
    if not np.allclose(check, expected, atol=2e-3):
        raise ModelError(
            f"{dst}: the folded graph does not reproduce the temperature (max diff "
            f"{np.abs(check - expected).max():.4f}); nothing written"
        )
    atomic_write_bytes(dst, data)
    return block

"""``fer-sdk export``: a run folder or .keras file -> parity-checked fp32 ONNX (+ optional INT8)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fer_sdk.data import read_fer2013
from fer_sdk.errors import DatasetError, InvalidInputError
from fer_sdk.files import check_output_file

PARITY_FACES = 512


#: Faces for the parity check and the INT8 evaluation, in order of preference.
EVAL_SPLITS = ("PublicTest", "PrivateTest", "Training")


def _faces(splits: dict, path, split_preference: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, str]:
    """The first split of ``split_preference`` that ``splits`` (read from ``path``) holds faces of."""
    for name in split_preference:
        if name in splits and len(splits[name][0]):
            return (*splits[name], name)
    raise DatasetError(f"{path} holds none of the splits {', '.join(split_preference)}; pass the FER2013 CSV")


#: Training faces INT8 calibration uses by default (MinMax: ~15 s for the deep CNN).
DEFAULT_CALIBRATION_FACES = 1000


def int8_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}-int8{out.suffix or '.onnx'}")


def calibration_pick(faces: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """The INT8 calibration faces: ``size`` of ``faces`` drawn without replacement with ``seed``, in file order."""
    pick = np.random.default_rng(seed).choice(len(faces), size=min(size, len(faces)), replace=False)
    return faces[np.sort(pick)]


def export_model(
    source,
    out,
    *,
    data,
    int8: bool = False,
    calibration=None,
    calibration_size: int | None = None,
    opset: int = 17,
    seed: int = 0,
    fmt: str = "onnx",
    log=print,
) -> list[Path]:
    """Export ``source`` to ``out`` (fp32); with ``int8`` also ``<out>-int8.onnx``. Returns written paths.

    ``calibration`` / ``calibration_size`` (default 1,000 faces) only apply with ``int8``. ``fmt="tflite"``
    writes LiteRT files instead (``export/litert.py``): float32, and with ``int8`` ``<out>-int8.tflite`` from the
    same calibration faces, full integer or, when that misses 98.5 % argmax agreement, INT8 with the last dense
    layer in float32; the float32 file must agree with Keras on >= 99.5 % of the evaluation faces.
    """
    from .convert import export_onnx

    if fmt not in ("onnx", "tflite"):
        raise InvalidInputError(f"--format {fmt!r}: choose onnx or tflite")

    if not int8 and (calibration is not None or calibration_size is not None):
        raise InvalidInputError(
            "calibration faces only apply to INT8 quantization: add --int8 (int8=True) or drop "
            "--calibration / --calibration-size"
        )
    if calibration_size is None:
        calibration_size = DEFAULT_CALIBRATION_FACES
    if int8:
        from .quantize import MIN_CALIBRATION_FACES

        if calibration_size < MIN_CALIBRATION_FACES:
            raise InvalidInputError(
                f"calibration_size={calibration_size} is too small: INT8 calibration needs at least "
                f"{MIN_CALIBRATION_FACES} Training faces (e.g. --calibration-size 1000)"
            )
    inputs = [p for p in (source, data, calibration) if p is not None]
    check_output_file(out, option="--out", inputs=inputs)
    suffix = ".tflite" if fmt == "tflite" else ".onnx"
    if Path(out).suffix.lower() != suffix:
        raise InvalidInputError(f"--out {out}: a {fmt} export is written to a {suffix} file (e.g. --out deep{suffix})")
    if int8:
        check_output_file(int8_path(out), option="--out (its INT8 twin)", inputs=inputs)
    data_splits = read_fer2013(
        data, splits=EVAL_SPLITS
    )  # holds Training too: calibration from --data reads the file once
    x_eval, y_eval, eval_name = _faces(data_splits, data, EVAL_SPLITS)
    if int8:  # read the calibration faces before converting: a bad file fails in seconds, with nothing written
        cal_splits = data_splits if calibration is None else read_fer2013(calibration, splits="Training")
        x_cal, _, cal_name = _faces(cal_splits, calibration or data, ("Training",))
    if fmt == "tflite":
        calibration_faces = calibration_pick(x_cal, calibration_size, seed) if int8 else None
        return _export_litert(source, Path(out), x_eval, calibration_faces, log)
    export_onnx(source, out, parity_faces=x_eval[:PARITY_FACES], opset=opset, log=log)
    written = [Path(out)]
    if int8:
        from .quantize import quantize_int8

        calibration_faces = calibration_pick(x_cal, calibration_size, seed)
        log(
            f"calibrating INT8 on {len(calibration_faces)} {cal_name} faces; "
            f"evaluating on {len(x_eval)} {eval_name} faces"
        )
        quantize_int8(
            out,
            int8_path(out),
            calibration_faces=calibration_faces,
            eval_faces=x_eval,
            eval_labels=y_eval,
            eval_name=eval_name,
            log=log,
        )
        written.append(int8_path(out))
    return written


#: LiteRT parity with the Keras network on the evaluation faces (argmax agreement), float32 and INT8.
LITERT_FLOAT_AGREEMENT = 0.995
LITERT_INT8_AGREEMENT = 0.985


class _KerasReference:
    """The Keras network behind the ``predict_proba`` that ``export_tflite``'s parity check calls."""

    def __init__(self, net, name: str) -> None:
        self.net, self.model_name = net, name
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # every file is checked on the same faces

    def predict_proba(self, faces: np.ndarray) -> np.ndarray:
        from .convert import faces_to_input

        if self._last is None or self._last[0] is not faces:
            probs = np.asarray(self.net.predict(faces_to_input(faces), batch_size=256, verbose=0), dtype=np.float32)
            self._last = (faces, probs)
        return self._last[1]


def _export_litert(source, out: Path, x_eval: np.ndarray, calibration_faces: np.ndarray | None, log) -> list[Path]:
    from fer_sdk.errors import ModelError

    from .architectures import float32_network
    from .convert import _architecture_from_name, _load_source, _require_train_extra, build_metadata, summarize_metrics
    from .litert import export_tflite

    _, keras, _, _ = _require_train_extra()
    model, source_sha256, run_metrics, architecture, described = _load_source(source, keras)
    net = float32_network(model)
    meta = build_metadata(
        architecture=architecture or _architecture_from_name(net),
        parameters=net.count_params(),
        source_sha256=source_sha256,
        metrics=summarize_metrics(run_metrics),
    )
    reference = _KerasReference(net, described)

    def export(path: Path, int8: bool, float_head: bool, needed: float) -> bool:
        report = export_tflite(
            net,
            path,
            metadata=meta,
            int8=int8,
            float_head=float_head,
            calibration_faces=calibration_faces,
            parity_faces=x_eval,
            reference=reference,
            min_agreement=needed,
            log=log,
        )
        if not report["written"] and (not int8 or float_head):  # no recipe left to try
            raise ModelError(
                f"{path.name}: argmax agreement with Keras {report['parity']['argmax_agreement']:.2%} is under "
                f"{needed:.1%}; not written"
            )
        return report["written"]

    export(out, False, False, LITERT_FLOAT_AGREEMENT)
    if calibration_faces is None:
        return [out]
    # full integer when it agrees well enough, else the last dense layer in float32 (as ship --litert does)
    if not export(int8_path(out), True, False, LITERT_INT8_AGREEMENT):
        export(int8_path(out), True, True, LITERT_INT8_AGREEMENT)
    return [out, int8_path(out)]

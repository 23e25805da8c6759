"""Keras -> ONNX conversion with the project's metadata, checked and parity-tested before anything is written.

``tf2onnx.convert.from_keras`` does not understand Keras 3 models, so the network is wrapped in a
``tf.function`` whose single argument is a named ``tf.TensorSpec`` (``faces``, dynamic batch) and converted
with ``tf2onnx.convert.from_function`` (what Keras' own ``keras/src/export/onnx.py`` does). The model is
called with ``training=False``: no dropout, batch norm in inference mode.

Every export is verified on the spot: ``onnx.checker.check_model(full_check=True)``, then ONNX Runtime
(CPU) and Keras run on at least ``MIN_PARITY_FACES`` real faces; the largest probability difference must be
<= ``PARITY_ATOL`` and the predicted classes identical. Only then is the file written, atomically; a failed
check raises ``ModelError`` and leaves any previous file untouched.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import time
from pathlib import Path

import numpy as np

from fer_sdk.constants import EMOTIONS, INPUT_NAME, INPUT_SIZE, METADATA_KEY, OUTPUT_NAME
from fer_sdk.errors import TRAIN_EXTRA_HINT, DependencyError, FerSdkError, InvalidInputError, ModelError
from fer_sdk.files import atomic_write_bytes
from fer_sdk.framing import FER2013
from fer_sdk.metadata import InputSpec, ModelMetadata, OutputSpec
from fer_sdk.registry import sha256_file
from fer_sdk.runtime import create_session, run_batches

#: Parity needs enough faces to exercise every class and the batch path.
MIN_PARITY_FACES = 256
#: Largest allowed |p_onnx - p_keras| on any probability.
PARITY_ATOL = 1e-4
#: Softmax rows must sum to 1 within this.
SUM_ATOL = 1e-5
#: Name of the dynamic batch axis in the exported graph.
BATCH_DIM = "N"
DEFAULT_OPSET = 17
#: ``pixel_uint8 * SCALE + OFFSET`` is the model input (CONTRACTS.md).
SCALE = 1.0 / 255.0
OFFSET = 0.0

_TRAIN_EXTRA = TRAIN_EXTRA_HINT
#: The shapes messages name: the faces as stored, ``(N, 48, 48)``, and the model input, ``(N, 48, 48, 1)``.
_FACES = f"(N, {INPUT_SIZE[0]}, {INPUT_SIZE[1]})"
_MODEL_INPUT = f"(N, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}, 1)"


def require_modules(*names: str, needs: str, install: str) -> list:
    """Import and return the modules ``names``; when one is missing raise ``DependencyError`` saying
    ``"<needs> (<module> is missing); run: <install>"``."""
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as exc:
        raise DependencyError(f"{needs} ({exc.name} is missing); run: {install}") from exc


def _require_train_extra():
    """Import and return (tensorflow, keras, tf2onnx, onnx); raise DependencyError with the fix if missing."""
    keras, onnx, tf, tf2onnx = require_modules(
        "keras", "onnx", "tensorflow", "tf2onnx", needs="ONNX export needs the train extra", install=_TRAIN_EXTRA
    )
    if keras.backend.backend() != "tensorflow":
        raise FerSdkError(
            f"ONNX export converts through TensorFlow but Keras runs the {keras.backend.backend()!r} backend; "
            "run the export with KERAS_BACKEND=tensorflow (weights trained with any backend load fine)"
        )
    return tf, keras, tf2onnx, onnx


def producer_versions() -> dict:
    """Versions of the tools that produced an ONNX file (recorded in its metadata)."""
    from fer_sdk.benchmarks.machine import versions

    found = versions()  # the one place installed versions are looked up (benchmark reports use it too)
    return {key: found[key] for key in ("fer_sdk", "tf2onnx", "tensorflow", "keras", "onnx", "onnxruntime")}


# ----------------------------------------------------------------------------------------------- inputs


def check_faces(faces, *, name: str, minimum: int, purpose: str, source: str = "FER2013 PublicTest") -> np.ndarray:
    """Validate uint8 (N, 48, 48) faces with N >= ``minimum``; return them as a contiguous array."""
    if not isinstance(faces, np.ndarray):
        raise InvalidInputError(f"{name} must be a numpy uint8 array {_FACES}; got {type(faces).__name__}")
    if faces.dtype != np.uint8 or faces.ndim != 3 or faces.shape[1:] != INPUT_SIZE:
        raise InvalidInputError(
            f"{name} must be uint8 {_FACES} grayscale faces as stored in FER2013; got {faces.dtype} {faces.shape}"
        )
    if len(faces) < minimum:
        raise InvalidInputError(
            f"{name} has {len(faces)} faces; {purpose} needs at least {minimum} "
            f"(pass {minimum} or more real faces, e.g. {source} rows)"
        )
    return np.ascontiguousarray(faces)


def checked_bytes(proto, what: str) -> bytes:
    """``onnx.checker.check_model(full_check=True)``, then the serialized model; a failure is a ModelError."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what} model fails onnx.checker: {exc}") from exc
    return proto.SerializeToString()


def faces_to_input(faces: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) -> float32 (N, 48, 48, 1) = pixel * SCALE + OFFSET, exactly as the runtime does it."""
    from fer_sdk.preprocess import Preprocessing, prepare_faces

    return prepare_faces(faces, Preprocessing())


def summarize_metrics(metrics: dict | None) -> dict:
    """Metadata ``metrics``: ``{split: {accuracy, macro_f1, per_class_recall, n}}`` for the selection split.

    Accepts a training ``metrics.json`` (with ``splits`` and ``selection_split``), an already summarised
    ``{split: {...}}`` mapping (passed through), or None / {} (no metrics).
    """
    if not metrics:
        return {}
    if not isinstance(metrics, dict):
        raise InvalidInputError(f"metrics must be a dict (a run's metrics.json or {{split: {{...}}}}); got {metrics!r}")
    if "splits" in metrics:
        split = metrics.get("selection_split", "PublicTest")
        report = metrics["splits"].get(split)
        if report is None:
            raise InvalidInputError(
                f"metrics.json names selection split {split!r} but has splits {sorted(metrics['splits'])}"
            )
        summary = {"accuracy": float(report["accuracy"]), "macro_f1": float(report["macro_f1"])}
        if "n" in report:
            summary["n"] = int(report["n"])
        if "per_class" in report:
            summary["per_class_recall"] = {k: float(v["recall"]) for k, v in report["per_class"].items()}
        return {split: summary}
    try:
        return json.loads(json.dumps(metrics))  # a plain JSON copy; fails loudly on non-JSON values
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metrics must be JSON-serialisable; {exc}") from None


def weights_sha256(model) -> str:
    """sha256 over a model's weights (path, dtype, shape, bytes in order): the id of an in-memory model."""
    digest = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(np.asarray(w.numpy()))
        digest.update(f"{w.path}|{value.dtype.str}|{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _architecture_from_name(model) -> str:
    name = getattr(model, "name", "") or "unknown"
    return name.removeprefix("fer_")


def _load_source(source, keras):
    """Return (model, source_sha256, metrics-or-None, architecture-or-None, description)."""
    if isinstance(source, keras.Model):
        return source, weights_sha256(source), None, None, f"in-memory model {source.name!r}"
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidInputError(
            f"source must be a .keras file, a training run folder or a keras.Model; got {type(source).__name__}"
        )
    path = Path(source)
    metrics = architecture = None
    if path.is_dir():
        run = path
        path = run / "best.keras"
        if not path.is_file():
            raise ModelError(
                f"run folder {run} has no best.keras; train it first (fer-sdk train --out RUN) "
                "or pass the .keras file to export"
            )
        if (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
            architecture = metrics.get("architecture")
        elif (run / "config.json").is_file():
            architecture = json.loads((run / "config.json").read_text()).get("arch")
    elif not path.is_file():
        raise ModelError(f"no such model file or run folder: {path}")
    elif path.suffix != ".keras":
        raise ModelError(f"{path} is not a .keras file; export takes a .keras model or a training run folder")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # corrupt zip, unknown layers, ...: one error type with the file named
        raise ModelError(f"cannot load Keras model {path}: {exc}") from exc
    return model, sha256_file(path), metrics, architecture, str(path)


def _check_model_contract(model) -> None:
    in_shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    out_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else None
    if in_shape is None or in_shape[1:] != (*INPUT_SIZE, 1):
        raise ModelError(f"model {model.name!r} must take one {_MODEL_INPUT} input; it takes {model.inputs}")
    if out_shape is None or out_shape[1:] != (len(EMOTIONS),):
        raise ModelError(
            f"model {model.name!r} must return one (N, {len(EMOTIONS)}) output; it returns {model.outputs}"
        )


# ----------------------------------------------------------------------------------------------- graph


def _rename_tensor(graph, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _fix_io(proto) -> None:
    """Ensure one input ``faces`` (N, 48, 48, 1) and one output ``probabilities`` (N, 7), both float32."""
    from onnx import TensorProto

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ModelError(
            f"converted graph has inputs {[i.name for i in graph.input]} and outputs "
            f"{[o.name for o in graph.output]}; expected exactly one of each"
        )
    _rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    for value, rest in ((graph.input[0], [*INPUT_SIZE, 1]), (graph.output[0], [len(EMOTIONS)])):
        ttype = value.type.tensor_type
        if ttype.elem_type != TensorProto.FLOAT:
            raise ModelError(f"graph {value.name!r} is {TensorProto.DataType.Name(ttype.elem_type)}, not float32")
        dims = ttype.shape.dim
        if len(dims) != 1 + len(rest) or [d.dim_value for d in dims[1:]] != rest:
            raise ModelError(f"graph {value.name!r} has shape {[d.dim_value or d.dim_param for d in dims]}")
        old = dims[0].dim_param
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
        if old:  # the same symbolic batch may appear in value_info
            for info in graph.value_info:
                for d in info.type.tensor_type.shape.dim:
                    if d.dim_param == old:
                        d.dim_param = BATCH_DIM


def onnx_metadata(model) -> ModelMetadata:
    """This project's metadata (``metadata_props["fer_sdk"]``, checked) from a ModelProto or an .onnx path."""
    import onnx

    name = str(model) if isinstance(model, (str, os.PathLike)) else "ONNX model"
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMetadata.from_json(prop.value, name)
    raise ModelError(f"{name} has no {METADATA_KEY!r} metadata; export it with fer-sdk export")


def set_metadata(model, meta: ModelMetadata) -> None:
    """Write ``meta`` as ``metadata_props["fer_sdk"]`` (replacing any previous value)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())


def describe(meta: ModelMetadata) -> str:
    """``doc_string`` for an exported model."""
    return (
        f"fer-sdk {meta.architecture} FER2013 expression classifier ({meta.precision}): "
        f"{INPUT_NAME} float32 {_MODEL_INPUT} gray in [0, 1] -> {OUTPUT_NAME} float32 (N, {len(EMOTIONS)}) "
        f"softmax over {', '.join(EMOTIONS)}. Metadata key {METADATA_KEY!r} holds the full spec."
    )


def build_metadata(*, architecture: str, parameters: int, source_sha256: str, metrics: dict) -> ModelMetadata:
    """The metadata of a fresh fp32 export: FER2013's input contract and framing, this machine's producer."""
    return ModelMetadata(
        architecture=architecture,
        precision="fp32",
        parameters=int(parameters),
        labels=EMOTIONS,
        input=InputSpec(name=INPUT_NAME, height=INPUT_SIZE[0], width=INPUT_SIZE[1], scale=SCALE, offset=OFFSET),
        output=OutputSpec(name=OUTPUT_NAME),
        source_sha256=source_sha256,
        metrics=metrics,
        producer=producer_versions(),
        framing=FER2013.to_dict(),  # the training faces' framing: the runtime cuts detected faces to it
    )


def stamp(model, meta: ModelMetadata) -> None:
    """Set metadata, doc string and producer fields of a ModelProto."""
    set_metadata(model, meta)
    model.doc_string = describe(meta)
    model.producer_name = "fer-sdk"
    tools = ", ".join(f"{k} {v}" for k, v in meta.producer.items() if k != "fer_sdk" and v)
    model.producer_version = f"{meta.producer.get('fer_sdk')} ({tools})"
    model.graph.name = f"fer_{meta.architecture}_{meta.precision}"


def ort_predict(session, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run ``session`` on float32 (N, 48, 48, 1) input in batches (``runtime.run_batches``); return (N, 7)
    probabilities."""
    out = [probs for (probs,) in run_batches(session, x, batch_size, outputs=[OUTPUT_NAME], input_name=INPUT_NAME)]
    return np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)


def _parity(reference: np.ndarray, candidate: np.ndarray, atol: float) -> dict:
    """Compare two probability arrays: max |diff|, argmax agreement, rows whose classes differ."""
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate))) if len(reference) else 0.0
    mismatch = np.flatnonzero(reference.argmax(1) != candidate.argmax(1))
    row_sums = candidate.sum(1, dtype=np.float64)
    return {
        "faces": len(reference),
        "max_abs_diff": diff,
        "atol": atol,
        "argmax_agreement": float(1 - len(mismatch) / max(len(reference), 1)),
        "argmax_mismatches": mismatch[:20].tolist(),
        "max_row_sum_error": float(np.max(np.abs(row_sums - 1.0))) if len(reference) else 0.0,
    }


# ----------------------------------------------------------------------------------------------- export


def export_onnx(
    source,
    out_path: str | os.PathLike,
    *,
    parity_faces: np.ndarray,
    metrics: dict | None = None,
    opset: int = DEFAULT_OPSET,
    log=print,
) -> dict:
    """Convert a Keras FER model to ONNX at ``out_path``; return a report (parity, size, metadata).

    ``source``: a ``.keras`` file, a training run folder (``best.keras`` + ``metrics.json``) or a
    ``keras.Model``. ``parity_faces``: uint8 (N, 48, 48) real faces, N >= 256, on which ONNX Runtime must
    match Keras (max |diff| <= 1e-4, same argmax). ``metrics`` overrides the run folder's metrics: a
    ``metrics.json`` dict or ``{split: {...}}``. Raises ``ModelError`` (and writes nothing) when the
    converted graph fails the checker or parity.
    """
    tf, keras, tf2onnx, _onnx = _require_train_extra()
    parity_faces = check_faces(parity_faces, name="parity_faces", minimum=MIN_PARITY_FACES, purpose="the parity check")
    if not isinstance(opset, int) or opset < 13:
        raise InvalidInputError(f"opset={opset!r} must be an integer >= 13 (e.g. opset=17)")
    t_start = time.perf_counter()

    model, source_sha256, run_metrics, architecture, described = _load_source(source, keras)
    _check_model_contract(model)
    from .architectures import float32_network

    model = float32_network(model)  # a network that computes in bfloat16 is exported as float32 (same weights)
    architecture = architecture or _architecture_from_name(model)
    meta = build_metadata(
        architecture=architecture,
        parameters=model.count_params(),
        source_sha256=source_sha256,
        metrics=summarize_metrics(metrics if metrics is not None else run_metrics),
    )
    log(f"converting {described} ({architecture}, {meta.parameters:,} parameters) to ONNX opset {opset}")

    spec = (tf.TensorSpec((None, *INPUT_SIZE, 1), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def inference(faces):
        return {OUTPUT_NAME: model(faces, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(inference, input_signature=spec, opset=opset)
    except Exception as exc:  # tf2onnx raises assorted types; report them as one error with the cause
        raise ModelError(f"tf2onnx could not convert {described}: {exc}") from exc
    _fix_io(proto)
    stamp(proto, meta)
    data = checked_bytes(proto, "converted")

    x = faces_to_input(parity_faces)
    expected = np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    got = ort_predict(create_session(data), x)
    if got.shape != expected.shape:
        raise ModelError(f"ONNX output has shape {got.shape}, Keras {expected.shape}; not writing {out_path}")
    parity = _parity(expected, got, PARITY_ATOL)
    log(
        f"parity on {parity['faces']} faces: max |onnx - keras| = {parity['max_abs_diff']:.2e} "
        f"(limit {PARITY_ATOL:.0e}), argmax agreement {parity['argmax_agreement']:.2%}"
    )
    if not parity["max_abs_diff"] <= PARITY_ATOL or parity["argmax_mismatches"]:
        raise ModelError(
            f"ONNX/Keras parity failed: max |diff| {parity['max_abs_diff']:.3e} (limit {PARITY_ATOL:.0e}), "
            f"{parity['argmax_agreement']:.2%} argmax agreement (rows {parity['argmax_mismatches']}); "
            f"{out_path} was not written"
        )
    if not parity["max_row_sum_error"] <= SUM_ATOL:
        raise ModelError(
            f"ONNX output rows sum to 1 +- {parity['max_row_sum_error']:.2e}, not a softmax (limit {SUM_ATOL:.0e}); "
            f"{out_path} was not written"
        )

    out = atomic_write_bytes(out_path, data)
    report = {
        "path": str(out),
        "architecture": architecture,
        "precision": "fp32",
        "parameters": meta.parameters,
        "opset": opset,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "parity": parity,
        "metadata": meta.to_dict(),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    log(f"wrote {out} ({len(data) / 1e6:.1f} MB, sha256 {report['sha256'][:12]}) in {report['seconds']} s")
    return report

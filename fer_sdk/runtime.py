"""ONNX Runtime sessions: import on demand, provider selection, session creation, metadata checks.

``onnxruntime`` is imported only inside these functions, so ``import fer_sdk`` works without it and the
error that follows names the extra to install.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .constants import METADATA_KEY
from .errors import DependencyError, InvalidInputError, ModelError, positive_int
from .metadata import EXPORT_HINT as _EXPORT_HINT
from .metadata import ModelMetadata

logger = logging.getLogger("fer_sdk")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Short names accepted wherever a provider name is (``providers="cuda"``, ``--providers cpu``).
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}

_INSTALL_HINT = 'pip install "fer-sdk[cpu]" (or "fer-sdk[gpu]" for CUDA)'


def import_onnxruntime():
    """Return the ``onnxruntime`` module, or raise ``DependencyError`` with the pip command to run."""
    try:
        import onnxruntime
    except ImportError as err:
        cause: BaseException | None = err
        while cause is not None:  # Ctrl-C mid-import surfaces as an ImportError: it is still Ctrl-C
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from err
            cause = cause.__cause__ or cause.__context__
        raise DependencyError(f"ONNX Runtime is not installed: {_INSTALL_HINT}") from err
    global _ort_quieted
    if not _ort_quieted:
        _ort_quieted = True
        onnxruntime.set_default_logger_severity(_ort_severity)
    return onnxruntime


#: ONNX Runtime's own log threshold (0 verbose ... 3 error, 4 fatal). Its GPU build writes "[E:onnxruntime...]
#: Failed to load library libonnxruntime_providers_cuda.so" lines on a machine without CUDA; the SDK says what
#: happened itself (a DependencyError, or a warning with providers="auto"), so only fatal lines pass by default.
_ort_severity = 4
_ort_quieted = False


def set_onnxruntime_logging(verbose: bool) -> None:
    """Show ONNX Runtime's own warnings and errors (``True``, what the CLI's ``--debug`` does) or only its fatal
    lines (``False``, the default). Applies to ONNX Runtime's default logger and to sessions created later."""
    global _ort_severity, _ort_quieted
    _ort_severity = 2 if verbose else 4
    _ort_quieted = False


def _provider_name(item: Any) -> str:
    if isinstance(item, str):
        return PROVIDER_ALIASES.get(item.lower(), item)
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return PROVIDER_ALIASES.get(item[0].lower(), item[0])
    raise InvalidInputError(
        f"provider {item!r} must be a name or a (name, options) tuple, "
        "e.g. providers=['CUDAExecutionProvider', 'CPUExecutionProvider'] or "
        "[('CUDAExecutionProvider', {'device_id': 0})]"
    )


def resolve_providers(providers: str | Sequence[Any] | None) -> list[Any]:
    """The provider list to give ONNX Runtime.

    ``None`` -> CPU only. ``"auto"`` -> CUDA then CPU when ONNX Runtime lists CUDA, else CPU (TensorRT only when
    asked for by name). A name, alias (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or a list of names /
    ``(name, options)`` tuples is checked against ``onnxruntime.get_available_providers()``.
    """
    if providers is None:
        return [CPU]
    ort = import_onnxruntime()
    available = list(ort.get_available_providers())
    if isinstance(providers, str) and providers.lower() == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    items = [providers] if isinstance(providers, (str, tuple)) and _is_single(providers) else providers
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise InvalidInputError(
            f"providers={providers!r} must be None, 'auto', a provider name or a non-empty list of them "
            "(e.g. providers=['CPUExecutionProvider'])"
        )
    resolved: list[Any] = []
    for item in items:
        name = _provider_name(item)
        if name not in available:
            gpu_hint = (
                " For CUDA install the GPU build instead of the CPU one: pip uninstall onnxruntime && "
                'pip install "fer-sdk[gpu]".'
                if name in (CUDA, TENSORRT)
                else ""
            )
            raise InvalidInputError(
                f"execution provider {name!r} is not available in this ONNX Runtime; available: "
                f"{', '.join(available)}.{gpu_hint}"
            )
        resolved.append(name if isinstance(item, str) else (name, dict(item[1])))
    return resolved


def _is_single(providers: Any) -> bool:
    if isinstance(providers, str):
        return True
    # ("CUDAExecutionProvider", {...}) is one provider with options, not a list of two
    return len(providers) == 2 and isinstance(providers[0], str) and isinstance(providers[1], dict)


def usable_cores() -> int:
    """Logical CPUs this process may run on (CPU affinity / cgroup cpuset aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: Any) -> int | None:
    return positive_int("threads", threads, "4", none_means="ONNX Runtime's default")


def _source_name(path_or_bytes: Any) -> str:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return f"<{len(path_or_bytes)} bytes of ONNX>"
    return str(path_or_bytes)


def create_session(
    path_or_bytes: str | os.PathLike | bytes,
    providers: str | Sequence[Any] | None = None,
    threads: int | None = None,
):
    """An ``InferenceSession`` with full graph optimisation, on the resolved providers.

    Unreadable, garbage or truncated files raise ``ModelError`` naming the file. Logs (logger ``fer_sdk``) the
    provider that actually runs, and warns when a requested accelerator fell back to CPU.
    """
    ort = import_onnxruntime()
    threads = check_threads(threads)
    requested = resolve_providers(providers)
    name = _source_name(path_or_bytes)
    if not isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        path = Path(path_or_bytes)
        if not path.is_file():
            raise ModelError(f"model file {name!r} does not exist; pass the path of an exported .onnx file")
        source: Any = str(path)
    else:
        source = bytes(path_or_bytes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _ort_severity
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=requested)
    except Exception as err:  # ORT raises its own pybind types (InvalidProtobuf, Fail, InvalidGraph, ...)
        raise ModelError(
            f"{name} is not a loadable ONNX model ({type(err).__name__}: {str(err).strip()[:300]}); the file is "
            f"corrupt or truncated: re-export it (fer-sdk export) or, for a bundled model, reinstall fer-sdk"
        ) from err
    actual = log_providers(session, requested, name)
    strict = not (isinstance(providers, str) and providers.lower() == "auto")
    missing = [_provider_name(p) for p in requested if _provider_name(p) != CPU and _provider_name(p) not in actual]
    if strict and missing:
        raise DependencyError(
            f"{', '.join(missing)} was requested for {name} but ONNX Runtime cannot use it here (no GPU, or its "
            "CUDA/cuDNN libraries are missing) and would run on CPU. Fix: install the CUDA libraries, or pass "
            "providers='auto' (CLI: --providers auto) to fall back to CPU when CUDA is not usable."
        )
    return session


def log_providers(session: Any, requested: Sequence[Any], name: str) -> list[str]:
    """Log which provider runs ``session``; warn when a requested accelerator is not among them."""
    actual = list(session.get_providers())
    logger.info("%s runs on %s (session providers: %s)", name, actual[0] if actual else "?", actual)
    wanted = [_provider_name(p) for p in requested]
    missing = [p for p in wanted if p != CPU and p not in actual]
    if missing:
        logger.warning(
            "%s was requested but ONNX Runtime fell back to %s for %s (missing CUDA/cuDNN libraries or no GPU?)",
            ", ".join(missing),
            actual[0] if actual else "CPU",
            name,
        )
    return actual


def run_batches(
    session: Any,
    x: Any,
    batch_size: int = 256,
    *,
    outputs: Sequence[str] | None = None,
    input_name: str | None = None,
) -> Iterator[list[Any]]:
    """The one batched run: ``session.run(outputs, {input_name: chunk})`` for each ``batch_size`` rows of ``x``,
    in order, as float32 C-contiguous chunks. ``outputs=None`` returns every graph output; ``input_name`` defaults
    to the session's first input. Yields each chunk's output list (a generator: a caller can reduce as it goes)."""
    import numpy as np

    size = positive_int("batch_size", batch_size, "256")
    name = input_name if input_name is not None else session.get_inputs()[0].name
    wanted = None if outputs is None else list(outputs)
    for start in range(0, len(x), size):
        yield session.run(wanted, {name: np.ascontiguousarray(x[start : start + size], dtype=np.float32)})


def session_source(session: Any) -> str:
    """Best-effort name of the file a session was loaded from (for error messages)."""
    path = getattr(session, "_model_path", None)
    return str(path) if path else "<injected session>"


def read_metadata(session: Any, source: str | os.PathLike | None = None) -> ModelMetadata:
    """Parse and check ``metadata_props["fer_sdk"]`` of a session against the graph (see docs/CONTRACTS.md)."""
    name = str(source) if source is not None else session_source(session)
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ModelError(f"{name} has no fer-sdk metadata; {_EXPORT_HINT}")
    meta = ModelMetadata.from_json(raw, name)
    _check_io(session, meta, name)
    return meta


def _check_io(session: Any, meta: ModelMetadata, name: str) -> None:
    spec_in, spec_out = meta.input, meta.output
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if spec_in.name not in inputs:
        raise ModelError(
            f"{name}: metadata names input {spec_in.name!r} but the graph has {sorted(inputs)}; {_EXPORT_HINT}"
        )
    if spec_out.name not in outputs:
        raise ModelError(
            f"{name}: metadata names output {spec_out.name!r} but the graph has {sorted(outputs)}; {_EXPORT_HINT}"
        )
    expected = [spec_in.height, spec_in.width, spec_in.channels]
    shape = list(inputs[spec_in.name].shape)
    if len(shape) != 4 or list(shape[1:]) != expected or inputs[spec_in.name].type != "tensor(float)":
        raise ModelError(
            f"{name}: input {spec_in.name!r} is {inputs[spec_in.name].type} {shape}, expected tensor(float) "
            f"[N, {expected[0]}, {expected[1]}, {expected[2]}] as the metadata says; {_EXPORT_HINT}"
        )
    out_shape = list(outputs[spec_out.name].shape)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(meta.labels)):
        raise ModelError(
            f"{name}: output {spec_out.name!r} has shape {out_shape}, expected [N, {len(meta.labels)}]; {_EXPORT_HINT}"
        )

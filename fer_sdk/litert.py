"""LiteRT (TFLite) models: the runtime side, without TensorFlow.

A ``.tflite`` file exported by this project carries the same ``fer_sdk`` metadata JSON as the ONNX files
(``fer_sdk.metadata.ModelMetadata``), in the flatbuffer's ``metadata`` table under the name ``"fer_sdk"``;
:func:`read_tflite_metadata` reads it with a small flatbuffer reader, so neither TensorFlow nor a schema
package is needed. :class:`LiteRTSession` runs the file with ``ai-edge-litert`` (XNNPACK on CPU) and looks like
an ``onnxruntime.InferenceSession`` to the ``Classifier`` (``run``, ``get_inputs``, ``get_outputs``,
``get_providers``, ``get_modelmeta``): integer inputs and outputs are (de)quantized with the file's own
parameters. A ``logits`` output (metadata ``output.kind``) stays logits here; the ``Classifier`` applies the
softmax.

    pip install "fer-sdk[litert]"
    Classifier("deep-int8.tflite")      # or Classifier("deep-int8", backend="litert")
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import METADATA_KEY
from .errors import DependencyError, ModelError

PROVIDER = "LiteRT (XNNPACK)"
_INSTALL_HINT = 'pip install "fer-sdk[litert]" (ai-edge-litert)'
#: The flatbuffer file identifier of TFLite models (bytes 4-8).
TFLITE_IDENTIFIER = b"TFL3"
#: Metadata entries looked at before giving up (real files hold a handful; a crafted one could hold millions).
MAX_METADATA_ENTRIES = 1000


def import_litert():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise DependencyError(f"LiteRT models need ai-edge-litert ({err.name} is missing): {_INSTALL_HINT}") from None
    return Interpreter


# ------------------------------------------------------------------ the flatbuffer, just enough of it
class _Reader:
    """Read-only access to a flatbuffer's tables (offsets checked against the buffer's size)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u32(self, pos: int) -> int:
        if not 0 <= pos <= len(self.data) - 4:
            raise ValueError(f"offset {pos} outside the file")
        return struct.unpack_from("<I", self.data, pos)[0]

    def u64(self, pos: int) -> int:
        if not 0 <= pos <= len(self.data) - 8:
            raise ValueError(f"offset {pos} outside the file")
        return struct.unpack_from("<Q", self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Position of field ``index`` of the table at ``table``, or None when it is absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def target(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start of the elements, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = self.target(pos)
        return vec + 4, self.u32(vec)

    def string(self, table: int, index: int) -> str | None:
        start, n = self.vector(table, index)
        return None if not start else self.data[start : start + n].decode("utf-8", errors="replace")


def read_tflite_metadata(data: bytes, source: str = "model") -> str | None:
    """The ``fer_sdk`` metadata JSON text embedded in a TFLite flatbuffer, or None when it has none."""
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{source} is not a TFLite model (no {TFLITE_IDENTIFIER.decode()} identifier)")
    r = _Reader(data)
    try:
        model = r.target(0)
        buffers, n_buffers = r.vector(model, 4)
        entries, n_entries = r.vector(model, 6)
        key = METADATA_KEY.encode()
        for i in range(min(n_entries, MAX_METADATA_ENTRIES)):
            entry = r.target(entries + 4 * i)
            start, n = r.vector(entry, 0)  # the name: compared by length first, never decoded whole
            if n != len(key) or data[start : start + n] != key:
                continue
            pos = r.field(entry, 1)
            index = r.u32(pos) if pos is not None else 0
            if not 0 <= index < n_buffers:
                raise ValueError(f"metadata buffer {index} of {n_buffers}")
            buffer = r.target(buffers + 4 * index)
            start, n = r.vector(buffer, 0)
            if not start:  # large models keep buffers after the flatbuffer: (offset, size) from the file start
                offset_pos, size_pos = r.field(buffer, 1), r.field(buffer, 2)
                if offset_pos is None or size_pos is None:
                    raise ValueError("metadata buffer without data")
                start, n = r.u64(offset_pos), r.u64(size_pos)
            if start + n > len(data):
                raise ValueError("metadata buffer outside the file")
            return data[start : start + n].decode("utf-8")
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelError(f"{source}: its TFLite flatbuffer is damaged ({exc}); re-export the model") from None
    return None


# ------------------------------------------------------------------ an InferenceSession look-alike
@dataclass(frozen=True)
class _Arg:
    name: str
    shape: list
    type: str


@dataclass(frozen=True)
class _ModelMeta:
    custom_metadata_map: dict


class LiteRTSession:
    """Runs a ``.tflite`` file with ``ai-edge-litert``; the subset of ``onnxruntime.InferenceSession`` the SDK
    uses. Thread-safe (one interpreter per thread); ``threads``: XNNPACK threads (None: LiteRT's default)."""

    def __init__(
        self, path_or_bytes: str | os.PathLike | bytes, *, threads: int | None = None, source: str | None = None
    ) -> None:
        interpreter = import_litert()
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data = bytes(path_or_bytes)
            self._model_path = source
        else:
            path = Path(path_or_bytes)
            if not path.is_file():
                raise ModelError(f"model file {str(path)!r} does not exist; pass the path of an exported .tflite file")
            data = path.read_bytes()
            self._model_path = str(path)
        name = source or self._model_path or "<tflite bytes>"
        raw = read_tflite_metadata(data, name)
        self._meta = {} if raw is None else {METADATA_KEY: raw}
        self._data, self._threads, self._interpreter_cls = data, threads, interpreter
        self._local = threading.local()
        from .progress import is_debug, native_stderr_to_file

        try:  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once, to fd 2; --debug shows it
            with native_stderr_to_file(not is_debug()):
                probe = self._interpreter()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{name} is not a loadable LiteRT model ({exc}); re-export it") from None
        inputs, outputs = probe.get_input_details(), probe.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{name} has {len(inputs)} inputs and {len(outputs)} outputs; a fer-sdk model has one of each: "
                "export it with this project (fer-sdk models ship --litert)"
            )
        (self._in,) = inputs
        (self._out,) = outputs
        # the contract's names (faces -> probabilities / logits), not the converter's serving_default_faces:0
        self._in_name, self._out_name = self._in["name"], self._out["name"]
        if raw is not None:
            from .metadata import ModelMetadata

            meta = ModelMetadata.from_json(raw, name)
            self._in_name, self._out_name = meta.input.name, meta.output.name

    def _interpreter(self):
        interp = getattr(self._local, "interpreter", None)
        if interp is None:
            interp = self._interpreter_cls(model_content=self._data, num_threads=self._threads)
            interp.allocate_tensors()
            self._local.interpreter = interp
            self._local.batch = None
        return interp

    # --- what the Classifier reads
    def get_modelmeta(self) -> _ModelMeta:
        return _ModelMeta(dict(self._meta))

    def get_inputs(self) -> list[_Arg]:
        shape = ["N", *(int(d) for d in self._in["shape"][1:])]
        return [_Arg(self._in_name, shape, "tensor(float)")]  # integer inputs are quantized here

    def get_outputs(self) -> list[_Arg]:
        return [_Arg(self._out_name, ["N", int(self._out["shape"][-1])], "tensor(float)")]

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feeds.values()
        interp = self._interpreter()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._local.batch != len(x):
            interp.resize_tensor_input(self._in["index"], [len(x), *self._in["shape"][1:]])
            interp.allocate_tensors()
            self._local.batch = len(x)
        interp.set_tensor(self._in["index"], _quantize(x, self._in))
        interp.invoke()
        return [_dequantize(interp.get_tensor(self._out["index"]), self._out)]


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

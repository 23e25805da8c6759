"""Which models a benchmark run measures: bundled names and/or exported ``.onnx`` paths, with their metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fer_sdk.errors import ModelError

_WHAT_TO_PASS = (
    "pass exported ONNX files instead: run_benchmarks(out, models=['path/deep.onnx', 'path/deep-int8.onnx']) "
    "or `fer-sdk bench --models path/deep.onnx,path/deep-int8.onnx` (make them with `fer-sdk export ... --int8`)"
)


@dataclass(frozen=True)
class BenchModel:
    """One ONNX model to measure; ``name`` is the bundled name or the file's stem."""

    name: str
    path: Path
    architecture: str
    precision: str
    parameters: int | None
    size_bytes: int
    bundled: bool

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "architecture": self.architecture,
            "precision": self.precision,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "bundled": self.bundled,
        }


def resolve_models(models: list[str | os.PathLike] | None) -> list[BenchModel]:
    """Bundled names or paths -> ``BenchModel``s (metadata read with ONNX Runtime, checksums verified).

    ``None`` means every bundled model; when none is bundled (or a name is unknown) ``ModelError`` says what
    to pass instead.
    """
    from fer_sdk import registry
    from fer_sdk.runtime import create_session, read_metadata

    if models is None:
        names: list[str | os.PathLike] = [spec.name for spec in registry.list_models()]
        if not names:
            raise ModelError(f"no bundled models are installed to benchmark; {_WHAT_TO_PASS}")
    else:
        names = list(models)
        if not names:
            raise ModelError(
                f"models=[] names nothing to benchmark; pass None for all bundled models, or {_WHAT_TO_PASS}"
            )
    out: list[BenchModel] = []
    seen: set[str] = set()
    for item in names:
        try:
            path, spec = registry.resolve_model(item)
        except ModelError as err:
            raise ModelError(f"{err}; {_WHAT_TO_PASS}") from err
        if path.suffix.lower() == ".tflite":  # a LiteRT file: its metadata is in the flatbuffer
            from fer_sdk.litert import LiteRTSession

            session = LiteRTSession(path)
        else:
            session = create_session(path)
        meta = read_metadata(session, str(path))
        name = spec.name if spec else path.stem
        if name in seen:  # two files with one stem: keep both, distinguishable
            name = f"{name}@{path.parent.name}"
        seen.add(name)
        out.append(
            BenchModel(
                name=name,
                path=path,
                architecture=meta.architecture if meta.architecture != "unknown" or not spec else spec.architecture,
                precision=meta.precision,
                parameters=meta.parameters or (spec.parameters if spec else None),
                size_bytes=path.stat().st_size,
                bundled=spec is not None,
            )
        )
    return out

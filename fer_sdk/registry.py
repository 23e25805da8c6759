"""The one registry of bundled models: ``fer_sdk/models/manifest.json`` read into frozen ``ModelSpec``s.

The manifest format is in ``docs/CONTRACTS.md``. It is re-read on every call (it is a few hundred bytes), so
tests can point ``MODELS_DIR`` at a temporary folder with ``monkeypatch.setattr(registry, "MODELS_DIR", ...)``.
A package without trained models (no manifest yet) has an empty registry; models can then be loaded by path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

from .errors import ModelError

#: Folder holding the bundled ``.onnx`` files and ``manifest.json`` (package data).
MODELS_DIR: Path = Path(__file__).resolve().parent / "models"
MANIFEST_NAME = "manifest.json"

_CHUNK = 1 << 20
REINSTALL = 'reinstall fer-sdk (pip install --force-reinstall "fer-sdk[cpu]")'


def models_dir() -> Path:
    """The folder the registry reads (``MODELS_DIR``, looked up at call time so tests can patch it)."""
    return Path(MODELS_DIR)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    """One bundled model as the manifest describes it. Immutable; ``metrics`` is a read-only mapping."""

    name: str
    file: str
    sha256: str
    architecture: str
    precision: str
    parameters: int
    size_bytes: int
    metrics: Mapping[str, Any]
    card: str | None = None
    backend: str = "onnxruntime"  # or "litert" (a .tflite file, run with ai-edge-litert)

    @property
    def path(self) -> Path:
        """Absolute path of the ``.onnx`` file inside the models folder."""
        return models_dir() / self.file

    @property
    def card_path(self) -> Path | None:
        return None if self.card is None else models_dir() / self.card

    def manifest_entry(self) -> dict[str, Any]:
        """This model's object in ``manifest.json``: what ``fer-sdk models ship`` writes, ``spec_from_entry`` reads."""
        entry = {k: v for k, v in self.to_dict().items() if k != "name" and v is not None}
        if entry.get("backend") == "onnxruntime":  # the default is left out, as in every manifest so far
            del entry["backend"]
        return entry

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for ``fer-sdk models --json``)."""
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "architecture": self.architecture,
            "precision": self.precision,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "metrics": _thaw(self.metrics),
            "card": self.card,
            "backend": self.backend,
        }


def _read_manifest() -> dict[str, Any] | None:
    path = models_dir() / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ModelError(f"cannot read the model manifest {path}: {err}; {REINSTALL}") from err
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"the model manifest {path} is not valid JSON ({err}); {REINSTALL}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ModelError(f"the model manifest {path} has no 'models' object; {REINSTALL}")
    return manifest


def spec_from_entry(name: str, entry: Any) -> ModelSpec:
    """A manifest entry (``ModelSpec.manifest_entry``) read back, checked."""
    if not isinstance(entry, dict):
        raise ModelError(f"manifest entry {name!r} in {models_dir() / MANIFEST_NAME} is not an object; {REINSTALL}")
    try:
        return ModelSpec(
            name=name,
            file=str(entry["file"]),
            sha256=str(entry["sha256"]).lower(),
            architecture=str(entry["architecture"]),
            precision=str(entry["precision"]),
            parameters=int(entry["parameters"]),
            size_bytes=int(entry.get("size_bytes", 0)),
            metrics=_freeze(entry.get("metrics") or {}),
            card=entry.get("card"),
            backend=str(entry.get("backend", "onnxruntime")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(
            f"manifest entry {name!r} in {models_dir() / MANIFEST_NAME} is malformed ({err!r}); {REINSTALL}"
        ) from err


def list_models() -> list[ModelSpec]:
    """Every bundled model, in manifest order; ``[]`` when no trained models are installed."""
    manifest = _read_manifest()
    if manifest is None:
        return []
    return [spec_from_entry(name, entry) for name, entry in manifest["models"].items()]


def model_names() -> list[str]:
    return [spec.name for spec in list_models()]


def _no_bundled_message() -> str:
    return (
        f"no bundled models are installed (no {MANIFEST_NAME} in {models_dir()}); "
        "pass a path to an exported .onnx file instead (e.g. Classifier('model.onnx'))"
    )


def _names_hint(names: list[str]) -> str:
    return f"bundled models: {', '.join(names)}" if names else "no bundled models are installed"


def get_spec(name: str) -> ModelSpec:
    """The spec of a bundled model; unknown names raise ``ModelError`` listing the valid ones."""
    manifest = _read_manifest()
    if manifest is None:
        raise ModelError(f"unknown model {name!r}: {_no_bundled_message()}")
    models = manifest["models"]
    if name not in models:
        raise ModelError(
            f"unknown model {name!r}; choose one of: {', '.join(models) or '(none)'}, "
            "or pass a path to an exported .onnx file"
        )
    return spec_from_entry(name, models[name])


def default_model_name() -> str:
    """The manifest's ``default`` (best bundled model); ``ModelError`` when no models are installed."""
    manifest = _read_manifest()
    if manifest is None:
        raise ModelError(_no_bundled_message())
    default = manifest.get("default")
    if not isinstance(default, str) or default not in manifest["models"]:  # the keys are str (JSON)
        raise ModelError(
            f"the model manifest {models_dir() / MANIFEST_NAME} names default {default!r}, which it does not "
            f"list; {REINSTALL}"
        )
    return default


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified_file(path: str | os.PathLike, expected: str, *, what: str = "bundled model") -> bytes:
    """The bytes of ``path``, checked against ``expected`` sha256; ``ModelError`` naming the file, both digests
    and the fix otherwise. Load these very bytes, so a file swapped after the check cannot be the one that runs."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{what} file {path} is missing; {REINSTALL}") from None
    except OSError as err:
        raise ModelError(f"{what} {path} cannot be read ({err}); {REINSTALL}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != str(expected).lower():
        raise ModelError(
            f"sha256 mismatch for {path}: expected {str(expected).lower()}, got {actual}; the file is corrupt or "
            f"was modified, {REINSTALL}"
        )
    return data


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ``ModelError`` naming the file, both digests and the fix when ``path`` does not hash to ``expected``."""
    read_verified_file(path, expected)


def read_verified(spec: ModelSpec) -> bytes:
    """The bytes of a bundled model, checked against its manifest sha256 (see :func:`read_verified_file`)."""
    return read_verified_file(spec.path, spec.sha256)


def _is_name(model: object) -> TypeGuard[str]:
    if not isinstance(model, str) or not model:
        return False
    if model.lower().endswith((".onnx", ".tflite")) or "/" in model or (os.altsep or "/") in model or os.sep in model:
        return False
    # A bare word is a bundled name unless the manifest lacks it and a file of that name exists.
    return model in _safe_names() or not Path(model).is_file()


def resolve_model(model: str | os.PathLike, *, verify: bool = True) -> tuple[Path, ModelSpec | None]:
    """Turn a bundled name or a path into ``(absolute path, spec or None)``.

    Bundled files are checked against their manifest sha256 (``verify=True``, every load). Paths must exist;
    any ``.onnx`` exported by this project is accepted (its metadata is checked when the session loads).
    """
    if _is_name(model):
        spec = get_spec(model)
        if verify:
            verify_sha256(spec.path, spec.sha256)
        elif not spec.path.is_file():
            raise ModelError(f"bundled model file {spec.path} is missing; {REINSTALL}")
        return spec.path, spec
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(
            f"model={model!r} is neither a bundled model name nor a path; pass e.g. 'deep-int8' or 'model.onnx'"
        )
    path = Path(model).expanduser()
    if not path.is_file():
        names = _safe_names()
        if path.is_dir():
            problem = "is a folder, not a model file"
        elif str(model) in names:  # e.g. Path("deep"): a path object always means a file
            problem = f"does not exist (to load the bundled model, pass the string {str(model)!r}, not a path)"
        else:
            problem = "does not exist"
        raise ModelError(
            f"model file {str(path)!r} {problem}; pass an existing .onnx file or a bundled model name "
            f"({_names_hint(names)})"
        )
    return path.resolve(), None


def _safe_names() -> list[str]:
    try:
        return model_names()
    except ModelError:
        return []

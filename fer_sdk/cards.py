"""The model card: what ``fer_sdk/models/cards/NAME.json`` holds about one bundled model, as one typed record.

Written by the factory (``fer_sdk.export.ship``, and ``fer_sdk.benchmarks.wild --cards`` adds the photo-pipeline
numbers), read by anything that reports on a model. The manifest entry (``registry.ModelSpec``) is the short
form the runtime needs; the card is the long form people read (its Markdown twin is rendered from it).
``docs/CONTRACTS.md`` lists the fields; a test checks every bundled card parses and agrees with the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError


@dataclass(frozen=True)
class ModelCard:
    """One model's card. ``evaluation``: PublicTest ``n``, ``accuracy``, ``macro_f1``, ``per_class``,
    ``confusion_matrix``, ``labels``; ``evaluation_flip_tta``: its ``accuracy`` and ``macro_f1`` with flip TTA."""

    name: str
    file: str
    architecture: str
    precision: str
    parameters: int
    size_bytes: int
    sha256: str
    evaluation: dict[str, Any]
    evaluation_flip_tta: dict[str, Any]
    evaluate_command: str
    confusion_png: str
    known_limits: list[str]
    framing: str = "fer2013"
    quantization: dict[str, Any] | None = None
    training: dict[str, Any] | None = None  # how it was trained: stages, epochs, wall time, hardware, command
    ensemble: dict[str, Any] | None = None  # an ensemble's members and weights
    litert: dict[str, Any] | None = None  # a LiteRT file's parity, recipe and command
    photos_in_the_wild: dict[str, Any] | None = None  # the whole photo pipeline on ../shared/data/wild
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept

    @classmethod
    def from_dict(cls, raw: Any, source: str = "card") -> ModelCard:
        if not isinstance(raw, dict):
            raise ModelError(f"{source}: a model card is a JSON object, not {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name != "extra"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ModelError(f"{source}: the model card lacks {missing}; re-ship the model (fer-sdk models ship)")
        values = {k: v for k, v in raw.items() if k in known}
        for name in ("parameters", "size_bytes"):
            if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 0:
                raise ModelError(f"{source}: card {name} {values[name]!r} is not a count")
        for name in ("evaluation", "evaluation_flip_tta"):
            if not isinstance(values[name], dict) or "accuracy" not in values[name]:
                raise ModelError(f"{source}: card {name} has no accuracy")
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"model card {path} cannot be read ({exc}); re-ship the model or reinstall") from None
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: fields in declaration order, ``None`` sections left out, ``extra`` kept."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

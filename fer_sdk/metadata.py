"""The model contract: what every fer-sdk ONNX file carries in ``metadata_props["fer_sdk"]``.

One typed record, :class:`ModelMetadata`, written by the factory (``fer_sdk.export``: export, INT8,
ensembles, calibration) and read and validated by the runtime. ``docs/CONTRACTS.md`` shows it as JSON; a test
checks that document against these classes, field by field.

Reading is strict about what the runtime relies on (labels, input and output specs, format version) and
lenient about the rest: keys this version does not know are kept in ``extra`` and written back unchanged,
so an older fer-sdk can re-stamp a newer file without losing anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .constants import EMOTIONS, INPUT_NAME, INPUT_SIZE, METADATA_FORMAT, OUTPUT_NAME
from .errors import ModelError

#: What an error about a model's metadata tells the user to do.
EXPORT_HINT = "export it with `fer-sdk export` or pass a model this project exported"
#: Larger metadata is refused before parsing (real files hold about 2 kB).
MAX_METADATA_CHARS = 1_000_000
PRECISIONS = ("fp32", "int8", "mixed")
#: What the output holds: probabilities, or logits the reader turns into probabilities with a float softmax
#: (LiteRT full-integer models, whose int8 softmax would break row sums and ties).
OUTPUT_KINDS = ("softmax", "logits")


@dataclass(frozen=True)
class InputSpec:
    """The ``faces`` input: float32 ``(N, height, width, channels)``, values ``pixel * scale + offset``."""

    name: str = INPUT_NAME
    height: int = INPUT_SIZE[0]
    width: int = INPUT_SIZE[1]
    channels: int = 1
    layout: str = "NHWC"
    dtype: str = "float32"
    color: str = "gray"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    resize: str = "area"


@dataclass(frozen=True)
class OutputSpec:
    """The ``probabilities`` output: float32 ``(N, len(labels))``, rows summing to 1."""

    name: str = OUTPUT_NAME
    kind: str = "softmax"


@dataclass(frozen=True)
class ModelMetadata:
    """``metadata_props["fer_sdk"]`` of an exported model (see ``docs/CONTRACTS.md``).

    ``framing``: ``fer_sdk.framing.Framing.to_dict()`` of the training faces (``None``: FER2013's).
    ``quantization``: the INT8 recipe (``None`` for float models). ``ensemble``: the members of an
    ensemble. ``calibration``: the folded temperature and its ECE / NLL (``export/calibrate.py``).
    ``metrics``: this very file's evaluation, e.g. ``{"PublicTest": {"accuracy", "macro_f1", "n"}}``.
    """

    architecture: str
    precision: str
    parameters: int
    labels: tuple[str, ...] = EMOTIONS
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    format: int = METADATA_FORMAT
    source_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    framing: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    ensemble: list[dict[str, Any]] | None = None
    calibration: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, raw: str, source: str = "model") -> ModelMetadata:
        """Parse and check the JSON text; ``ModelError`` naming ``source`` and the fix when it is not the contract."""
        if not isinstance(raw, str):
            raise ModelError(f"{source}: fer-sdk metadata is {type(raw).__name__}, not JSON text; {EXPORT_HINT}")
        if len(raw) > MAX_METADATA_CHARS:
            raise ModelError(
                f"{source}: fer-sdk metadata is {len(raw):,} characters, over {MAX_METADATA_CHARS:,}; {EXPORT_HINT}"
            )
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as err:  # bad JSON, integers of 4,300+ digits, nesting thousands deep
            raise ModelError(
                f"{source} has unreadable fer-sdk metadata ({type(err).__name__}); {EXPORT_HINT}"
            ) from None
        return cls.from_dict(meta, source)

    @classmethod
    def from_dict(cls, meta: Any, source: str = "model") -> ModelMetadata:
        """Check and convert a parsed metadata object (unknown keys go to ``extra``)."""
        if not isinstance(meta, dict):
            raise ModelError(f"{source}: fer-sdk metadata is {type(meta).__name__}, not an object; {EXPORT_HINT}")
        fmt = meta.get("format")
        if isinstance(fmt, bool) or not isinstance(fmt, int):
            raise ModelError(f"{source}: fer-sdk metadata format {fmt!r} is not an integer; {EXPORT_HINT}")
        if fmt < 1:
            raise ModelError(f"{source}: fer-sdk metadata format {fmt!r} is not a version (1 or more); {EXPORT_HINT}")
        if fmt > METADATA_FORMAT:
            raise ModelError(
                f"{source}: fer-sdk metadata format {fmt!r} is not supported by this version (reads up to "
                f"{METADATA_FORMAT}); upgrade fer-sdk (pip install -U fer-sdk) or re-export the model"
            )
        labels = meta.get("labels")
        if not isinstance(labels, list) or len(labels) != len(EMOTIONS) or not all(isinstance(x, str) for x in labels):
            raise ModelError(
                f"{source}: metadata labels {labels!r} must list {len(EMOTIONS)} emotion names; {EXPORT_HINT}"
            )
        spec_in, spec_out = meta.get("input"), meta.get("output")
        if not isinstance(spec_in, dict) or not isinstance(spec_out, dict):
            raise ModelError(f"{source}: fer-sdk metadata lacks its 'input'/'output' sections; {EXPORT_HINT}")
        if spec_out.get("kind", "softmax") not in OUTPUT_KINDS:
            raise ModelError(
                f"{source}: metadata output kind {spec_out.get('kind')!r} is not one of {OUTPUT_KINDS}; {EXPORT_HINT}"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            return cls(
                architecture=_text(meta.get("architecture", "unknown"), "architecture"),
                precision=_text(meta.get("precision", "fp32"), "precision"),
                parameters=_count(meta.get("parameters", 0), "parameters"),
                labels=tuple(labels),
                input=_spec(InputSpec, spec_in, "input"),
                output=_spec(OutputSpec, spec_out, "output"),
                format=fmt,
                source_sha256=_optional(meta.get("source_sha256"), str, "source_sha256"),
                metrics=_optional(meta.get("metrics"), dict, "metrics") or {},
                producer=_optional(meta.get("producer"), dict, "producer") or {},
                framing=_optional(meta.get("framing"), dict, "framing"),
                quantization=_optional(meta.get("quantization"), dict, "quantization"),
                ensemble=_optional(meta.get("ensemble"), list, "ensemble"),
                calibration=_optional(meta.get("calibration"), dict, "calibration"),
                extra={k: v for k, v in meta.items() if k not in known},
            )
        except (TypeError, ValueError, OverflowError) as exc:  # "height": "x", Infinity, a list...
            raise ModelError(f"{source}: malformed fer-sdk metadata ({exc}); {EXPORT_HINT}") from None

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the contract's key order; ``None`` sections are left out, ``extra`` kept."""
        out: dict[str, Any] = {
            "format": self.format,
            "labels": list(self.labels),
            "input": dataclasses.asdict(self.input),
            "output": dataclasses.asdict(self.output),
        }
        for name in (
            "framing",
            "architecture",
            "precision",
            "parameters",
            "source_sha256",
            "metrics",
            "producer",
            "quantization",
            "ensemble",
            "calibration",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> ModelMetadata:
        """A copy with ``changes`` (e.g. ``precision="int8", quantization={...}, metrics={...}``)."""
        return dataclasses.replace(self, **changes)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} {value!r} is not a string")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} {value!r} is not a count")
    return value


def _optional(value: Any, kind: type, name: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{name} is {type(value).__name__}, not {kind.__name__}")
    return value


#: Keys a section must state (the others have defaults every export so far agrees on).
_REQUIRED = {"input": ("height", "width", "scale", "offset", "color", "resize")}


def _spec(cls: type, raw: dict[str, Any], section: str) -> Any:
    """An InputSpec / OutputSpec from its JSON object: known keys typed like the defaults, others refused."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ValueError(f"'{section}' has keys {unknown} this version does not know")
    missing = [key for key in _REQUIRED.get(section, ()) if key not in raw]
    if missing:  # a default here would be a guess about how the model was trained
        raise ValueError(f"'{section}' lacks {missing}")
    values = {}
    for key, default in defaults.items():
        value = raw.get(key, default)
        if isinstance(default, bool) or isinstance(value, bool):
            raise ValueError(f"{section}.{key} {value!r}")
        if isinstance(default, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or not 0 < value < 1 << 20:
                raise ValueError(f"{section}.{key} {value!r} is not a positive size")
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{section}.{key} {value!r} is not a finite number")
            value = float(value)
        elif not isinstance(value, str):
            raise ValueError(f"{section}.{key} {value!r} is not a string")
        values[key] = value
    return cls(**values)

"""The training recipe: :class:`TrainConfig` and the names of its choices.

Import-light on purpose (no Keras, no TensorFlow): the CLI builds its option choices from these tuples and
validates a recipe before it imports TensorFlow, so a bad ``--lr`` is refused in milliseconds.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from fer_sdk.errors import InvalidInputError

#: The two CNNs (``architectures.py`` builds them).
ARCHITECTURES = ("shallow", "deep")
#: Default recipe per architecture; every field can be overridden from the CLI.
DEFAULT_EPOCHS = {"shallow": 60, "deep": 120}
OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")
#: Training-time augmentation stacks, strongest first ("flip" = horizontal mirror only).
AUGMENT_LEVELS = ("strong", "light", "flip")
#: Keras dtype policies for training; saved networks are always float32.
PRECISIONS = ("float32", "mixed_bfloat16")


def invocation(module: str | None = None) -> str:
    """This process's command line as anyone could rerun it: ``fer-sdk ...`` or ``python -m MODULE ...``, never
    the build machine's absolute path to the script."""
    args = sys.argv[1:]
    if module is not None:
        return shlex.join(["python", "-m", module, *args])
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fer-sdk"
    head = ["fer-sdk"] if name == "fer-sdk" else ["python", name]
    return shlex.join([*head, *args])


@dataclass
class TrainConfig:
    arch: str
    epochs: int | None = None  # None: DEFAULT_EPOCHS[arch]
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum 0.9) or "adamw"
    lr: float | None = None  # None: 0.01 for sgd, 1e-3 for adamw
    weight_decay: float | None = None  # None: 5e-4 for sgd, 0.05 for adamw (decoupled, Keras' convention)
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    augment: bool = True
    class_weighting: str = "sqrt"  # "none", "sqrt" (sqrt of inverse frequency) or "balanced"
    dropout: float = 0.25
    fc_dropout: float = 0.5
    seed: int = 0
    augment_level: str = "strong"  # "strong" (geometry + contrast + erasing), "light" (flip + small geometry), "flip"
    init_from: str | None = None  # a .keras network whose weights start the run (fine-tuning)
    time_budget_s: float | None = None  # shorten the schedule so training ends within this many seconds
    precision: str = "float32"  # or "mixed_bfloat16": ~2x faster on CPUs with AVX512-BF16 / AMX
    snapshots: bool = False  # also keep the network of every epoch as snapshots/epoch_NNN.keras (for averaging)
    teacher: str | None = None  # knowledge distillation: a bundled model name or .onnx path (see distill.py)
    teacher_weight: float = 0.5  # share of the teacher's probabilities in each target (with a teacher)
    command: str = field(default_factory=invocation)

    def __post_init__(self) -> None:
        for what, value, choices in (
            ("architecture", self.arch, ARCHITECTURES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("augment level", self.augment_level, AUGMENT_LEVELS),
            ("precision", self.precision, PRECISIONS),
            ("class weighting", self.class_weighting, CLASS_WEIGHTINGS),
        ):
            if value not in choices:
                raise InvalidInputError(f"unknown {what} {value!r}; use one of: {', '.join(choices)}")
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.arch]
        if self.lr is None:
            self.lr = 0.01 if self.optimizer == "sgd" else 1e-3
        if self.weight_decay is None:
            self.weight_decay = 5e-4 if self.optimizer == "sgd" else 0.05
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name}={value!r} must be a positive integer (e.g. {name}=32)")
        if not self.lr > 0:
            raise InvalidInputError(f"lr={self.lr!r} must be > 0 (e.g. lr=0.01)")
        warmup = self.warmup_epochs
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise InvalidInputError(f"warmup_epochs={warmup!r} must be an integer >= 0 (e.g. warmup_epochs=3)")
        if not self.weight_decay >= 0:
            raise InvalidInputError(f"weight_decay={self.weight_decay!r} must be >= 0 (e.g. weight_decay=5e-4)")
        for name, example in (("label_smoothing", 0.1), ("dropout", 0.25), ("fc_dropout", 0.5)):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InvalidInputError(f"{name}={value!r} must be in [0, 1) (e.g. {name}={example})")
        if not 0 < self.teacher_weight <= 1:
            raise InvalidInputError(
                f"teacher_weight={self.teacher_weight!r} must be in (0, 1] (e.g. teacher_weight=0.5)"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise InvalidInputError(
                f"time_budget_s={self.time_budget_s!r} must be > 0 seconds (e.g. time_budget_s=3600)"
            )


def resumed_epochs(out: str | os.PathLike) -> int | None:
    """The epoch count the run in ``out`` asked for (None when there is no run): ``--resume`` without
    ``--epochs`` keeps the run's schedule instead of switching to the architecture's default."""
    state_file = Path(out) / "state.json"
    if not state_file.is_file():
        return None
    return json.loads(state_file.read_text()).get("requested_epochs")


def require_run(out: str | os.PathLike) -> None:
    """Refuse ``--resume`` into a folder where no run was started (a typo in ``--out`` would start a new one)."""
    if not (Path(out) / "config.json").is_file():
        raise InvalidInputError(
            f"--resume: {out} holds no run to resume (no config.json); check --out, or drop --resume to start one"
        )


#: TrainConfig fields whose ``fer-sdk train`` option is not ``--field-name``; ``command`` is recorded, not an option.
CLI_NAMES = {"augment_level": "--aug-level", "time_budget_s": "--time-budget"}
NOT_OPTIONS = ("command",)
#: Options that mean something only with another one (``fer-sdk train`` refuses them alone).
REQUIRES = {"teacher_weight": "teacher"}


def cli_option(name: str) -> str:
    """The ``fer-sdk train`` option that sets the TrainConfig field ``name``."""
    return CLI_NAMES.get(name, "--" + name.replace("_", "-"))


def cli_args(cfg: TrainConfig, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``fer-sdk train`` options that rebuild ``cfg`` (derived from its fields: a new field needs nothing
    here unless its option is spelt differently, ``CLI_NAMES``). Booleans that default to False are flags
    (``--snapshots``), those that default to True pairs (``--augment/--no-augment``); ``None`` is left out."""
    args: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_OPTIONS or f.name in skip or value is None:
            continue
        if f.name in REQUIRES and getattr(cfg, REQUIRES[f.name]) is None:
            continue
        option = cli_option(f.name)
        if isinstance(value, bool):
            if f.default is False:
                args += [option] if value else []
            else:
                args.append(option if value else "--no-" + option[2:])
        else:
            args += [option, str(value)]
    return args


def config_from_record(record: dict) -> TrainConfig:
    """A TrainConfig from a run's recorded ``config`` (config.json, metrics.json): keys this version does not
    know are dropped, missing ones take their defaults (an older run had those then)."""
    known = {f.name for f in fields(TrainConfig)} - set(NOT_OPTIONS)
    return TrainConfig(**{k: v for k, v in record.items() if k in known}, command=str(record.get("command", "")))

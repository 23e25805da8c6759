"""Train the FER2013 CNNs with Keras 3 (TensorFlow backend by default; JAX or torch on a GPU machine).

A run lives in one folder (``--out``):

- ``config.json``   the recipe and the exact command
- ``last.keras``    the training model (augmentation + network + optimizer state), saved every epoch
- ``best.keras``    the inference network (no augmentation) with the best validation accuracy so far
- ``state.json``    epochs done, planned epochs, history, best epoch: what ``--resume`` continues from
- ``metrics.json``  the final report (written once training ends)
- ``snapshots/epoch_NNN.keras``  with ``snapshots=True``: the network after every epoch (see ``average.py``)

Every file is written atomically, so a run killed at any point (SIGKILL included) resumes from its last
completed epoch with ``resume=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_sdk.constants import EMOTIONS, INPUT_NAME, INPUT_SIZE
from fer_sdk.errors import DatasetError, InvalidInputError
from fer_sdk.files import atomic_path, atomic_write_json
from fer_sdk.metrics import classification_report

from .architectures import build, float32_network
from .config import (  # noqa: F401  (re-exported: the recipe used to live here)
    AUGMENT_LEVELS,
    CLASS_WEIGHTINGS,
    DEFAULT_EPOCHS,
    OPTIMIZERS,
    PRECISIONS,
    TrainConfig,
    require_run,
    resumed_epochs,
)


@dataclass
class Splits:
    """Arrays for one run: uint8 faces (N, 48, 48) and int labels; ``val_name`` names the selection split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_name: str = "PublicTest"

    def __post_init__(self) -> None:
        for part in ("train", "val"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.ndim != 3 or x.shape[1:] != INPUT_SIZE or x.dtype != np.uint8:
                raise DatasetError(
                    f"x_{part} must be uint8 (N, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}); got {x.dtype} {x.shape}"
                )
            if len(x) != len(y) or len(x) == 0:
                raise DatasetError(f"x_{part} has {len(x)} faces but y_{part} has {len(y)} labels")


def lr_at(epoch: int, cfg: TrainConfig, planned: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak at the last planned epoch (0-based epoch)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    span = max(planned - cfg.warmup_epochs - 1, 1)
    progress = min((epoch - cfg.warmup_epochs) / span, 1.0)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def class_weights(y: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights, normalised so the mean weight over training samples is 1."""
    counts = np.bincount(y, minlength=len(EMOTIONS)).astype(np.float64)
    if mode == "none":
        return np.ones(len(EMOTIONS))
    inv = counts.sum() / np.maximum(counts, 1) / len(EMOTIONS)
    w = np.sqrt(inv) if mode == "sqrt" else inv
    return w / (w[y].mean())


def to_model_input(x: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) -> float32 (N, 48, 48, 1) in [0, 1]: the runtime's own preprocessing, so training,
    export parity and inference scale pixels with one piece of code."""
    from fer_sdk.export.convert import faces_to_input

    return faces_to_input(x)


def _augmenter(seed: int, level: str = "strong"):
    import keras
    from keras import layers

    stack = [layers.RandomFlip("horizontal", seed=seed)]
    if level != "flip":
        stack.append(layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1))
    if level == "strong":
        stack += [
            layers.RandomRotation(0.04, fill_mode="nearest", seed=seed + 2),  # +-14 degrees
            layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 3),
            layers.RandomContrast(0.2, value_range=(0.0, 1.0), seed=seed + 4),
            layers.RandomErasing(factor=0.5, scale=(0.02, 0.12), value_range=(0.0, 1.0), seed=seed + 5),
        ]
    elif level == "light":
        stack += [
            layers.RandomRotation(0.025, fill_mode="nearest", seed=seed + 2),  # +-9 degrees
            layers.RandomZoom(0.05, fill_mode="nearest", seed=seed + 3),
        ]
    return keras.Sequential(stack, name="augment")


def _optimizer(cfg: TrainConfig):
    import keras

    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)


def _compile(model, cfg: TrainConfig) -> None:
    import keras

    model.compile(
        optimizer=_optimizer(cfg),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def snapshot_path(out: Path, epoch: int) -> Path:
    """Where a run keeps the network after ``epoch`` (1-based) when trained with ``snapshots=True``."""
    return Path(out) / "snapshots" / f"epoch_{epoch:03d}.keras"


def save_epoch_network(net, out: Path, epoch: int, *, best: bool, snapshot: bool) -> None:
    """Write ``net`` as ``best.keras`` (when ``epoch`` improved) and as its snapshot, each atomically."""
    targets = ([Path(out) / "best.keras"] if best else []) + ([snapshot_path(out, epoch)] if snapshot else [])
    for target in targets:
        target.parent.mkdir(exist_ok=True)
        with atomic_path(target) as tmp:
            net.save(tmp)


def _build_network(cfg: TrainConfig, policy: str):
    """``cfg``'s network with the Keras dtype ``policy``; the global policy is left as it was."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)  # mixed policies keep float32 variables
    try:
        return build(cfg.arch, dropout=cfg.dropout, fc_dropout=cfg.fc_dropout)
    finally:
        keras.config.set_dtype_policy(previous)


def build_training_model(cfg: TrainConfig):
    """The network wrapped with (training-only) augmentation; ``model.layers[-1]`` is the network."""
    import keras

    net = _build_network(cfg, cfg.precision)
    if cfg.init_from:
        source = keras.models.load_model(cfg.init_from)
        if source.count_params() != net.count_params():
            raise InvalidInputError(
                f"--init-from {cfg.init_from} is not a {cfg.arch} network; pass a {cfg.arch} .keras"
            )
        net.set_weights(source.get_weights())
    stack = [keras.Input((*INPUT_SIZE, 1), name=INPUT_NAME)]
    if cfg.augment:
        stack.append(_augmenter(cfg.seed, cfg.augment_level))
    model = keras.Sequential([*stack, net], name=f"train_{cfg.arch}")
    _compile(model, cfg)
    return model


def hardware() -> dict:
    import keras
    from fer_sdk.benchmarks.machine import cpu_model

    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model()[0],
        "cpu_count": os.cpu_count(),
        "accelerators": [],
    }
    backend = info["backend"]
    try:
        if backend == "jax":
            import jax

            info["accelerators"] = [f"{d.device_kind} ({d})" for d in jax.devices() if d.platform != "cpu"]
        elif backend == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
            info["accelerators"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                info["accelerators"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # noqa: BLE001  (hardware description is informational; never fail a run over it
        info["accelerators_error"] = repr(exc)
    info["device"] = ", ".join(info["accelerators"]) or f"CPU ({info['cpu']}, {info['cpu_count']} cores)"
    return info


class _RunCallback:
    """Factory for the Keras callback doing schedule, checkpoints, time budget and progress lines."""

    @staticmethod
    def make(cfg: TrainConfig, out: Path, state: dict, log, steps: int | None = None):
        import contextlib

        import keras

        from fer_sdk.progress import counter

        class RunCallback(keras.callbacks.Callback):
            _bar: contextlib.ExitStack | None = None

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()
                lr = lr_at(epoch, cfg, state["planned_epochs"])
                self.model.optimizer.learning_rate.assign(lr)
                self._lr = lr
                self._close_bar()
                self._bar = contextlib.ExitStack()  # this epoch's batches: done, ETA, running loss and accuracy
                self._advance = self._bar.enter_context(
                    counter(f"epoch {epoch + 1}/{state['planned_epochs']}", steps, enabled=steps is not None)
                )

            def on_train_batch_end(self, batch, logs=None):
                logs = logs or {}
                self._advance(
                    1,
                    f"loss {float(logs.get('loss', float('nan'))):.4f}  "
                    f"acc {float(logs.get('accuracy', float('nan'))):.4f}",
                )

            def on_train_end(self, logs=None):
                self._close_bar()

            def _close_bar(self):
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None

            def on_epoch_end(self, epoch, logs=None):
                self._close_bar()
                logs = dict(logs or {})
                seconds = time.perf_counter() - self._t0

                def save_last():
                    with atomic_path(out / "last.keras") as tmp:
                        self.model.save(tmp)

                end_epoch(
                    cfg,
                    state,
                    out,
                    epoch,
                    lr=self._lr,
                    seconds=seconds,
                    metrics={k: float(v) for k, v in logs.items()},
                    network=lambda: float32_network(self.model.layers[-1]),
                    save_last=save_last,
                    log=log,
                )
                if epoch + 1 >= state["planned_epochs"]:
                    self.model.stop_training = True

        return RunCallback()


def end_epoch(
    cfg: TrainConfig,
    state: dict,
    out: Path,
    epoch: int,
    *,
    lr: float,
    seconds: float,
    metrics: dict,
    network,
    log,
    save_last=None,
) -> bool:
    """The end of 0-based ``epoch``, one rule for the Keras callback and the JAX loop: its history row, the best
    epoch, the epoch's networks saved (``network()`` gives the float32 network, asked for only when one is
    saved), ``save_last()`` (the resumable training model), the time budget, ``state.json`` written last (it
    names a saved epoch) and the progress line. Returns whether the epoch improved on the best."""
    state["wall_time_s"] += seconds
    state["history"].append({"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 2), **metrics})
    val_acc = float(metrics.get("val_accuracy", float("nan")))
    improved = val_acc > state["best_val_accuracy"]
    net = network() if improved or cfg.snapshots else None
    if improved:
        state["best_val_accuracy"], state["best_epoch"] = val_acc, epoch + 1
    save_epoch_network(net, out, epoch + 1, best=improved, snapshot=cfg.snapshots)
    if save_last is not None:
        save_last()
    state["epochs_done"] = epoch + 1
    apply_time_budget(cfg, state, epoch, log)
    atomic_write_json(out / "state.json", state)
    log(
        f"epoch {epoch + 1}/{state['planned_epochs']}  lr {lr:.5f}  loss {metrics.get('loss', float('nan')):.4f}  "
        f"acc {metrics.get('accuracy', float('nan')):.4f}  val_acc {val_acc:.4f}  "
        f"best {state['best_val_accuracy']:.4f}@{state['best_epoch']}  {seconds:.1f}s"
    )
    return improved


def apply_time_budget(cfg: TrainConfig, state: dict, epoch: int, log) -> None:
    """After 0-based ``epoch``: shorten ``state["planned_epochs"]`` so training ends within the budget."""
    if cfg.time_budget_s is None or epoch < 1:
        return
    # Epoch 1 includes compilation; estimate from the later ones.
    recent = [h["seconds"] for h in state["history"][1:]][-5:]
    per_epoch = sum(recent) / len(recent)
    affordable = epoch + 1 + int((cfg.time_budget_s - state["wall_time_s"]) // per_epoch)
    if affordable < state["planned_epochs"]:
        state["planned_epochs"] = max(affordable, epoch + 1)
        log(f"time budget: schedule shortened to {state['planned_epochs']} epochs")


def _check_resume(out: Path, cfg: TrainConfig) -> TrainConfig:
    saved = json.loads((out / "config.json").read_text())
    # A key missing from an older run's config.json had its default then (e.g. no teacher).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    ignore = {"command", "time_budget_s", "epochs", "snapshots"}
    diff = {}
    for k, v in dataclasses.asdict(cfg).items():
        was = saved.get(k, defaults.get(k))
        if k in ignore or was == v or (k == "teacher" and was and v):  # the same teacher: its sha256 decides
            continue
        diff[k] = (was, v)
    if diff:
        detail = ", ".join(f"{k}: run has {a!r}, you gave {b!r}" for k, (a, b) in diff.items())
        raise InvalidInputError(
            f"cannot resume {out}: its recipe differs ({detail}); resume with the same options or use a new --out"
        )
    return cfg


def train(cfg: TrainConfig, data: Splits, out: str | os.PathLike, *, resume: bool = False, log=print) -> dict:
    """Train (or resume) a run in ``out``; return the final metrics (also written to ``metrics.json``)."""
    import keras

    out = Path(out)
    state_file = out / "state.json"
    if resume:
        require_run(out)
    out.mkdir(parents=True, exist_ok=True)
    resume_run = resume and state_file.exists() and (out / "last.keras").exists()
    if resume_run:
        cfg = _check_resume(out, cfg)
        state = json.loads(state_file.read_text())
        state["planned_epochs"] = max(state["planned_epochs"], state["epochs_done"])
        if cfg.epochs != state.get("requested_epochs"):
            state["planned_epochs"] = state["requested_epochs"] = cfg.epochs
        model = keras.models.load_model(out / "last.keras")  # layers keep the dtype policy they were saved with
        log(f"resuming {out} after epoch {state['epochs_done']} (best {state['best_val_accuracy']:.4f})")
    else:
        if not resume and state_file.exists():
            raise InvalidInputError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
        keras.utils.set_random_seed(cfg.seed)
        _enable_determinism()
        model = build_training_model(cfg)
        state = new_run_state(cfg)
    y_train = distillation_targets(cfg, data, state, log)  # before config.json: a failing teacher leaves no run
    if not resume_run:
        atomic_write_json(out / "config.json", dataclasses.asdict(cfg))

    x_train, x_val = to_model_input(data.x_train), to_model_input(data.x_val)
    y_val = np.eye(len(EMOTIONS), dtype=np.float32)[data.y_val]
    sample_weight = class_weights(data.y_train, cfg.class_weighting)[data.y_train].astype(np.float32)

    if state["epochs_done"] < state["planned_epochs"]:
        log(
            f"training {cfg.arch} on {len(x_train)} faces ({data.val_name}: {len(x_val)}), "
            f"{hardware()['device']}, backend {keras.backend.backend()}"
        )
        model.fit(
            x_train,
            y_train,
            sample_weight=sample_weight,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs if cfg.time_budget_s is None else max(cfg.epochs, state["planned_epochs"]),
            initial_epoch=state["epochs_done"],
            validation_data=(x_val, y_val),
            callbacks=[_RunCallback.make(cfg, out, state, log, steps=-(-len(x_train) // cfg.batch_size))],
            shuffle=True,
            verbose=0,
        )
    return finish_run(out, data, cfg, state, log=log)


def new_run_state(cfg: TrainConfig) -> dict:
    """``state.json`` of a run before its first epoch (the Keras and the on-device JAX loops share it)."""
    return {
        "epochs_done": 0,
        "planned_epochs": cfg.epochs,
        "requested_epochs": cfg.epochs,
        "best_val_accuracy": -1.0,
        "best_epoch": 0,
        "wall_time_s": 0.0,
        "history": [],
    }


def distillation_targets(cfg: TrainConfig, data: Splits, state: dict, log) -> np.ndarray:
    """The Training targets: one-hot labels, mixed with ``cfg.teacher``'s probabilities when it is set.

    The teacher's sha256 is kept in ``state``: resuming with a different file is refused before it runs.
    """
    from .distill import teacher_probabilities, training_targets

    probs = None
    if cfg.teacher:
        probs, sha = teacher_probabilities(
            cfg.teacher, data.x_train, expected_sha256=state.get("teacher_sha256"), log=log
        )
        state["teacher_sha256"] = sha
    return training_targets(data.y_train, probs, cfg.teacher_weight)


def _enable_determinism() -> None:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()


def predict_proba(model, x_uint8: np.ndarray, *, flip: bool = False, batch_size: int = 256) -> np.ndarray:
    x = to_model_input(x_uint8)
    p = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    if flip:
        p = (p + np.asarray(model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0))) / 2
    return p


def evaluate_run(out: Path, data: Splits, cfg: TrainConfig, state: dict, *, predict=predict_proba) -> dict:
    import keras

    model = keras.models.load_model(out / "best.keras")
    splits = {}
    for name, x, y in (("Training", data.x_train, data.y_train), (data.val_name, data.x_val, data.y_val)):
        p = predict(model, x)
        report = classification_report(y, p.argmax(1))
        report["accuracy_flip_tta"] = float((predict(model, x, flip=True).argmax(1) == y).mean())
        splits[name] = report
    return {
        "architecture": cfg.arch,
        "parameters": int(model.count_params()),
        "config": dataclasses.asdict(cfg),
        "command": cfg.command,
        "selection_split": data.val_name,
        **({"teacher_sha256": state["teacher_sha256"]} if state.get("teacher_sha256") else {}),
        "best_epoch": state["best_epoch"],
        "epochs": state["epochs_done"],
        "wall_time_s": round(state["wall_time_s"], 1),
        "hardware": hardware(),
        "splits": splits,
        "history": state["history"],
    }


def finish_run(out: Path, data: Splits, cfg: TrainConfig, state: dict, *, log, predict=predict_proba) -> dict:
    """The end of a run, one rule for the Keras and the JAX loops: ``best.keras`` evaluated (:func:`evaluate_run`
    with ``predict``), ``metrics.json`` written and the closing line logged; returns the metrics."""
    metrics = evaluate_run(out, data, cfg, state, predict=predict)
    atomic_write_json(out / "metrics.json", metrics)
    selected = metrics["splits"][data.val_name]
    log(
        f"done: best {data.val_name} accuracy {selected['accuracy']:.4f} (epoch {state['best_epoch']}), "
        f"flip-TTA {selected['accuracy_flip_tta']:.4f}"
    )
    return metrics


def load_splits(path: str | os.PathLike, *, val_split: float | None = None, seed: int = 0) -> Splits:
    """Read FER2013 (CSV, .gz or image folders): fit on Training, select on PublicTest or a Training slice."""
    from fer_sdk.data import read_fer2013

    wanted = ["Training"] if val_split else ["Training", "PublicTest"]
    splits = read_fer2013(path, splits=wanted)
    if "Training" not in splits:
        raise DatasetError(f"{path} has no Training faces; training needs the Training split")
    x, y = splits["Training"]
    if val_split:
        from sklearn.model_selection import train_test_split

        x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_split, stratify=y, random_state=seed)
        return Splits(x_tr, y_tr, x_va, y_va, val_name="TrainingHoldout")
    if "PublicTest" not in splits:
        raise DatasetError(
            f"{path} has no PublicTest faces to select the model on; pass --val-split 0.1 to hold out Training"
        )
    return Splits(x, y, *splits["PublicTest"], val_name="PublicTest")

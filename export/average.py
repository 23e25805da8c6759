"""Weight averaging (SWA): average the networks of several epochs of one run, then re-estimate batch norm.

    fer-sdk train ... --out runs/deep-ft --snapshots
    fer-sdk models average --data fer2013.csv.gz --run runs/deep-ft --epochs 20-32 --out runs/deep-swa

Averaging the weights of the last epochs of a run (Izmailov et al. 2018, "Averaging Weights Leads to Wider
Optima") lands in the middle of the region SGD wanders in, which usually generalizes better than any one
epoch. The averaged batch-norm statistics do not match the averaged weights, so they are re-estimated on
Training faces, layer by layer, in inference mode ("precise BN"). The output is a run folder like
``fer-sdk train`` writes (``best.keras``, ``config.json``, ``metrics.json``), so ``fer-sdk export`` and the
ship step take it as is; ``metrics.json`` records the source run and epochs, which chain the model card.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from fer_sdk.errors import FerSdkError, InvalidInputError
from fer_sdk.files import atomic_path, atomic_write_json


def parse_epochs(spec: str) -> list[int]:
    """``"20-32"`` or ``"20,22,24"`` (or a mix) -> sorted epoch numbers; bad specs name the fix."""
    epochs: set[int] = set()
    for part in str(spec).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise InvalidInputError(f"--epochs {spec!r}: use a range like 20-32 or a list like 20,24,28")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if lo < 1 or hi < lo:
            raise InvalidInputError(f"--epochs {spec!r}: ranges go from a low epoch >= 1 to a higher one, e.g. 20-32")
        epochs.update(range(lo, hi + 1))
    return sorted(epochs)


def snapshot_paths(run: Path, epochs: list[int]) -> list[Path]:
    from .train import snapshot_path

    paths = [snapshot_path(run, e) for e in epochs]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FerSdkError(
            f"{run}/snapshots lacks {', '.join(missing)}; train with --snapshots (and enough epochs) first"
        )
    return paths


def average_networks(paths: list[Path]):
    """Load the networks and return the first one holding the mean of all their weights."""
    import keras

    if not paths:
        raise FerSdkError("nothing to average: pass at least one snapshot")
    nets = [keras.models.load_model(p, compile=False) for p in paths]
    shapes = [[w.shape for w in n.get_weights()] for n in nets]
    if any(s != shapes[0] for s in shapes):
        odd = next(p for p, s in zip(paths, shapes) if s != shapes[0])
        raise FerSdkError(f"{odd} is not the same network as {paths[0]}; average snapshots of one run only")
    mean = [
        np.mean([n.get_weights()[i] for n in nets], axis=0, dtype=np.float64).astype(np.float32)
        for i in range(len(shapes[0]))
    ]
    nets[0].set_weights(mean)
    return nets[0]


def recalibrate_batchnorm(net, x_uint8: np.ndarray, *, batch_size: int = 256) -> int:
    """Set every BatchNormalization layer's moving mean/variance to the statistics of its input on
    ``x_uint8`` (inference mode, earlier layers already recalibrated). Returns the number of layers set."""
    import keras

    from .train import to_model_input

    x = to_model_input(x_uint8)
    done = 0
    for layer in net.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        feat = layer.input
        axes = tuple(range(len(feat.shape) - 1))  # all but channels
        # per-batch moments computed inside the compiled graph: no (N, 48, 48, C) array reaches numpy
        probe = keras.Model(
            net.input, [keras.ops.mean(feat, axis=axes), keras.ops.mean(keras.ops.square(feat), axis=axes)]
        )
        total, total_sq = 0.0, 0.0
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            mean_b, sq_b = probe.predict_on_batch(chunk)
            total = total + np.asarray(mean_b, np.float64) * len(chunk)
            total_sq = total_sq + np.asarray(sq_b, np.float64) * len(chunk)
        mean = total / len(x)
        var = np.maximum(total_sq / len(x) - mean * mean, 0.0)
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, mean.astype(np.float32), var.astype(np.float32)])
        done += 1
    return done


def average_run(
    run: str | Path,
    epochs: list[int],
    out: str | Path,
    data,
    *,
    bn_faces: int = 10000,
    seed: int = 0,
    command: str | None = None,
    log=print,
) -> dict:
    """Average ``run``'s snapshots of ``epochs`` into the run folder ``out``; return its metrics."""
    from .architectures import float32_network
    from .config import invocation
    from .train import TrainConfig, evaluate_run

    run, out = Path(run), Path(out)
    if not (run / "metrics.json").exists():
        raise FerSdkError(f"{run} has no metrics.json; average the snapshots of a finished run")
    source = json.loads((run / "metrics.json").read_text())
    if (out / "metrics.json").exists():
        raise FerSdkError(f"{out} already holds a run; choose a new --out")
    t0 = time.perf_counter()
    net = float32_network(average_networks(snapshot_paths(run, epochs)))  # snapshots of old runs may be bf16
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.x_train), size=min(bn_faces, len(data.x_train)), replace=False)
    layers = recalibrate_batchnorm(net, data.x_train[np.sort(pick)])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "best.keras") as tmp:
        net.save(tmp)
    config = {**source["config"], "init_from": None}
    atomic_write_json(out / "config.json", config)
    cfg = TrainConfig(**{**config, "command": command or invocation("fer_sdk.export.average")})
    state = {"best_epoch": epochs[-1], "epochs_done": 0, "wall_time_s": time.perf_counter() - t0, "history": []}
    if source.get("teacher_sha256"):  # a distilled run's teacher stays on record
        state["teacher_sha256"] = source["teacher_sha256"]
    metrics = evaluate_run(out, data, cfg, state)
    metrics["average"] = {
        "run": str(run),
        "epochs": epochs,
        "bn_faces": len(pick),
        "bn_layers": layers,
        "seed": seed,
        "command": cfg.command,
    }
    atomic_write_json(out / "metrics.json", metrics)
    acc = metrics["splits"][data.val_name]["accuracy"]
    log(f"averaged {len(epochs)} epochs of {run} ({epochs[0]}-{epochs[-1]}): {data.val_name} accuracy {acc:.4f}")
    return metrics


if __name__ == "__main__":  # ``python -m fer_sdk.export.average ARGS`` is ``fer-sdk models average ARGS``
    from fer_sdk.cli import run_as

    run_as(["models", "average"])

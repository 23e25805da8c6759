"""Train several recipes at once on one GPU machine (Keras 3 on JAX), inside a wall-clock budget.

Repository tooling for a lent GPU machine that has JAX but no TensorFlow. One small GPU is far from
saturated by a 48x48 CNN, so the recipes run as concurrent processes, each training with
``time_budget_s`` (its cosine schedule is shortened to fit) and saving checkpoints every epoch. The
parent then packs each run's ``best.keras``, ``metrics.json`` and ``state.json`` into
``results.tar`` split in parts small enough for the machine's file return limits. Export happens later,
under TensorFlow, on the developer's machine (``fer-sdk export RUN_DIR``).

    KERAS_BACKEND=jax python -m fer_sdk.export.gpu_job --pixels X.xz --labels Y.npz --out OUT --budget 400
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

RECIPES = {
    "shallow": {"arch": "shallow", "epochs": 60, "optimizer": "sgd"},
    "deep-sgd": {"arch": "deep", "epochs": 150, "optimizer": "sgd"},
    "deep-adamw": {"arch": "deep", "epochs": 150, "optimizer": "adamw"},
    "deep-sgd-lr03": {"arch": "deep", "epochs": 150, "optimizer": "sgd", "lr": 0.03},
}
#: Weights returned per architecture (the machine returns at most 64 MB; a deep model is 18 MB).
KEEP = {"shallow": 1, "deep": 2}


def load_arrays(pixels: Path, labels: Path):
    """Pixels: raw uint8 (Training then PublicTest) compressed with xz; labels: npz y_train / y_val."""
    y = np.load(labels)
    raw = np.frombuffer(lzma.decompress(pixels.read_bytes()), dtype=np.uint8).reshape(-1, 48, 48)
    n = len(y["y_train"])
    return raw[:n], y["y_train"].astype(np.int64), raw[n:], y["y_val"].astype(np.int64)


def worker(args) -> None:
    from .train import Splits, TrainConfig, train

    x_tr, y_tr, x_va, y_va = load_arrays(Path(args.pixels), Path(args.labels))
    if args.limit:
        x_tr, y_tr = x_tr[: args.limit], y_tr[: args.limit]
    recipe = dict(RECIPES[args.worker], **json.loads(args.override))
    cfg = TrainConfig(
        **recipe,
        time_budget_s=args.budget,
        command=(
            f"fer-sdk train --arch {recipe['arch']} --optimizer {recipe['optimizer']} --data fer2013.csv.gz "
            f"--epochs EPOCHS_DONE  # KERAS_BACKEND=jax on a GPU; EPOCHS_DONE from metrics.json"
        ),
    )

    def log(m):
        return print(f"[{args.worker}] {m}", flush=True)

    splits = Splits(x_tr, y_tr, x_va, y_va)
    if args.fit:
        run = Path(args.work) / args.worker
        train(cfg, splits, run, resume=(run / "config.json").is_file(), log=log)  # resume after a restart
    else:
        from .jax_loop import train_on_device

        train_on_device(cfg, splits, Path(args.work) / args.worker, log=log)


def _best(run: Path) -> float:
    try:
        return json.loads((run / "state.json").read_text())["best_val_accuracy"]
    except (OSError, ValueError, KeyError):
        return -1.0


def pack(work: Path, out: Path, part_mb: int = 15) -> list[Path]:
    runs = sorted((p for p in work.iterdir() if p.is_dir()), key=_best, reverse=True)
    keep, kept = set(), {arch: 0 for arch in KEEP}
    for run in runs:
        arch = RECIPES.get(run.name, {}).get("arch", "deep")
        if kept[arch] < KEEP[arch] and (run / "best.keras").exists():
            keep.add(run.name)
            kept[arch] += 1
    tar_path = work / "results.tar"
    with tarfile.open(tar_path, "w") as tar:
        for run in runs:
            for name in ("best.keras", "metrics.json", "state.json", "config.json", "train.log"):
                if (run / name).exists() and (name != "best.keras" or run.name in keep):
                    tar.add(run / name, arcname=f"{run.name}/{name}")
    data = tar_path.read_bytes()
    size = part_mb * 1024 * 1024
    parts = []
    for i in range(0, len(data), size):
        part = out / f"results.tar.part{i // size:02d}"
        part.write_bytes(data[i : i + size])
        parts.append(part)
    return parts


def worker_command(name: str, argv: list[str]) -> list[str]:
    """The command line of one worker: this same module (``export.gpu_job`` in a checkout,
    ``fer_sdk.export.gpu_job`` when installed) with the parent's arguments and ``--worker NAME``."""
    module = __spec__.name if __spec__ is not None else "export.gpu_job"
    return [sys.executable, "-m", module, "--worker", name] + [a for a in argv if not a.startswith("--worker")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/fer_runs")
    ap.add_argument("--budget", type=float, default=400.0, help="training seconds per run")
    ap.add_argument("--deadline", type=float, default=None, help="kill workers after this many seconds")
    ap.add_argument("--runs", default=",".join(RECIPES))
    ap.add_argument("--limit", type=int, default=0, help="train on the first N faces only (smoke tests)")
    ap.add_argument("--override", default="{}", help="JSON of TrainConfig fields applied to every run")
    ap.add_argument("--mem-fraction", default="0.2")
    ap.add_argument("--fit", action="store_true", help="use keras model.fit instead of the on-device loop")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if json.loads(args.override).get("teacher"):
        ap.error(
            "--override: gpu_job does not distil (its parallel workers would all run the teacher on the "
            "CPU); train with a teacher through `fer-sdk train --teacher` instead"
        )
    if args.worker:
        return worker(args)

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + (args.deadline or args.budget + 120)
    env = dict(
        os.environ,
        KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"),
        XLA_PYTHON_CLIENT_MEM_FRACTION=args.mem_fraction,
        PYTHONUNBUFFERED="1",
    )
    procs = {}
    for name in args.runs.split(","):
        (work / name).mkdir(parents=True, exist_ok=True)
        log = open(work / name / "train.log", "a")  # noqa: SIM115  (outlives this loop; closed after the worker exits)
        cmd = worker_command(name, sys.argv[1:])
        procs[name] = (
            subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
            log,
        )
    while any(p.poll() is None for p, _ in procs.values()) and time.time() < deadline:
        time.sleep(5)
        lines = []
        for name in procs:
            text = (work / name / "train.log").read_text(errors="replace").strip().splitlines()
            epoch_lines = [t for t in text if "epoch" in t or "done" in t or "Error" in t]
            lines.append(epoch_lines[-1] if epoch_lines else f"[{name}] (starting)")
        print(" | ".join(lines), flush=True)
    for name, (p, log) in procs.items():
        if p.poll() is None:
            print(f"deadline: stopping {name}", flush=True)
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.close()
        print(f"{name}: exit {p.returncode}", flush=True)
    parts = pack(work, out)
    print("packed", [f"{p.name} {p.stat().st_size}" for p in parts], flush=True)
    failed = [name for name, (p, _) in procs.items() if p.returncode != 0]
    if failed:
        raise SystemExit(f"worker(s) {', '.join(failed)} failed: see {work}/<name>/train.log")


if __name__ == "__main__":
    main()

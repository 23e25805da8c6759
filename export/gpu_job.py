"""Train several recipes at once on one GPU machine (Keras 3 on JAX), inside a wall-clock budget.

Repository tooling for a lent GPU machine that has JAX but no TensorFlow. One small GPU is far from
saturated by a 48x48 CNN, so the recipes run as concurrent processes, each training with
``time_budget_s`` (its cosine schedule is shortened to fit) and saving checkpoints every epoch. The
parent then packs each run's ``best.keras``, ``metrics.json`` and ``state.json`` into
``results.tar`` split in parts small enough for the machine's file return limits. Export happens later,
under TensorFlow, on the developer's machine (``fer-sdk export RUN_DIR``).

    KERAS_BACKEND=jax fer-sdk models gpu-job --pixels X.xz --labels Y.npz --out OUT --budget 400

(``python -m fer_sdk.export.gpu_job ARGS`` runs the same command; each worker is started that way.)
"""

from __future__ import annotations

import json
import lzma
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_sdk.constants import INPUT_SIZE

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
    from fer_sdk.errors import DatasetError

    try:
        with np.load(labels) as y:
            y_train, y_val = y["y_train"].astype(np.int64), y["y_val"].astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"--labels {labels}: not an npz holding y_train and y_val ({exc})") from None
    try:
        raw = np.frombuffer(lzma.decompress(pixels.read_bytes()), dtype=np.uint8).reshape(-1, *INPUT_SIZE)
    except (OSError, lzma.LZMAError, ValueError) as exc:
        raise DatasetError(f"--pixels {pixels}: not xz-compressed uint8 48x48 faces ({exc})") from None
    if len(raw) != len(y_train) + len(y_val):
        raise DatasetError(f"--pixels {pixels} holds {len(raw)} faces, the labels {len(y_train) + len(y_val)}")
    n = len(y_train)
    return raw[:n], y_train, raw[n:], y_val


@dataclass(frozen=True)
class GpuJob:
    """The options of one job (``fer-sdk models gpu-job``); ``worker`` is set in the processes it starts."""

    pixels: Path
    labels: Path
    out: Path
    work: Path = Path("/tmp/fer_runs")
    budget: float = 400.0  # training seconds per run
    deadline: float | None = None  # kill workers after this many seconds (default: budget + 120)
    runs: tuple[str, ...] = tuple(RECIPES)
    limit: int = 0  # train on the first N faces only (smoke tests)
    override: str = "{}"  # JSON of TrainConfig fields applied to every run
    mem_fraction: str = "0.2"
    fit: bool = False  # keras model.fit instead of the on-device loop

    def check(self) -> None:
        from fer_sdk.errors import InvalidInputError

        unknown = [r for r in self.runs if r not in RECIPES]
        if unknown:
            raise InvalidInputError(f"--runs: unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
        try:
            override = json.loads(self.override)
        except ValueError as exc:
            raise InvalidInputError(
                f"--override {self.override!r} is not JSON ({exc}); e.g. '{{\"lr\": 0.02}}'"
            ) from None
        if not isinstance(override, dict):
            raise InvalidInputError(f"--override {self.override!r} must be a JSON object of TrainConfig fields")
        missing = [
            f"{opt} {path}"
            for opt, path in (("--pixels", self.pixels), ("--labels", self.labels))
            if not Path(path).is_file()
        ]
        if missing:
            raise InvalidInputError(f"{', '.join(missing)}: no such file; pass the files the job's data step wrote")
        if override.get("teacher"):
            raise InvalidInputError(
                "--override: gpu_job does not distil (its parallel workers would all run the teacher on the "
                "CPU); train with a teacher through `fer-sdk train --teacher` instead"
            )

    def worker_args(self) -> list[str]:
        """The command-line options that give a worker this job."""
        args = ["--pixels", str(self.pixels), "--labels", str(self.labels), "--out", str(self.out)]
        args += ["--work", str(self.work), "--budget", str(self.budget), "--runs", ",".join(self.runs)]
        args += ["--limit", str(self.limit), "--override", self.override, "--mem-fraction", self.mem_fraction]
        if self.deadline is not None:
            args += ["--deadline", str(self.deadline)]
        return [*args, "--fit"] if self.fit else args


def worker(job: GpuJob, name: str) -> None:
    from .train import Splits, TrainConfig, train

    x_tr, y_tr, x_va, y_va = load_arrays(Path(job.pixels), Path(job.labels))
    if job.limit:
        x_tr, y_tr = x_tr[: job.limit], y_tr[: job.limit]
    recipe = dict(RECIPES[name], **json.loads(job.override))
    cfg = TrainConfig(
        **recipe,
        time_budget_s=job.budget,
        command=(
            f"fer-sdk train --arch {recipe['arch']} --optimizer {recipe['optimizer']} --data fer2013.csv.gz "
            f"--epochs EPOCHS_DONE  # KERAS_BACKEND=jax on a GPU; EPOCHS_DONE from metrics.json"
        ),
    )

    def log(m):
        return print(f"[{name}] {m}", flush=True)

    splits = Splits(x_tr, y_tr, x_va, y_va)
    if job.fit:
        run = Path(job.work) / name
        train(cfg, splits, run, resume=(run / "config.json").is_file(), log=log)  # resume after a restart
    else:
        from .jax_loop import train_on_device

        train_on_device(cfg, splits, Path(job.work) / name, log=log)


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


def worker_command(name: str, job: GpuJob) -> list[str]:
    """The command line of one worker: this same module (``export.gpu_job`` in a checkout,
    ``fer_sdk.export.gpu_job`` when installed) with the job's options and ``--worker NAME``."""
    module = __spec__.name if __spec__ is not None else "export.gpu_job"
    return [sys.executable, "-m", module, "--worker", name, *job.worker_args()]


def run_job(job: GpuJob, log=print) -> list[Path]:
    """Start one worker process per recipe, wait (until the deadline), pack the results; the parts written.
    A worker that fails makes the job fail (``FerSdkError``) after packing what there is."""
    from fer_sdk.errors import FerSdkError

    job.check()
    work, out = Path(job.work), Path(job.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + (job.deadline or job.budget + 120)
    env = dict(
        os.environ,
        KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"),
        XLA_PYTHON_CLIENT_MEM_FRACTION=job.mem_fraction,
        PYTHONUNBUFFERED="1",
    )
    procs = {}
    for name in job.runs:
        (work / name).mkdir(parents=True, exist_ok=True)
        log_file = open(work / name / "train.log", "a")  # noqa: SIM115  (outlives this loop; closed after the worker exits)
        procs[name] = (
            subprocess.Popen(
                worker_command(name, job), env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            ),
            log_file,
        )
    while any(p.poll() is None for p, _ in procs.values()) and time.time() < deadline:
        time.sleep(5)
        lines = []
        for name in procs:
            text = (work / name / "train.log").read_text(errors="replace").strip().splitlines()
            epoch_lines = [t for t in text if "epoch" in t or "done" in t or "Error" in t]
            lines.append(epoch_lines[-1] if epoch_lines else f"[{name}] (starting)")
        log(" | ".join(lines))
    for name, (p, log_file) in procs.items():
        if p.poll() is None:
            log(f"deadline: stopping {name}")
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log_file.close()
        log(f"{name}: exit {p.returncode}")
    parts = pack(work, out)
    log(f"packed {[f'{p.name} {p.stat().st_size}' for p in parts]}")
    failed = [name for name, (p, _) in procs.items() if p.returncode != 0]
    if failed:
        raise FerSdkError(f"worker(s) {', '.join(failed)} failed: see {work}/<name>/train.log")
    return parts


if __name__ == "__main__":  # ``python -m fer_sdk.export.gpu_job ARGS`` is ``fer-sdk models gpu-job ARGS``
    from fer_sdk.cli import run_as

    run_as(["models", "gpu-job"])

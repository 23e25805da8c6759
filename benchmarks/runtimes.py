"""Runtime comparison: ONNX Runtime (fp32, INT8; CPU, CUDA when real) against Keras/TensorFlow, interleaved.

Every runtime configuration (model x runtime x device x threads) is a worker process (``worker.py``); every
(worker, API, batch size) is a *configuration* of the results. After a warm-up of each configuration the
timed rounds run every configuration once per round, so that a change in machine load hits all runtimes,
not the one that happened to run last. The round loop is time-boxed: at least ``min_rounds``, then more
until ``time_budget_s`` or ``max_rounds``.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fer_sdk.export.config import ARCHITECTURES  # not export.architectures: this process stays TF-free

from fer_sdk.errors import TRAIN_EXTRA_HINT
from fer_sdk.runtime import usable_cores

from .catalog import BenchModel
from .timing import calls_per_round, summarize
from .workers import Worker, WorkerError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
KERAS_ENV = {
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "-1",  # the Keras rows are the CPU baseline, even on a machine with a GPU
}


@dataclass(frozen=True)
class Settings:
    """How much to measure. ``quick()`` is the CI smoke run, ``full()`` the published one."""

    batch_sizes: tuple[int, ...]
    ort_threads: tuple[int, ...]
    keras_threads: tuple[int, ...]
    keras_architectures: int  # how many architectures Keras is timed on (quick: 1)
    min_rounds: int
    max_rounds: int
    time_budget_s: float
    round_seconds: float
    max_calls_per_round: int
    warmup_seconds: float

    @classmethod
    def full(cls) -> Settings:
        cores = usable_cores()
        threads = (1, cores) if cores > 1 else (1,)
        return cls(
            batch_sizes=(1, 8, 32, 64, 256),
            ort_threads=threads,
            keras_threads=threads,
            keras_architectures=2,
            min_rounds=5,
            max_rounds=30,
            time_budget_s=120.0,
            round_seconds=0.1,
            max_calls_per_round=50,
            warmup_seconds=0.2,
        )

    @classmethod
    def quick(cls) -> Settings:
        cores = usable_cores()
        return cls(
            batch_sizes=(1, 64),
            ort_threads=(1, cores) if cores > 1 else (1,),
            keras_threads=(cores,),
            keras_architectures=1,
            min_rounds=2,
            max_rounds=2,
            time_budget_s=5.0,
            round_seconds=0.02,
            max_calls_per_round=10,
            warmup_seconds=0.03,
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Plan:
    """One worker to start and the result fields its rows share."""

    name: str
    spec: dict
    apis: tuple[str, ...]
    labels: dict
    env: dict = field(default_factory=dict)
    worker: Worker | None = None


@dataclass
class _Config:
    plan: _Plan
    api: str
    batch: int
    calls: int = 1
    first_call_s: float = 0.0
    samples: list = field(default_factory=list)
    error: str | None = None

    @property
    def id(self) -> str:
        lab = self.plan.labels
        threads = "default" if lab["threads"] is None else lab["threads"]
        return f"{lab['runtime']}/{lab['model']}/{lab['device']}/t{threads}/{self.api}/b{self.batch}"


def tensorflow_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))


def cuda_offered() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def _exported_labels(m: BenchModel, runtime: str, device: str, threads: int | None) -> dict:
    """The labels of a plan timing an exported model file (ONNX or LiteRT)."""
    return {
        "runtime": runtime,
        "model": m.name,
        "architecture": m.architecture,
        "precision": m.precision,
        "device": device,
        "threads": threads,
        "weights": "exported",
    }


def _plans(
    models: list[BenchModel],
    settings: Settings,
    *,
    with_keras: bool,
    keras_models: dict[str, str] | None,
    with_cuda: bool,
    notes: list[str],
) -> list[_Plan]:
    plans = []
    for m in models:
        if Path(m.path).suffix.lower() == ".tflite":  # LiteRT: CPU (XNNPACK), the same thread counts as ORT
            for threads in settings.ort_threads:
                plans.append(
                    _Plan(
                        name=f"litert-{m.name}-cpu-t{threads}",
                        spec={"kind": "litert", "path": str(m.path), "threads": threads},
                        apis=("interpreter.invoke",),
                        labels=_exported_labels(m, "litert", "cpu", threads),
                    )
                )
            continue
        devices = [("cpu", [CPU], t) for t in settings.ort_threads]
        if with_cuda:
            devices.append(("cuda", [CUDA, CPU], None))
        for device, providers, threads in devices:
            plans.append(
                _Plan(
                    name=f"ort-{m.name}-{device}-t{threads}",
                    spec={
                        "kind": "onnxruntime",
                        "path": str(m.path),
                        "threads": threads,
                        "providers": providers,
                    },
                    apis=("session.run",),
                    labels=_exported_labels(m, "onnxruntime", device, threads),
                )
            )
    if not with_keras:
        notes.append("Keras/TensorFlow was not timed (with_keras=False / --no-keras).")
        return plans
    if not tensorflow_installed():
        notes.append(f"Keras/TensorFlow was not timed: TensorFlow is not installed ({TRAIN_EXTRA_HINT}).")
        return plans
    keras_models = dict(keras_models or {})
    archs = [a for a in dict.fromkeys(m.architecture for m in models) if a in ARCHITECTURES]
    archs += [a for a in keras_models if a not in archs]
    skipped = [
        a for a in dict.fromkeys(m.architecture for m in models) if a not in ARCHITECTURES and a not in keras_models
    ]
    if skipped:
        notes.append(f"No Keras counterpart for architecture(s) {', '.join(skipped)} (not in {ARCHITECTURES}).")
    if len(archs) > settings.keras_architectures:
        notes.append(f"Quick run: Keras timed on {archs[0]} only.")
        archs = archs[: settings.keras_architectures]
    for arch in archs:
        path = keras_models.get(arch)
        for threads in settings.keras_threads:
            plans.append(
                _Plan(
                    name=f"keras-{arch}-t{threads}",
                    spec={
                        "kind": "keras",
                        "architecture": arch,
                        "keras_path": str(path) if path else None,
                        "threads": threads,
                    },
                    apis=("model.predict", "model(x)"),
                    labels={
                        "runtime": "keras",
                        "model": f"keras-{arch}",
                        "architecture": arch,
                        "precision": "fp32",
                        "device": "cpu",
                        "threads": threads,
                        "weights": f"loaded from {path}" if path else "fresh (build(arch), untrained)",
                    },
                    env=dict(KERAS_ENV),
                )
            )
    if any(p.spec.get("keras_path") is None for p in plans if p.spec["kind"] == "keras"):
        notes.append(
            "Keras is timed on the same architecture built with export.architectures.build(arch) and fresh "
            "weights (the trained .keras files are not shipped); latency does not depend on weight values."
        )
    if len(settings.keras_threads) == 1:
        notes.append(
            f"TensorFlow ran with {settings.keras_threads[0]} intra-op threads only (quick run); ONNX Runtime with "
            f"{', '.join(map(str, settings.ort_threads))}."
        )
    return plans


def measure_runtimes(
    models: list[BenchModel],
    settings: Settings,
    *,
    with_keras: bool = True,
    keras_models: dict[str, str] | None = None,
    with_cuda: bool | None = None,
    progress=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Start the workers, warm up, run the interleaved rounds; return the ``runtimes`` section of bench.json."""
    notes: list[str] = []
    skipped: list[dict] = []
    gpu = {"cuda_offered": False, "cuda_used": False, "note": ""}
    if with_cuda is None:
        with_cuda = cuda_offered()
    gpu["cuda_offered"] = bool(with_cuda)
    if not with_cuda:
        gpu["note"] = f"ONNX Runtime offers no {CUDA} here (CPU build or no GPU): no CUDA rows."
    plans = _plans(models, settings, with_keras=with_keras, keras_models=keras_models, with_cuda=with_cuda, notes=notes)
    log_dir = Path(tempfile.mkdtemp(prefix="fer_bench_workers_"))
    task = progress.add_task("starting runtimes", total=len(plans)) if progress else None
    try:
        live = _start(plans, log_dir, skipped, gpu, progress, task, log)
        configs = [_Config(p, api, b) for p in live for api in p.apis for b in settings.batch_sizes]
        rounds, timing_s = _interleave(configs, settings, progress, log)
        memory = {}
        for p in live:
            try:
                memory[p.name] = p.worker.request(op="memory")
            except WorkerError as err:
                memory[p.name] = {}
                notes.append(f"memory of {p.name} unavailable: {err}")
    finally:
        for p in plans:
            if p.worker is not None:
                p.worker.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    if with_cuda and not gpu["cuda_used"] and not gpu["note"]:
        gpu["note"] = f"ONNX Runtime lists {CUDA} but no session ran on it (see skipped): no CUDA rows."
    rows = []
    for c in configs:
        if c.error or not c.samples:
            skipped.append({"id": c.id, "reason": c.error or "no samples"})
            continue
        info = c.plan.worker.info if c.plan.worker else {}
        mem = memory.get(c.plan.name, {})
        after_import, after_load = info.get("rss_after_import_bytes"), info.get("rss_after_load_bytes")
        rows.append(
            {
                "id": c.id,
                **c.plan.labels,
                "provider": (info.get("providers") or ["?"])[0],
                "api": c.api,
                "batch_size": c.batch,
                **summarize(c.samples, c.batch),
                "calls_per_round": c.calls,
                "first_call_ms": c.first_call_s * 1e3,
                "import_s": info.get("import_s"),
                "load_s": info.get("load_s"),
                "tf_threads": info.get("tf_threads"),
                "model_rss_bytes": (after_load - after_import) if after_import and after_load else None,
                "peak_rss_bytes": mem.get("peak_rss_bytes"),
            }
        )
    return {
        "settings": settings.to_dict(),
        "protocol": (
            "per configuration: warm-up (>= 2 untimed calls), then interleaved rounds (every configuration once "
            "per round, round order rotated), `calls_per_round` back-to-back calls each, time.perf_counter around "
            "the inference call only; input: random uint8 faces scaled to [0, 1] (float32 NHWC), prepared "
            "beforehand. Each runtime configuration runs in its own process: load_s is model load/build time in "
            "that process, peak_rss_bytes its high-water RSS over all batch sizes (interpreter and runtime "
            "included), model_rss_bytes the RSS added by loading the model."
        ),
        "rounds": rounds,
        "timing_s": timing_s,
        "configurations": rows,
        "notes": notes,
        "skipped": skipped,
        "gpu": gpu,
    }


def _start(plans, log_dir, skipped, gpu, progress, task, log) -> list[_Plan]:
    """Start workers one after the other (so load times are not inflated by each other)."""
    live = []
    for plan in plans:
        if progress is not None:
            progress.update(task, description=f"loading {plan.name}")
        try:
            plan.worker = Worker(plan.spec, log_dir=log_dir, name=plan.name, env=plan.env)
            info = plan.worker.wait_ready()
        except WorkerError as err:
            skipped.append({"id": plan.name, "reason": str(err)})
            log(f"bench: skipped {plan.name}: {err}")
            if plan.worker is not None:
                plan.worker.close(kill=True)
                plan.worker = None
        else:
            if plan.labels["device"] == "cuda":
                if (info.get("providers") or [None])[0] != CUDA:
                    reason = f"asked for {CUDA}; the session runs on {info.get('providers')}"
                    skipped.append({"id": plan.name, "reason": reason})
                    gpu["note"] = f"CUDA requested but not used: {reason}."
                    plan.worker.close()
                    plan.worker = None
                else:
                    gpu["cuda_used"] = True
                    live.append(plan)
            else:
                live.append(plan)
        if progress is not None:
            progress.advance(task)
    return live


def _interleave(configs: list[_Config], settings: Settings, progress, log) -> tuple[int, float]:
    task = progress.add_task("warm-up", total=len(configs)) if progress else None
    for c in configs:
        try:
            w = c.plan.worker.request(op="warmup", mode=c.api, batch=c.batch, min_seconds=settings.warmup_seconds)
        except WorkerError as err:
            c.error = str(err)
            log(f"bench: {c.id} failed in warm-up: {err}")
        else:
            c.first_call_s = w["first_call_s"]
            c.calls = calls_per_round(
                w["estimate_s"], round_seconds=settings.round_seconds, max_calls=settings.max_calls_per_round
            )
        if progress is not None:
            progress.advance(task)
    active = [c for c in configs if c.error is None]
    if progress is not None:
        progress.update(task, description="timed rounds", completed=0, total=settings.min_rounds * len(active))
    start = time.perf_counter()
    rounds = 0
    while (
        active
        and rounds < settings.max_rounds
        and (rounds < settings.min_rounds or time.perf_counter() - start < settings.time_budget_s)
    ):
        if progress is not None and rounds >= settings.min_rounds:
            progress.update(task, total=(rounds + 1) * len(active))
        shift = rounds % len(active)
        for c in active[shift:] + active[:shift]:  # rotate who goes first
            if c.error is None:
                try:
                    c.samples += c.plan.worker.request(op="time", mode=c.api, batch=c.batch, calls=c.calls)["times"]
                except WorkerError as err:
                    c.error = str(err)
                    log(f"bench: {c.id} failed: {err}")
            if progress is not None:
                progress.advance(task)
        rounds += 1
    return rounds, time.perf_counter() - start

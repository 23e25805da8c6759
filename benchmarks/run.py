"""``run_benchmarks``: runtimes, photos end to end and accuracy in one run -> bench.json, REPORT.md, PNG plots.

The sections are measured one after the other (runtimes, then photos, then accuracy) so that they do not
compete for the CPU; within the runtime section the runtimes are interleaved (see ``runtimes.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from fer_sdk.errors import DependencyError, FerSdkError, InvalidInputError, ModelError
from fer_sdk.files import atomic_write_json, atomic_write_text, check_output_folder

from .catalog import BenchModel, resolve_models
from .machine import describe_machine
from .runtimes import ARCHITECTURES, Settings, measure_runtimes
from .targets import compute_ratios

SCHEMA_VERSION = 1
#: Faces the quick run evaluates ("a few hundred").
QUICK_ACCURACY_FACES = 300


def _check_keras_models(keras_models) -> dict[str, str]:
    if keras_models is None:
        return {}
    if not isinstance(keras_models, dict):
        raise InvalidInputError(
            f"keras_models={keras_models!r} must be a dict architecture -> .keras path "
            "(e.g. keras_models={'deep': 'runs/deep/best.keras'})"
        )
    out = {}
    for arch, path in keras_models.items():
        if arch not in ARCHITECTURES:
            raise InvalidInputError(
                f"keras_models: unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}"
            )
        if not Path(path).is_file():
            raise InvalidInputError(f"keras_models[{arch!r}]: {str(path)!r} is not a file; pass a saved .keras model")
        out[arch] = str(Path(path).resolve())
    return out


def _photo_model(models: list[BenchModel]) -> BenchModel:
    """The model the photo pipeline runs: the bundled default when measured, else INT8 deep, INT8, first."""
    from fer_sdk import registry

    with contextlib.suppress(ModelError):  # no manifest / no default: fall through to the preferences below
        default = registry.default_model_name()
        for m in models:
            if m.bundled and m.name == default:
                return m
    for want in (("deep", "int8"), (None, "int8"), ("deep", None)):
        for m in models:
            if want[0] in (None, m.architecture) and want[1] in (None, m.precision):
                return m
    return models[0]


@contextlib.contextmanager
def _progress(enabled: bool):
    """The run's one bar (``fer_sdk.progress``: stderr, a terminal only, off with ``--quiet``)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fer_sdk.progress import bar

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with bar(*columns, enabled=enabled) as progress:
        yield progress


def run_benchmarks(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    data: str | os.PathLike | None = None,
    models: list[str | os.PathLike] | None = None,
    with_keras: bool = True,
    log: Callable[[str], None] = print,
    keras_models: dict[str, str | os.PathLike] | None = None,
    split: str = "PublicTest",
    photos: list[str | os.PathLike] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Measure and write ``bench.json``, ``REPORT.md`` and PNG plots into ``out``; return their paths.

    Args:
        quick: CI smoke run (< 1 min on 2 cores): batch sizes 1 and 64, 2 rounds, Keras on one architecture.
        data: FER2013 CSV (.csv/.csv.gz) or image-folder release for the accuracy section (``split``);
            ``None`` skips it.
        models: bundled model names and/or paths of exported ``.onnx`` files (default: every bundled model).
        with_keras: also time Keras/TensorFlow (needs the train extra), built with ``build(arch)`` and fresh
            weights unless ``keras_models={"deep": "best.keras"}`` names trained files.
        photos: photos for the end-to-end section (default: the bundled samples).
        progress: show a rich progress bar on stderr.
    """
    start = time.perf_counter()
    out = check_output_folder(out, option="--out")  # before minutes of timing, not after
    keras_paths = _check_keras_models(keras_models)
    bench_models = resolve_models(models)
    faces = None
    if data is not None:  # read (and validate) the data before minutes of timing, not after
        from fer_sdk.data import load_split

        faces = load_split(data, split)
    settings = Settings.quick() if quick else Settings.full()
    machine = describe_machine()
    notes: list[str] = []
    log(f"bench: {len(bench_models)} model(s): {', '.join(m.name for m in bench_models)}; writing to {out}")
    with _progress(progress) as bar:
        runtimes = measure_runtimes(
            bench_models, settings, with_keras=with_keras, keras_models=keras_paths, progress=bar, log=log
        )
        from .photos import measure_photos

        photo_model = _photo_model(bench_models)
        try:
            photo_section = measure_photos(photo_model.path, photos=photos, quick=quick, progress=bar)
        except FerSdkError as err:  # an unreadable photo or a broken detector must not discard the timings
            log(f"bench: photo pipeline failed: {err}")
            photo_section = {"skipped": f"failed: {err}", "items": []}
        photo_section["model"] = photo_model.name
        if data is None:
            accuracy = {"skipped": "no FER2013 data given (pass data= / --data fer2013.csv.gz to measure accuracy)"}
        else:
            from .accuracy import measure_accuracy

            accuracy = measure_accuracy(
                bench_models,
                data,
                split=split,
                limit=QUICK_ACCURACY_FACES if quick else None,
                faces=faces,
                progress=bar,
            )
    bench = {
        "schema_version": SCHEMA_VERSION,
        "quick": quick,
        "wall_s": None,
        "machine": machine,
        "models": [m.to_dict() for m in bench_models],
        "runtimes": runtimes,
        "ratios": compute_ratios(runtimes["configurations"]),
        "gpu": runtimes["gpu"],
        "photos": photo_section,
        "accuracy": accuracy,
        "notes": notes,
        "files": {},
    }
    from .plots import write_plots

    try:
        bench["files"] = write_plots(bench, out)
    except DependencyError as err:
        notes.append(f"No plots: {err}")
    bench["files"].update({"json": "bench.json", "report": "REPORT.md"})
    bench["wall_s"] = time.perf_counter() - start
    from .report import render_report

    paths = [
        atomic_write_json(out / "bench.json", bench),
        atomic_write_text(out / "REPORT.md", render_report(bench)),
    ]
    paths += [out / name for key, name in bench["files"].items() if name.endswith(".png")]
    log(f"bench: done in {bench['wall_s']:.0f} s")
    return paths

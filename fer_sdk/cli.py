"""The ``fer-sdk`` command line: a thin Typer layer over the library.

Exit codes: 0 success; 1 other SDK or file-system error; 2 invalid input or usage; 3 invalid image; 4 model error;
5 dataset error; 6 missing dependency; 8 some inputs of a batch failed (the others were processed; when
every input fails, the exit code is theirs; with ``--ray``, always 8); 130 interrupted; 141 the reader of
stdout went away (``| head``).
``--debug`` shows the traceback instead of the one-line message.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import TRAIN_EXTRA_HINT, DependencyError, FerSdkError, InvalidInputError
from .export.config import ARCHITECTURES, AUGMENT_LEVELS, CLASS_WEIGHTINGS, OPTIMIZERS, PRECISIONS
from .rows import FORMATS

PARTIAL_FAILURE_EXIT = 8

app = typer.Typer(
    name="fer-sdk",
    help="Facial expression recognition on the edge: classify, evaluate, train, export, benchmark, run in a browser.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _render_flags_as_flags() -> None:
    """Typer >= 0.2x prints a ``<bool>`` type beside every on/off flag in ``--help``; show flags as flags. Done
    for this CLI's process only, and left alone on Typer versions without the hook."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None or getattr(original, "_fer_sdk", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else original(self, ctx)

    display_type_rich._fer_sdk = True  # type: ignore[attr-defined]  # a marker attribute on a plain function
    option.display_type_rich = display_type_rich


_render_flags_as_flags()
#: Global options accepted anywhere on the command line (``fer-sdk predict x.jpg --debug`` too).
GLOBAL_FLAGS = ("--debug", "--quiet", "-q", "--version")

_state = {"debug": False, "quiet": False}


def _print_version(value: bool) -> None:
    if value:
        from .version import __version__

        typer.echo(f"fer-sdk {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Print only results and errors: no progress bars, summary or warnings."),
    ] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    import logging

    from .progress import set_debug, set_quiet

    logging.getLogger("fer_sdk").setLevel(logging.ERROR if quiet else logging.NOTSET)
    set_quiet(quiet)
    set_debug(debug)


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move ``--debug`` / ``--version`` given after the subcommand to the front, where Typer reads them
    (after a ``--`` everything is left as is: a file may be called ``--debug``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in argv[:end] if a not in GLOBAL_FLAGS]
    if "--version" in flags:
        return ["--version"]
    return flags + rest + argv[end:]


def _info(message: str) -> None:
    """A progress line for people, on stderr; ``--quiet`` drops it."""
    if not _state["quiet"]:
        typer.echo(message, err=True)


def _err(message: str) -> None:
    typer.echo(f"fer-sdk: error: {message}", err=True)


@contextlib.contextmanager
def _errors():
    """Turn SDK errors into one line on stderr and the error's exit code (traceback with --debug)."""
    try:
        yield
    except FerSdkError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _err(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None
    except (
        BrokenPipeError
    ):  # `fer-sdk predict ... | head`: the reader has all it wanted; stop quietly, as SIGPIPE would
        import os
        import sys

        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        raise typer.Exit(141) from None
    except Exception as exc:  # noqa: BLE001  (last resort: one line instead of a traceback; --debug shows it)
        if _state["debug"]:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.filename:  # disk full, permission denied, a folder where a file goes
            _err(f"{exc.filename}: {exc.strerror or exc}; check the path, its permissions and the free disk space")
        else:
            _err(f"{type(exc).__name__}: {exc} (unexpected; rerun with --debug for the traceback and report it)")
        raise typer.Exit(1) from None


# The choices of the CLI's enum options, written out so type checkers know the members (``Optimizer.sgd``) and
# checked against the recipe's own tuples when this module loads, so the CLI cannot drift from them.
class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Arch(str, Enum):
    shallow = "shallow"
    deep = "deep"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class ClassWeighting(str, Enum):
    none = "none"
    sqrt = "sqrt"
    balanced = "balanced"


class Precision(str, Enum):
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"


class ExportFormat(str, Enum):
    onnx = "onnx"
    tflite = "tflite"


class AugLevel(str, Enum):
    strong = "strong"
    light = "light"
    flip = "flip"


def _check_choices(choices: type[Enum], values: tuple[str, ...]) -> None:
    """``choices`` has exactly ``values``, in order (the order ``--help`` lists them in)."""
    members = tuple(m.value for m in choices)
    if members != tuple(values):
        raise RuntimeError(f"fer_sdk.cli.{choices.__name__} lists {members}, the recipe {tuple(values)}: update it")


for _enum, _values in (
    (OutputFormat, FORMATS),
    (Arch, ARCHITECTURES),
    (Optimizer, OPTIMIZERS),
    (ClassWeighting, CLASS_WEIGHTINGS),
    (Precision, PRECISIONS),
    (AugLevel, AUGMENT_LEVELS),
):
    _check_choices(_enum, _values)


ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Bundled model name (see `fer-sdk models`) or a path to an exported .onnx."),
]
ProvidersOpt = Annotated[
    str | None,
    typer.Option(
        "--providers",
        help="'auto' (CUDA when available), or comma-separated ONNX Runtime providers. Default: CPU.",
    ),
]


def _providers(value: str | None):
    if value is None or value == "auto":
        return value
    return [p.strip() for p in value.split(",") if p.strip()]


def _default_model() -> str:
    from .registry import default_model_name

    return default_model_name()


# --------------------------------------------------------------------------------------------- predict
@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders of images, or video files.")],
    model: ModelOpt = "",
    fmt: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="table (for people), json (one array), jsonl (one object per line) or csv. Every "
            "format has the same rows: one per face (per frame for videos); an input with no face or an error gets "
            "one row.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Same as --format csv.")] = False,
    annotate: Annotated[
        Path | None, typer.Option("--annotate", help="Write annotated copies of the images into this folder.")
    ] = None,
    save_crops: Annotated[
        Path | None,
        typer.Option("--save-crops", help="Save every face as the model saw it cut (PNG) into this folder."),
    ] = None,
    providers: ProvidersOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Faces per inference call.")] = 64,
    detector: Annotated[
        str | None,
        typer.Option(
            help="'yunet' (default: the bundled YuNet, with scores and landmarks), 'haar' (OpenCV's cascade), or a "
            "path to a YuNet .onnx file."
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Drop faces the detector scores below this (YuNet; default 0.6)."),
    ] = None,
    min_face: Annotated[
        int | None,
        typer.Option(min=0, help="Drop faces smaller than this many pixels (default: 0 for YuNet, 30 for Haar)."),
    ] = None,
    align: Annotated[
        bool,
        typer.Option(
            "--align/--no-align",
            help="Rotate and scale faces onto the model's training framing using "
            "the landmarks (default), or cut the box.",
        ),
    ] = True,
    face_margin: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=2.0,
            help="Grow each face's frame (--align) or box (--no-align) by this "
            "fraction per side. Default: the model's training framing.",
        ),
    ] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Average each face with its mirror image.")] = False,
    every: Annotated[int, typer.Option(min=1, help="Videos: classify every N-th frame.")] = 1,
    fps: Annotated[float | None, typer.Option(help="Videos: sample this many frames per second.")] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Refuse photos and video frames larger than this many pixels (default "
            "50,000,000: a guard against decompression bombs).",
        ),
    ] = None,
    smooth: Annotated[
        float | None, typer.Option(help="Videos: average each tracked face's probabilities over the last SECONDS.")
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(
            help="Videos: write a JSON summary (faces seen, dominant emotion per track, share "
            "of face rows per emotion) to this file."
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run on Ray: 'local' (this machine) or a cluster address (HOST:6379, ray://HOST:10001, auto); "
            "needs --output DIR.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write results to this file instead of stdout (without --format, a .csv, .json or .jsonl name sets "
            "the format; with --ray: a new folder of Parquet files).",
        ),
    ] = None,
) -> None:
    """Detect faces in photos (or videos) and classify their expressions."""
    chosen = {f for f, on in (("json", json_out), ("csv", csv_out)) if on}
    if fmt is not None:
        chosen.add(fmt.value)
    if len(chosen) > 1:
        _err(f"choose one output format; got {', '.join(sorted(chosen))} (--format, --json and --csv)")
        raise typer.Exit(2)
    with _errors():
        from .cli_predict import run_predict

        outcome = run_predict(
            paths,
            model=model or _default_model(),
            fmt=chosen.pop() if chosen else _format_of(output, ray),
            annotate=annotate,
            providers=_providers(providers),
            batch_size=batch_size,
            detector=detector,
            min_score=min_score,
            min_face=min_face,
            align=align,
            face_margin=face_margin,
            flip_tta=tta,
            every=every,
            fps=fps,
            ray=ray,
            output=output,
            smooth=smooth,
            summary=summary,
            max_pixels=max_pixels,
            save_crops=save_crops,
        )
    # a run with errors ends on its error line; a Ray run always says where its Parquet went
    if outcome.summary and (not outcome.failed or outcome.total is None) and not _state["quiet"]:
        typer.echo(f"fer-sdk: {outcome.summary}", err=True)
    if outcome.all_failed:
        _err(f"none of the {outcome.total} input(s) could be processed (each error is in the output or above)")
        raise typer.Exit(outcome.error_code)
    if outcome.failed:
        done = (
            f"the other {outcome.total - outcome.failed} were processed"
            if outcome.total
            else "the others were processed"
        )
        _err(f"{outcome.failed} input(s) could not be processed (each error is in the output or above); {done}")
        raise typer.Exit(PARTIAL_FAILURE_EXIT)


#: Output file names whose extension names their format (``-o rows.csv`` without ``--format``).
FORMAT_OF_SUFFIX = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format_of(output: Path | None, ray: str | None) -> str:
    """The format when none is given: the output file's extension's, else the table."""
    if output is None or ray is not None:
        return "table"
    return FORMAT_OF_SUFFIX.get(output.suffix.lower(), "table")


# ---------------------------------------------------------------------------------------------- models
models_app = typer.Typer(
    help="The bundled models: list them (no subcommand), or build and ship new ones (needs the train extra for "
    "ship, average and recover).",
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the bundled models with size, sha256, parameters and accuracy (or run a subcommand)."""
    if ctx.invoked_subcommand is None:
        _list_models(json_out)


@models_app.command("list")
def models_list(json_out: JsonOpt = False) -> None:
    """List the bundled models with size, sha256, parameters and accuracy."""
    _list_models(json_out)


def _list_models(json_out: bool) -> None:
    with _errors():
        from .registry import default_model_name, list_models

        specs = list_models()
        default = default_model_name() if specs else None
        rows: list[dict[str, Any]] = [
            {
                "name": s.name,
                "default": s.name == default,
                "architecture": s.architecture,
                "precision": s.precision,
                "parameters": s.parameters,
                "size_bytes": s.size_bytes,
                "sha256": s.sha256,
                "publictest_accuracy": (s.metrics.get("PublicTest") or {}).get("accuracy"),
                "publictest_macro_f1": (s.metrics.get("PublicTest") or {}).get("macro_f1"),
                "card": str(s.path.parent / s.card) if s.card else None,
            }
            for s in specs
        ]
        if json_out:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("no bundled models are installed")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="fer-sdk bundled models (accuracy: FER2013 PublicTest)")
        # Names are what --model takes: never wrapped or cut, even in an 80-column pipe; sha256 is cut last.
        longest = max((len(r["name"]) + (10 if r["default"] else 0) for r in rows), default=4)
        table.add_column("name", no_wrap=True, min_width=longest)
        for col in ("arch", "precision", "params", "size"):
            table.add_column(col)
        table.add_column("accuracy", no_wrap=True, min_width=7)
        table.add_column("macro-F1")
        table.add_column("sha256", overflow="ellipsis", no_wrap=True)
        for r in rows:
            acc, f1 = r["publictest_accuracy"], r["publictest_macro_f1"]
            table.add_row(
                r["name"] + (" (default)" if r["default"] else ""),
                r["architecture"],
                r["precision"],
                f"{r['parameters']:,}",
                f"{r['size_bytes'] / 1e6:.1f} MB",
                "-" if acc is None else f"{100 * acc:.2f} %",
                "-" if f1 is None else f"{f1:.3f}",
                r["sha256"][:12] + "…",
            )
        console = Console()
        Console(width=max(console.width, 110) if not console.is_terminal else None).print(table)  # pipes: 110


def _pairs(values: list[str], option: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidInputError(f"{option} {item!r} must be KEY=VALUE, e.g. {option} {example}")
        out.append((key, value))
    return out


@models_app.command("ship")
def models_ship(
    into: Annotated[
        Path,
        typer.Option(
            help="The models folder to write: a checkout's fer_sdk/models (never "
            "guessed, so an installed package is not rewritten by accident)."
        ),
    ],
    data: Annotated[Path | None, typer.Option(help="FER2013 CSV (.csv.gz) with Training and PublicTest.")] = None,
    run: Annotated[list[str] | None, typer.Option(help="ARCH=RUN_DIR, e.g. deep=runs/deep; repeat per model.")] = None,
    ensemble: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=MEMBER:WEIGHT,MEMBER:WEIGHT over bundled models, e.g. "
            "ensemble-int8=deep-int8:0.7,shallow-int8:0.3 (built after the runs)."
        ),
    ] = None,
    default: Annotated[str | None, typer.Option(help="The model Classifier() loads by default.")] = None,
    litert: Annotated[
        list[str] | None,
        typer.Option(help="Bundle ARCH-int8.tflite (LiteRT INT8) for the bundled fp32 model ARCH, parity-checked."),
    ] = None,
    requantize: Annotated[
        list[str] | None,
        typer.Option(help="Quantize the bundled fp32 model ARCH (e.g. deep) to INT8 again and rebuild its ensembles."),
    ] = None,
    table: Annotated[bool, typer.Option("--table", help="Print the README's models table of INTO and exit.")] = False,
) -> None:
    """Bundle trained runs (or re-quantize bundled models) into a models folder: ONNX, INT8, cards, manifest."""
    with _errors():
        if table:
            from .export.ship import models_table

            manifest = into / "manifest.json"
            if not manifest.is_file():
                raise InvalidInputError(f"--into {into}: no manifest.json there; pass a models folder")
            typer.echo(models_table(json.loads(manifest.read_text())))
            return
        runs = dict(_pairs(run or [], "--run", "deep=runs/deep"))
        ensembles: dict[str, list[str]] = {}
        for name, members in _pairs(ensemble or [], "--ensemble", "ensemble-int8=deep-int8:0.7,shallow-int8:0.3"):
            parts = members.split(",")
            if not all(":" in part and part.split(":", 1)[0] for part in parts):
                raise InvalidInputError(
                    f"--ensemble {name}={members!r}: members must be MEMBER:WEIGHT, e.g. deep-int8:0.7,shallow-int8:0.3"
                )
            if name in ensembles:
                raise InvalidInputError(f"--ensemble {name!r} is given twice")
            ensembles[name] = [part.replace(":", "=", 1) for part in parts]
        if data is None:
            raise InvalidInputError("models ship needs --data FER2013.csv.gz (Training and PublicTest)")
        if runs or requantize or litert:  # exporting and quantizing need TensorFlow / ONNX tools; ensembles only onnx
            _require_train_extra()
        from .export.ship import requantize as run_requantize
        from .export.ship import ship

        if litert:
            if runs or ensembles or requantize:
                raise InvalidInputError("--litert ARCH takes no --run, --ensemble or --requantize; run them separately")
            from .export.ship import ship_litert

            ship_litert(list(litert), data, models_dir=into, log=_info)
            return
        if requantize:
            if runs or ensembles:
                raise InvalidInputError("--requantize ARCH takes no --run or --ensemble; run them separately")
            run_requantize(list(requantize), data, models_dir=into, log=_info)
            return
        if not runs and not ensembles:
            raise InvalidInputError("pass at least one --run ARCH=RUN_DIR or --ensemble (or --requantize, --table)")
        ship(runs, data, models_dir=into, default=default, ensembles=ensembles, log=_info)


@models_app.command("ensemble")
def models_ensemble(
    member: Annotated[list[str], typer.Option(help="MODEL=WEIGHT: a bundled name or .onnx path; repeat per member.")],
    out: Annotated[Path, typer.Option(help="The ensemble .onnx to write (atomically).")],
) -> None:
    """Average exported models' probabilities into one ONNX file (parity-checked against its members)."""
    with _errors():
        from .export.ensemble import build_ensemble

        build_ensemble(list(member), out, log=_info)


@models_app.command("average")
def models_average(
    data: Annotated[Path, typer.Option(help="FER2013 CSV / folder (Training + PublicTest).")],
    run: Annotated[Path, typer.Option(help="A run trained with --snapshots.")],
    epochs: Annotated[str, typer.Option(help="Which epochs' weights to average, e.g. 20-32.")],
    out: Annotated[Path, typer.Option(help="A new run folder for the averaged network.")],
    bn_faces: Annotated[int, typer.Option(min=1, help="Training faces for the batch-norm statistics.")] = 10000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Average the weights of a run's epochs (SWA) into a new run folder (then `fer-sdk export` it)."""
    with _errors():
        from .export.average import parse_epochs

        chosen = parse_epochs(epochs)
        _require_train_extra()
        from .export.average import average_run
        from .export.config import invocation
        from .export.train import load_splits

        average_run(run, chosen, out, load_splits(data), bn_faces=bn_faces, seed=seed, log=_info, command=invocation())


@models_app.command("recover")
def models_recover(
    model: Annotated[str, typer.Argument(help="A bundled fp32 model name (deep, shallow) or an fp32 ONNX export.")],
    data: Annotated[Path, typer.Option(help="FER2013 CSV / folder (Training faces).")],
    out: Annotated[Path, typer.Option(help="The .keras file to write (atomically).")],
    faces: Annotated[int, typer.Option(min=1, help="Training faces for the batch-norm statistics.")] = 6000,
) -> None:
    """Rebuild a .keras network from an fp32 ONNX model this project exported (to fine-tune it again)."""
    with _errors():
        from .registry import resolve_model

        model_path, _ = resolve_model(model)  # bundled names and paths; a missing file is a ModelError
        _require_train_extra()
        from .data import load_split
        from .export.recover import recover_network
        from .files import atomic_path

        x, _ = load_split(data, "Training")
        net, diff = recover_network(model_path, x[:faces])
        with atomic_path(out) as tmp:
            net.save(tmp)
        _info(f"wrote {out} (max |diff| vs {model}: {diff:.1e})")


# ------------------------------------------------------------------------------------------------ eval
@models_app.command("gpu-job")
def models_gpu_job(
    pixels: Annotated[Path, typer.Option(help="Raw uint8 faces (Training then PublicTest), xz-compressed.")],
    labels: Annotated[Path, typer.Option(help="npz with y_train and y_val.")],
    out: Annotated[Path, typer.Option(help="Folder for results.tar.partNN.")],
    work: Annotated[Path, typer.Option(help="Folder for the runs.")] = Path("/tmp/fer_runs"),
    budget: Annotated[float, typer.Option(help="Training seconds per run.")] = 400.0,
    deadline: Annotated[
        float | None, typer.Option(help="Kill workers after this many seconds (default: budget + 120).")
    ] = None,
    runs: Annotated[str | None, typer.Option(help="Comma-separated recipes (default: all).")] = None,
    limit: Annotated[int, typer.Option(help="Train on the first N faces only (smoke tests).")] = 0,
    override: Annotated[str, typer.Option(help="JSON of TrainConfig fields applied to every run.")] = "{}",
    mem_fraction: Annotated[str, typer.Option(help="XLA_PYTHON_CLIENT_MEM_FRACTION per worker.")] = "0.2",
    fit: Annotated[bool, typer.Option("--fit", help="Keras model.fit instead of the on-device loop.")] = False,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Train several recipes at once on a lent GPU machine (Keras 3 on JAX) inside a time budget."""
    with _errors():
        from .export.gpu_job import RECIPES, GpuJob, run_job
        from .export.gpu_job import worker as run_worker

        job = GpuJob(
            pixels,
            labels,
            out,
            work,
            budget,
            deadline,
            tuple(r for r in runs.split(",") if r) if runs else tuple(RECIPES),
            limit,
            override,
            mem_fraction,
            fit,
        )
        if worker:
            job.check()
            run_worker(job, worker)
            return
        run_job(job, log=lambda line: typer.echo(line, err=True))


@app.command("eval")
def eval_cmd(
    data: Annotated[
        Path, typer.Option(help="FER2013 Kaggle CSV (.csv, .csv.gz, Kaggle's .tar.gz / .zip) or image-folder release.")
    ],
    split: Annotated[
        str, typer.Option(help="Training, PublicTest or PrivateTest (aliases: train, test = PublicTest only, private).")
    ] = "PublicTest",
    model: ModelOpt = "",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    providers: ProvidersOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Average each face with its mirror image.")] = False,
) -> None:
    """Accuracy, macro-F1, per-class report and confusion matrix of a model on a FER2013 split."""
    with _errors():
        from .evaluate import evaluate, render_report

        report = evaluate(
            data,
            split=split,
            model=model or _default_model(),
            providers=_providers(providers),
            batch_size=batch_size,
            flip_tta=tta,
        )
        typer.echo(json.dumps(report, indent=2) if json_out else render_report(report))


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train(
    arch: Annotated[Arch, typer.Option(help="Which CNN to train.")],
    data: Annotated[
        Path, typer.Option(help="FER2013 Kaggle CSV (.csv, .csv.gz, Kaggle's .tar.gz / .zip) or image-folder release.")
    ],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints every epoch, metrics.json at the end.")] = Path(
        "runs/latest"
    ),
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Default: 60 shallow, 120 deep; with --resume, the run's.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 0.01 sgd, 0.001 adamw).")] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="SGD with Nesterov momentum, or AdamW.")] = Optimizer.sgd,
    weight_decay: Annotated[
        float | None, typer.Option(help="Decoupled weight decay (default 5e-4 sgd, 0.05 adamw).")
    ] = None,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Linear warm-up epochs before the cosine decay.")] = 3,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.1,
    class_weighting: Annotated[
        ClassWeighting | None, typer.Option(help="Loss weights against class imbalance.")
    ] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment")] = True,
    aug_level: Annotated[
        AugLevel | None,
        typer.Option(help="strong: geometry + contrast + erasing; light: flip + small geometry; flip: mirror only."),
    ] = None,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Dropout after each conv block.")] = 0.25,
    fc_dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Dropout after the hidden FC layers.")] = 0.5,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this .keras network's weights (fine-tuning).", exists=True)
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    val_split: Annotated[
        float | None,
        typer.Option(min=0.01, max=0.5, help="Select on this fraction of Training instead of PublicTest."),
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds: shorten the schedule so training ends in time.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after its last epoch.")] = False,
    precision: Annotated[
        Precision | None,
        typer.Option(help="mixed_bfloat16: ~2x faster on CPUs with AVX512-BF16; saved models stay float32."),
    ] = None,
    snapshots: Annotated[
        bool, typer.Option("--snapshots", help="Keep every epoch's network in OUT/snapshots (for weight averaging).")
    ] = False,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Distil from this model (bundled name or .onnx): targets mix its flip-averaged probabilities."
        ),
    ] = None,
    teacher_weight: Annotated[
        float | None, typer.Option(help="Share of the teacher's probabilities in each target, in (0, 1] (default 0.5).")
    ] = None,
) -> None:
    """Train a CNN on FER2013 (GPU when the Keras backend sees one, CPU otherwise)."""
    with _errors():
        from .export.config import TrainConfig, require_run, resumed_epochs

        if resume:
            require_run(out)
            if epochs is None:
                epochs = resumed_epochs(out)  # keep the run's schedule, not the architecture's default
        if teacher is not None and not teacher.strip():
            raise InvalidInputError(
                f"--teacher {teacher!r} names no model; pass a bundled name (e.g. ensemble-int8) or a .onnx file"
            )
        if teacher_weight is not None and teacher is None:
            raise InvalidInputError(
                "--teacher-weight needs --teacher (the model to distil from); add e.g. --teacher ensemble-int8"
            )
        cfg = TrainConfig(  # validates the recipe before TensorFlow is imported
            arch=arch.value,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer.value,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            class_weighting=(class_weighting or ClassWeighting.sqrt).value,
            augment=augment,
            augment_level=(aug_level or AugLevel.strong).value,
            dropout=dropout,
            fc_dropout=fc_dropout,
            init_from=str(init_from) if init_from else None,
            seed=seed,
            time_budget_s=time_budget,
            snapshots=snapshots,
            precision=(precision or Precision.float32).value,
            teacher=teacher,
            teacher_weight=0.5 if teacher_weight is None else teacher_weight,
        )
        if teacher:
            from .export.distill import open_teacher

            open_teacher(teacher)  # a missing or foreign teacher fails now, not after TensorFlow has loaded
        _require_train_extra()
        from .export.train import load_splits
        from .export.train import train as run_training

        run_training(cfg, load_splits(data, val_split=val_split, seed=seed), out, resume=resume, log=_info)
        typer.echo(str(out / "metrics.json"))


# ---------------------------------------------------------------------------------------------- export
@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A training run folder or a .keras file.", exists=True)],
    out: Annotated[Path, typer.Option(help="The .onnx (or, with --format tflite, .tflite) file to write.")],
    data: Annotated[
        Path, typer.Option(help="FER2013 CSV / folder: faces for the parity check (and INT8 calibration).")
    ],
    int8: Annotated[bool, typer.Option("--int8", help="Also write an INT8 (static QDQ) model next to --out.")] = False,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration faces (FER2013 CSV / folder); default: --data Training.")
    ] = None,
    calibration_size: Annotated[
        int | None, typer.Option(min=1, help="Training faces that calibrate INT8 (>= 500; default 1000). Needs --int8.")
    ] = None,
    opset: Annotated[int, typer.Option(min=13, help="ONNX opset.")] = 17,
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="onnx (tf2onnx) or tflite (LiteRT: float32, with --int8 also INT8)."),
    ] = ExportFormat.onnx,
) -> None:
    """Convert a trained Keras model to ONNX with tf2onnx (parity-checked), optionally quantize to INT8."""
    with _errors():
        _require_train_extra()
        from .export.pipeline import export_model

        for path in export_model(
            source,
            out,
            data=data,
            int8=int8,
            calibration=calibration,
            calibration_size=calibration_size,
            opset=opset,
            fmt=fmt.value,
            log=_info,
        ):
            typer.echo(str(path))


# ----------------------------------------------------------------------------------------------- bench
@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Folder for the JSON, Markdown report and plots.")] = Path("reports/bench"),
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run in under a minute.")] = False,
    data: Annotated[Path | None, typer.Option(help="FER2013 CSV / folder for the accuracy part (PublicTest).")] = None,
    models_: Annotated[
        str | None, typer.Option("--models", help="Comma-separated bundled names (default: all).")
    ] = None,
    keras: Annotated[
        bool, typer.Option("--keras/--no-keras", help="Also time Keras/TensorFlow (needs the train extra).")
    ] = True,
    table_from: Annotated[
        Path | None,
        typer.Option("--table-from", help="Print the README's performance table from this bench.json; no run."),
    ] = None,
) -> None:
    """Latency, throughput and accuracy benchmarks; writes JSON, Markdown and PNG plots."""
    with _errors():
        if table_from is not None:
            from .benchmarks.readme import read_readme_table

            typer.echo(read_readme_table(table_from), nl=False)
            return
        from .benchmarks.run import run_benchmarks

        paths = run_benchmarks(
            out,
            quick=quick,
            data=data,
            models=[m.strip() for m in models_.split(",")] if models_ else None,
            with_keras=keras,
            log=_info,
        )
        for p in paths:
            typer.echo(str(p))


@app.command()
def web(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Bundled ONNX model name or .onnx file (default: the default).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default: only this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765,
    export_to: Annotated[
        Path | None,
        typer.Option("--export", help="Write the page, runtime and models into this new folder instead of serving."),
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    measure: Annotated[
        Path | None,
        typer.Option(help="Measure the page in headless Chromium instead: browser.json + screenshot.png here."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="With --measure: warm re-runs of the photos.")] = 10,
    chromium: Annotated[
        str | None, typer.Option(help="With --measure: the Chromium executable (default: $FER_SDK_CHROMIUM, PATH).")
    ] = None,
    photos: Annotated[
        list[Path] | None, typer.Argument(help="With --measure: photos to feed the page (default: the samples).")
    ] = None,
) -> None:
    """Serve the in-browser page: photos or the webcam, detected and classified on the user's machine."""
    with _errors():
        from . import webapp

        if measure is not None:
            from .benchmarks.web import measure as measure_page
            from .benchmarks.web import summary_line

            report, path = measure_page(measure, photos, repeats=repeats, model=model, chromium=chromium)
            _info(summary_line(report))
            typer.echo(str(path))
            return
        if photos:
            raise InvalidInputError("photos are only taken with --measure; open the page and choose them there")
        if export_to is not None:
            typer.echo(str(webapp.export_site(export_to, model)))
            return
        with webapp.serve(model, host=host, port=port) as server:
            index = server.site.index
            _info(
                f"fer-sdk web: {index['classifier']['name']} + YuNet on onnxruntime-web "
                f"{index['runtime']['onnxruntime_web']}; photos stay in the browser. Ctrl-C stops."
            )
            typer.echo(server.url)
            if open_browser:
                import webbrowser

                webbrowser.open(server.url)
            try:
                server.serve_forever()
            except KeyboardInterrupt:  # the normal way to stop a server: exit 0
                _info("fer-sdk web: stopped")


def _require_train_extra() -> None:
    import os

    if not _state["debug"]:  # TensorFlow's C++ log lines after start-up ("failed call to cuInit" on a CPU machine)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from .progress import native_stderr_to_file

        with native_stderr_to_file(not _state["debug"]):
            import tensorflow  # noqa: F401
            import tf2onnx  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            f"training and export need the train extra ({exc.name} is missing): {TRAIN_EXTRA_HINT}"
        ) from None
    from .runtime import import_onnxruntime

    import_onnxruntime()


def run_as(command: list[str], argv: list[str] | None = None) -> None:
    """``python -m fer_sdk.export.NAME ARGS`` runs ``fer-sdk models NAME ARGS`` (older recorded commands keep
    working); exits like the console script."""
    import sys

    app(args=hoist_global_flags([*command, *(sys.argv[1:] if argv is None else argv)]), prog_name="fer-sdk")


def main() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):  # non-UTF-8 file names print as their bytes, not as a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    app(args=hoist_global_flags(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""Batch inference on Ray Data: many machines, one ``Classifier`` per actor, Parquet out.

    >>> import ray
    >>> from fer_sdk.ray_batch import read_images, predict_dataset
    >>> ray.init()                                          # or ray.init("ray://head:10001")
    >>> ds = predict_dataset(read_images(["s3://bucket/photos/"]), concurrency=8, batch_size=64)
    >>> ds.write_parquet("s3://bucket/emotions/")

:class:`FerPredictor` is the callable class for ``Dataset.map_batches``: each actor builds one
``Classifier`` and classifies the faces of a whole batch of photos together (``analyze_many``), exactly
as the single-process ``fer-sdk predict`` does, so the results are the same. Bad files become rows with
an ``error`` message, never a failed job. :func:`run_ray_predict` is ``fer-sdk predict --ray``.

Ray is imported only inside the functions that need it (``pip install "fer-sdk[ray]"``);
``FerPredictor`` itself needs no Ray (only pyarrow) and can be called on a plain dict of numpy arrays.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DependencyError, FerSdkError, InvalidImageError, InvalidInputError
from .photos import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, analyze_each, visible_files
from .progress import is_debug, native_stderr_to_file
from .rows import ROW_FIELDS, arrow_schema, empty_row, face_row

_INSTALL_HINT = 'pip install "fer-sdk[ray]"'
#: Columns ``FerPredictor`` writes (``fer_sdk.rows.ROW_FIELDS``); every other input column except ``bytes`` and
#: ``path`` (which becomes ``source``) is passed through, repeated on each face's row.
RESULT_COLUMNS = ROW_FIELDS
logger = logging.getLogger(__name__)
# Reading and writing files is I/O: those tasks ask for no CPU, so actors may take every CPU of the cluster
# (with the default 1 CPU per task, `concurrency` equal to the CPU count starves the reads and hangs).
_IO_CPUS = 0


def import_ray():
    """Return the ``ray`` module (with ``ray.data``), or raise ``DependencyError`` with the pip command."""
    try:
        import ray
        import ray.data  # ray without the [data] extra lacks pyarrow and pandas
    except ImportError as err:
        raise DependencyError(
            f"batch inference on Ray needs Ray Data ({err.name or 'ray'} is missing): {_INSTALL_HINT}"
        ) from None
    return ray


def quiet_ray() -> None:
    """Keep Ray's ~30 lines per run (start-up, execution plan, progress, a C++ actor-restart warning) off the
    terminal: its loggers at ERROR, Ray Data's progress off, the driver's C++ core worker at FATAL. The CLI's
    ``--debug`` skips this."""
    import ray.data

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # read when the driver's core worker starts
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = False


def _is_uri(path: str) -> bool:
    return "://" in path


class FerPredictor:
    """Callable class for ``ray.data.Dataset.map_batches(FerPredictor, batch_format="numpy", ...)``.

    Input batch: a ``bytes`` column (encoded images; ``None`` rows are read from ``path``) and/or a ``path``
    column (local paths or ``pyarrow.fs`` URIs such as ``s3://``). Output: a ``pyarrow.Table`` with the rows
    every pipeline writes (``fer_sdk.rows.ROW_FIELDS``): one per face, in ``Classifier.analyze``'s order, and one
    for a photo without faces or one that failed (``error`` set); ``source`` is the input's ``path`` (or
    ``"image bytes"``). Other input columns (ids, labels) are passed through, repeated on each face's row.

    The keyword arguments are ``Classifier``'s; ``threads`` (default 1, matching ``num_cpus=1`` per actor)
    also sets how many threads detect faces.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        batch_size: int = 64,
        providers: Any = None,
        threads: int | None = 1,
        detector: Any = None,
        min_score: float | None = None,
        min_face: int | None = None,
        align: bool = True,
        face_margin: float | None = None,
        flip_tta: bool = False,
    ) -> None:
        from .classifier import Classifier

        self.classifier = Classifier(
            model,
            batch_size=batch_size,
            providers=providers,
            threads=threads,
            detector=detector,
            min_score=min_score,
            min_face=min_face,
            align=align,
            face_margin=face_margin,
            flip_tta=flip_tta,
        )
        self._workers = threads  # None: analyze_many's default (all cores)

    def _load(self, data: Any, path: str) -> np.ndarray:
        from .images import decode_image, load_image

        limit = self.classifier.max_pixels
        if data is not None:
            return decode_image(bytes(data), source=path or "image bytes", max_pixels=limit)
        if not path:
            raise InvalidInputError("row has neither image bytes nor a path")
        if not _is_uri(path):
            return load_image(path, max_pixels=limit)
        from pyarrow import fs as pafs

        try:
            filesystem, inner = pafs.FileSystem.from_uri(path)
            with filesystem.open_input_stream(inner) as fh:
                data = fh.read()
        except (OSError, ValueError) as exc:  # missing object, no credentials, unknown scheme
            raise InvalidImageError(f"{path}: cannot be read ({exc}). Fix: check the URI and its access.") from None
        return decode_image(data, source=path, max_pixels=limit)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        if "bytes" not in batch and "path" not in batch:
            raise InvalidInputError(f"FerPredictor needs a 'bytes' or 'path' column; the batch has {sorted(batch)}")
        n = len(next(iter(batch.values())))
        paths = [str(p) if p is not None else "" for p in batch.get("path", [""] * n)]
        datas = batch.get("bytes", [None] * n)
        errors = [""] * n
        images, good = [], []
        for i, (data, path) in enumerate(zip(datas, paths)):
            try:
                images.append(self._load(data, path))
                good.append(i)
            except FerSdkError as exc:
                errors[i] = str(exc)
        faces: list[list] = [[] for _ in range(n)]
        for i, (found, error) in zip(good, analyze_each(self.classifier, images, workers=self._workers)):
            faces[i] = found
            if error is not None:
                errors[i] = f"{paths[i] or 'image bytes'}: {error}"
        model, version = self.classifier.model_name, self.classifier.model_version
        rows, owner = [], []  # owner: the input row each output row comes from
        for i in range(n):
            source = paths[i] or "image bytes"
            if errors[i] or not faces[i]:
                rows.append(empty_row(source, error=errors[i] or None, model=model, model_version=version))
                owner.append(i)
            for k, face in enumerate([] if errors[i] else faces[i]):
                rows.append(face_row(source, k, face, model=model, model_version=version))
                owner.append(i)
        return _rows_table(rows, {k: v for k, v in batch.items() if k not in ("bytes", "path", *ROW_FIELDS)}, owner)


def _rows_table(rows: list[dict], passthrough: dict[str, Any], owner: list[int]):
    """The rows as a ``pyarrow.Table`` with ``fer_sdk.rows.arrow_schema()``, then the passed-through columns."""
    import pyarrow as pa

    schema = arrow_schema()
    columns = [pa.array([r[f.name] for r in rows], type=f.type) for f in schema]
    table = pa.Table.from_arrays(columns, schema=schema)
    take = np.asarray(owner, dtype=np.int64)
    for name, values in passthrough.items():
        picked = np.asarray(values)[take] if len(take) else np.asarray(values)[:0]
        table = table.append_column(name, pa.array(list(picked)))
    return table


def predict_dataset(
    ds,
    *,
    model: str | os.PathLike | None = None,
    batch_size: int = 64,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    **kw: Any,
):
    """``ds.map_batches(FerPredictor, ...)``: ``concurrency`` actors, each holding one ``Classifier``.

    ``batch_size`` is both the photos per Ray batch and the faces per inference call. ``kw`` go to
    :class:`FerPredictor` (``providers``, ``detector``, ``face_margin``, ``flip_tta``, ``threads``; threads
    default to ``num_cpus``). Pass ``num_gpus=1, providers="cuda"`` for GPU actors.
    """
    ray = import_ray()
    if isinstance(concurrency, tuple):
        pool = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    kw.setdefault("threads", max(1, int(num_cpus)))
    remote = {} if num_gpus is None else {"num_gpus": num_gpus}
    return ds.map_batches(
        FerPredictor,
        fn_constructor_kwargs={"model": model, "batch_size": batch_size, **kw},
        batch_size=batch_size,
        compute=pool,
        num_cpus=num_cpus,
        batch_format="numpy",
        **remote,
    )


def _to_path_bytes(table):
    """A Parquet block -> exactly ``path: string, bytes: binary`` (null bytes: read ``path`` later)."""
    import pyarrow as pa

    paths = table.column("path").cast(pa.string())
    if "bytes" in table.column_names:
        data = table.column("bytes").cast(pa.binary())
    else:
        data = pa.nulls(table.num_rows, pa.binary())
    return pa.table({"path": paths, "bytes": data})


def _folder_kind(folder: Path, image_extensions) -> str | None:
    """ "parquet" or "folders" (images), decided by the first such file found; None when there is neither."""
    for _root, _, files in os.walk(folder):
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if suffix == ".parquet":
                return "parquet"
            if suffix in image_extensions:
                return "folders"
    return None


def _split_inputs(paths: Iterable[str | os.PathLike]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {"folders": [], "files": [], "parquet": [], "missing": []}
    for raw in paths:
        text = os.fspath(raw)
        if _is_uri(text):  # remote: Parquet by suffix, anything else is an image file or folder
            key = "parquet" if text.lower().endswith(".parquet") else "folders"
            kinds[key].append(text)
            continue
        path = Path(text).absolute()  # actors may run in another working directory
        suffix = path.suffix.lower()
        if path.is_dir():
            kind = _folder_kind(path, IMAGE_EXTENSIONS)
            if kind == "folders":  # listed by the walk every pipeline uses (Ray's own would also skip "_" names)
                kinds["files"] += [str(f) for f in visible_files(path) if f.suffix.lower() in IMAGE_EXTENSIONS]
            elif kind is not None:  # a folder without images adds nothing, as without Ray
                kinds[kind].append(str(path))
        elif path.is_file() and suffix in VIDEO_EXTENSIONS:
            raise InvalidInputError(f"{raw}: --ray classifies photos only; run videos without --ray")
        elif path.is_file():
            kinds["parquet" if suffix == ".parquet" else "files"].append(str(path))
        else:
            kinds["missing"].append(str(path))
    kinds["extensions"] = sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    return kinds


def read_images(paths: Iterable[str | os.PathLike] | str | os.PathLike):
    """A ``ray.data.Dataset`` with ``path`` (string) and ``bytes`` (binary) columns from image folders,
    image files and Parquet.

    Folders are searched recursively for image extensions (case-insensitive, videos are skipped); local folders
    with the walk every pipeline uses (``photos.visible_files``: dot files and dot folders skipped), folders given as
    URIs by Ray Data's listing (which also skips names starting with ``_``); a folder whose
    first recognised file is ``.parquet`` is read as a Parquet dataset instead (e.g. Spark's output). Parquet needs
    a ``path`` column (a string naming each row: a file path or URI, or any id when ``bytes`` is present) and
    optionally a ``bytes`` column with the encoded image; rows without bytes are read from ``path`` by the actors.
    Paths that do not exist become rows that ``FerPredictor`` reports as errors. Paths must be visible to every Ray
    worker (shared storage or URIs).
    """
    ray = import_ray()
    import pyarrow as pa

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    kinds = _split_inputs(paths)
    parts = []
    if kinds["folders"]:
        parts.append(
            ray.data.read_binary_files(
                kinds["folders"], include_paths=True, num_cpus=_IO_CPUS, file_extensions=kinds["extensions"]
            )
        )
    if kinds["files"]:  # named, or found in a local folder: each is read whatever its extension
        parts.append(ray.data.read_binary_files(kinds["files"], include_paths=True, num_cpus=_IO_CPUS))
    parts = [p.select_columns(["path", "bytes"], num_cpus=_IO_CPUS) for p in parts]  # fused or not: no CPU
    if kinds["parquet"]:
        ds = ray.data.read_parquet(kinds["parquet"], num_cpus=_IO_CPUS)
        columns = ds.columns()
        if "path" not in columns:
            raise InvalidInputError(
                f"{', '.join(kinds['parquet'])}: Parquet input needs a 'path' string column (an image path, or "
                f"any id when a 'bytes' column holds the image); found columns {columns}. To keep other columns, "
                "call fer_sdk.ray_batch.predict_dataset on your own ray.data.read_parquet(...) dataset"
            )
        parts.append(ds.map_batches(_to_path_bytes, batch_format="pyarrow", num_cpus=_IO_CPUS))
    if kinds["missing"]:
        parts.append(
            ray.data.from_arrow(
                pa.table(
                    {
                        "path": pa.array(kinds["missing"], pa.string()),
                        "bytes": pa.nulls(len(kinds["missing"]), pa.binary()),
                    }
                )
            )
        )
    if not parts:
        raise InvalidInputError(f"no images or Parquet found in {', '.join(map(str, paths))}")
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _prepare_output(output: str | os.PathLike | None) -> Path:
    if output is None:
        raise InvalidInputError("--ray writes Parquet files into a folder: pass --output DIR")
    out = Path(output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InvalidInputError(
            f"--output {output}: already exists and is not an empty folder; pass a new folder (results are "
            "written to a temporary sibling folder and renamed into place)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.absolute()


def _check_model(model, *, local: bool):
    """Fail on the driver, before any actor starts, for an unknown bundled name (or, when every worker runs on
    this machine, a missing file); a relative path becomes absolute since actors may run elsewhere."""
    from . import registry

    if model is None or registry._is_name(model):
        registry.get_spec(model or registry.default_model_name())
        return model
    path = Path(model).expanduser().absolute()
    if local:
        registry.resolve_model(path, verify=False)
    return str(path)


def _summarize(folder: str, *, local: bool) -> tuple[int, int, list[str]]:
    """(images, faces, error messages) read back from the Parquet just written (three small columns)."""
    import pyarrow.dataset as pads

    if local and not any(Path(folder).glob("*.parquet")):
        raise FerSdkError(
            f"Ray wrote no Parquet files into {folder} on this machine: the workers run elsewhere and wrote to "
            "their own disks. Fix: pass an --output on storage every node mounts at the same path, or a URI "
            "(s3://..., gs://...)"
        )
    table = pads.dataset(folder, format="parquet").to_table(columns=["source", "face", "error"])
    errors = [e for e in table.column("error").to_pylist() if e]
    faces = sum(v is not None for v in table.column("face").to_pylist())
    images = sum(v in (None, 0) for v in table.column("face").to_pylist())  # each input's first row
    return images, faces, errors


@dataclass(frozen=True)
class RayRun:
    """What :func:`run_ray_predict` wrote: ``images`` read, ``faces`` found, the ``errors`` (one message per
    failed image), the Parquet folder or URI (``target``), wall ``seconds`` and the ``actors`` used."""

    images: int
    faces: int
    errors: list[str]
    target: str
    seconds: float
    actors: Any


def run_ray_predict(
    paths,
    *,
    address: str,
    model: str | os.PathLike | None = None,
    batch_size: int = 64,
    output: str | os.PathLike | None = None,
    fmt: str = "table",
    concurrency: int | tuple[int, int] | None = None,
    local_cpus: int | None = None,
    **predictor_kw: Any,
) -> RayRun:
    """``fer-sdk predict --ray ADDRESS|local``: read, classify on Ray, write Parquet to ``output``.

    ``address``: ``"local"`` starts a Ray instance on this machine (``local_cpus`` CPUs, default all) and stops
    it afterwards; anything else (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``) joins that cluster. An
    already initialised Ray is used as is. ``concurrency``: actors (default: one per cluster CPU).
    ``output`` is a new or empty local folder (written to a temporary sibling, then renamed into place; on a
    multi-node cluster it must be shared storage mounted at the same path everywhere) or a URI such as
    ``s3://bucket/prefix`` (written in place). ``predictor_kw`` go to :class:`FerPredictor`.
    Returns a :class:`RayRun`; prints nothing (``fer-sdk predict --ray`` prints its summary).
    """
    ray = import_ray()
    if fmt != "table":
        raise InvalidInputError(f"--ray writes Parquet into --output DIR; drop --format {fmt}")
    remote = os.fspath(output) if output is not None and _is_uri(os.fspath(output)) else None  # written in place
    out = Path() if remote is not None else _prepare_output(output)
    model = _check_model(model, local=address == "local")
    if "detector" in predictor_kw:  # a relative .onnx path must mean the same file on every worker
        from .detect import portable_spec

        predictor_kw["detector"] = portable_spec(predictor_kw["detector"])
    started = not ray.is_initialized()
    verbose = is_debug()
    if not verbose:
        quiet_ray()
    if started:
        local = address == "local"  # "local" always starts a fresh instance (never RAY_ADDRESS)
        with native_stderr_to_file(not verbose):  # the core worker's start-up line; replayed if init fails
            ray.init(
                address=address,
                num_cpus=local_cpus if local else None,
                ignore_reinit_error=True,
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level=logging.INFO if verbose else logging.ERROR,
            )
        if not verbose:
            quiet_ray()  # ray.init configures its loggers again
    tmp: Path | None = None
    try:
        t0 = time.perf_counter()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if concurrency is None:
            concurrency = max(1, cpus)
        elif (concurrency if isinstance(concurrency, int) else concurrency[0]) > cpus:
            logger.warning(
                "%s actors need more CPUs than the cluster's %d; the job waits until an autoscaler adds nodes",
                concurrency,
                cpus,
            )
        ds = predict_dataset(
            read_images(paths), model=model, batch_size=batch_size, concurrency=concurrency, **predictor_kw
        )
        if remote is not None:
            target = remote
            ds.write_parquet(target, ray_remote_args={"num_cpus": _IO_CPUS})
            rows, faces, errors = _summarize(target, local=False)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
            ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": _IO_CPUS})
            target = str(tmp)
            rows, faces, errors = _summarize(target, local=True)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the results are an ordinary readable folder
            os.replace(tmp, out)  # atomic at folder level: an empty `out` is replaced, never a full one
            tmp, target = None, str(out)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if started:
            ray.shutdown()
    return RayRun(
        images=rows, faces=faces, errors=errors, target=target, seconds=time.perf_counter() - t0, actors=concurrency
    )

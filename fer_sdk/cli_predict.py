"""``fer-sdk predict``'s orchestration: inputs in, one stream of ``fer_sdk.rows`` rows out, a summary line.

Part of the CLI layer (it writes to stdout and stderr); the pieces it drives live in ``photos``, ``video``,
``ray_batch`` and ``rows``, which print nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import FerSdkError, InvalidInputError
from .files import atomic_path, check_output_file, check_output_folder
from .photos import (
    IMAGE_EXTENSIONS,
    STDIN,
    collect_inputs,
    is_dir,
    photo_rows,
    predict_photos,
    reserved_paths,
    write_annotated,
    write_crops,
)
from .rows import check_format, empty_row, row_writer

#: Errors of a Ray run shown on stderr (all of them are in the Parquet's ``error`` column).
ERRORS_SHOWN = 5


@dataclass(frozen=True)
class RunOutcome:
    """What a predict run processed: ``total`` inputs (None when unknown, e.g. on Ray), ``failed`` of them,
    and ``error_code``: the failures' shared ``FerSdkError.exit_code`` (1 when they differ)."""

    total: int | None
    failed: int
    error_code: int = FerSdkError.exit_code
    summary: str | None = None  # one line for people: model, detector, photos, faces, time

    @property
    def all_failed(self) -> bool:
        return self.failed > 0 and self.failed == self.total

    @classmethod
    def of(cls, total: int, codes: list[int]) -> RunOutcome:
        shared = codes[0] if len(set(codes)) == 1 else 0
        return cls(total, len(codes), shared or FerSdkError.exit_code)  # never 0 for a failure


def run_predict(
    paths,
    *,
    model,
    fmt: str = "table",
    annotate: Path | None = None,
    providers=None,
    batch_size: int = 64,
    detector=None,
    min_score: float | None = None,
    min_face: int | None = None,
    align: bool = True,
    face_margin: float | None = None,
    flip_tta: bool = False,
    every: int = 1,
    fps: float | None = None,
    ray: str | None = None,
    output: Path | None = None,
    smooth: float | None = None,
    summary: Path | None = None,
    max_pixels: int | None = None,
    save_crops: Path | None = None,
) -> RunOutcome:
    """Run the CLI's predict: photos first, then videos, as one stream of rows in ``fmt`` (stdout, or ``output``
    written atomically). Returns how many inputs it processed and how many failed."""
    from .classifier import Classifier

    check_format(fmt)
    # what configures the Classifier, the same here and on every Ray actor
    options = {
        "providers": providers,
        "batch_size": batch_size,
        "detector": detector,
        "min_score": min_score,
        "min_face": min_face,
        "align": align,
        "face_margin": face_margin,
        "flip_tta": flip_tta,
    }
    if ray is not None:
        if annotate is not None:
            raise InvalidInputError("--annotate does not work with --ray (results go to Parquet); drop one of them")
        if smooth is not None or summary is not None:
            raise InvalidInputError("--smooth and --summary are for videos, which --ray does not read; drop them")
        if save_crops is not None:
            raise InvalidInputError("--save-crops does not work with --ray (results go to Parquet); drop one of them")
        from .ray_batch import run_ray_predict

        run = run_ray_predict(paths, address=ray, model=model, output=output, fmt=fmt, **options)
        for message in run.errors[:ERRORS_SHOWN]:
            print(f"fer-sdk: error: {message}", file=sys.stderr)
        more = f" (first {ERRORS_SHOWN} shown above)" if len(run.errors) > ERRORS_SHOWN else ""
        line = (
            f"ray: {run.images} image(s), {run.faces} face(s), {len(run.errors)} error(s){more} -> {run.target} "
            f"({run.seconds:.1f} s, {run.actors} actors)"
        )
        return RunOutcome(None, len(run.errors), summary=line)
    from .video import Smoother, VideoSummary, frame_step, video_rows

    frame_step(25.0, every, fps)  # validates --every / --fps before any work
    if smooth is not None:
        Smoother(smooth)
    photos, videos, results = collect_inputs(paths)
    inputs = [*photos, *videos]
    if output is not None:
        check_output_file(output, option="--output", inputs=inputs)
    if summary is not None:
        check_output_file(summary, option="--summary", inputs=inputs)
        if output is not None and Path(summary).resolve() == Path(output).resolve():
            raise InvalidInputError(f"--summary {summary} is also --output; give them different paths")
    if annotate is not None:
        check_output_folder(annotate, option="--annotate")
    if save_crops is not None:
        check_output_folder(save_crops, option="--save-crops")
    if not photos and not videos and not results:
        raise InvalidInputError(
            f"no images or videos found in {', '.join(map(str, paths))} (dot files and folders are skipped); "
            f"pass image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) or videos, or folders holding them"
        )
    if save_crops is not None and not photos and videos:
        raise InvalidInputError("--save-crops saves the faces of photos; these inputs are videos: drop it")
    if (smooth is not None or summary is not None) and photos and not videos:
        raise InvalidInputError("--smooth and --summary apply to videos; these inputs are photos: drop them")
    clf = Classifier(model, max_pixels=max_pixels, **options)
    roots = [Path(p) for p in paths if str(p) != STDIN and is_dir(Path(p))]
    # annotated copies never take an input's name, nor the results' or the summary's
    taken = reserved_paths(photos, videos, [p for p in (output, summary) if p is not None])
    named = {"model": clf.model_name, "model_version": clf.model_version}
    codes: list[int] = [r.error_code for r in results]  # one per failed input
    faces = 0
    summaries: list[dict] = []
    started = time.perf_counter()

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from .progress import bar as progress_bar

    with contextlib.ExitStack() as stack:
        sink: TextIO
        if output is not None:
            tmp = stack.enter_context(atomic_path(output))
            sink = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape"))
        else:
            sink = sys.stdout
        width = max((len(str(p)) for p in [*inputs, *(r.source for r in results)]), default=6)
        writer = row_writer(sink, fmt, source_width=width, video=bool(videos))
        bar = stack.enter_context(
            progress_bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                enabled=len(photos) > 1 or bool(videos),
            )
        )
        for missing in results:
            writer.write(empty_row(missing.source, error=missing.error, **named))
        task = bar.add_task("photos", total=len(photos)) if photos else None
        for result in predict_photos(
            clf, photos, keep_images=annotate is not None or save_crops is not None, progress=lambda: bar.advance(task)
        ):
            if save_crops is not None and result.error is None:
                _per_photo(result, "face crops'", lambda r=result: write_crops(r, clf, save_crops, taken, roots))
            if annotate is not None and result.error is None:
                _per_photo(result, "annotated copy's", lambda r=result: _set_annotated(r, annotate, taken, roots))
            result.image = None
            if result.error is not None:
                codes.append(result.error_code)
            faces += len(result.faces)
            for row in photo_rows(result, **named):
                writer.write(row)
        for path in videos:
            totals = VideoSummary(str(path))
            try:
                for row in video_rows(
                    clf,
                    path,
                    every=every,
                    fps=fps,
                    annotate=annotate,
                    taken=taken,
                    smooth=smooth,
                    summary=totals,
                    progress=bar,
                ):
                    writer.write(row)
                summaries.append(totals.to_dict())
                faces += totals.rows
            except FerSdkError as exc:
                codes.append(exc.exit_code)
                writer.write(empty_row(str(path), error=str(exc), **named))
        writer.close()
    if summary is not None and summaries:
        from .files import atomic_write_json

        atomic_write_json(summary, summaries)
    outcome = RunOutcome.of(len(inputs) + len(results), codes)
    detector_name = "yunet" if type(clf.detector).__name__ == "YuNetDetector" else type(clf.detector).__name__
    counted = [f"{len(photos)} photo(s)"] if photos or not videos else []
    counted += [f"{len(videos)} video(s)"] if videos else []
    face_word = "face(s)" if not videos else "face row(s)"
    line = (
        f"{clf.model_name} ({clf.metadata.get('precision', '?')}, {clf.providers[0]}), detector {detector_name}: "
        f"{', '.join(counted)}, {faces} {face_word} in {time.perf_counter() - started:.2f} s"
    )
    return dataclasses.replace(outcome, summary=line)


def _set_annotated(result, folder: Path, taken: set[Path], roots) -> None:
    result.annotated = str(write_annotated(result, folder, taken, roots))


def _per_photo(result, what: str, write) -> None:
    """Run ``write`` for one photo's extra output; a name too long for the file system is that photo's error
    only (a full disk or a permission is the run's: it stops)."""
    try:
        write()
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        result.error = (
            f"{result.source}: the {what} name is too long for the file system ({exc.strerror}); rename the photo"
        )
        result.error_code = FerSdkError.exit_code

"""``fer-sdk predict``: photos (and videos) in, faces with emotions out, as a table, JSON or CSV.

Library-level so the CLI stays thin: :func:`collect_inputs` expands folders, :func:`predict_photos`
yields one result per photo (bad files become error results, never an abort), :func:`write_results`
renders them, :func:`annotate_image` draws boxes and labels.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .constants import EMOTIONS
from .detection import DETECTION_COLUMNS
from .errors import FerSdkError, InvalidImageError, InvalidInputError
from .io import atomic_path, atomic_write_text, check_output_file, check_output_folder

#: What folder walks pick up: the extensions of the formats ``images.decode_image`` accepts.
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pbm", ".pgm",
                    ".ppm", ".pnm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
PHOTOS_PER_CHUNK = 32
#: The input name that reads one photo from standard input.
STDIN = "-"


@dataclass
class PhotoResult:
    source: str
    faces: list = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = None  # kept only while annotating
    error_code: int = 0  # the failure's FerSdkError.exit_code (0: no error); not part of the output
    annotated: str | None = None  # the annotated copy written for this photo (--annotate)

    def to_dict(self) -> dict:
        out = {"file": self.source, "faces": [f.to_dict() for f in self.faces]}
        if self.annotated is not None:
            out["annotated"] = self.annotated
        if self.error is not None:
            out["error"] = self.error
        return out


def collect_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path], list[PhotoResult]]:
    """Split ``paths`` into photos and videos; folders are searched recursively, in sorted order.

    Paths that do not exist come back as error results rather than stopping the run. ``-`` is one photo read
    from standard input (a file called ``-`` is ``./-``).
    """
    photos: list[Path] = []
    videos: list[Path] = []
    missing: list[PhotoResult] = []
    for raw in paths:
        if str(raw) == STDIN:
            photos.append(Path(STDIN))
            continue
        path = Path(raw)
        try:
            is_dir, exists = path.is_dir(), os.path.lexists(path)
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte...
            missing.append(PhotoResult(str(path), error=f"{path}: cannot be used ({exc}); check the path",
                                       error_code=InvalidInputError.exit_code))
            continue
        if is_dir:
            files = _visible_files(path)
            photos.extend(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
            videos.extend(p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif exists:  # regular or not: the readers refuse FIFOs and devices with the input's own error
            (videos if path.suffix.lower() in VIDEO_EXTENSIONS else photos).append(path)
        else:
            missing.append(PhotoResult(str(path), error=f"{path}: no such file or folder; check the path",
                                       error_code=InvalidInputError.exit_code))
    return photos, videos, missing


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system: collect_inputs reported it
        return False


def _visible_files(folder: Path) -> list[Path]:
    """Files under ``folder``, sorted; dot files and dot folders (``.git``, macOS ``._photo.jpg`` sidecars) are
    skipped without being walked."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files if not f.startswith("."))
    return sorted(found)


def analyze_each(classifier, images: list, *, workers: int | None = None) -> list[tuple[list, FerSdkError | None]]:
    """``(faces, None)`` per image, or ``([], error)`` (the ``FerSdkError``) for an image the classifier rejects;
    the others are analyzed together (shared inference batches) all the same."""
    out: list[tuple[list, FerSdkError | None]] = []
    for item in classifier.analyze_many(images, workers=workers, on_error="return"):
        out.append(([], item) if isinstance(item, FerSdkError) else (item, None))
    return out


def _read_photo(path: Path, max_pixels: int | None):
    from .images import MAX_FILE_BYTES, decode_image, load_image

    if str(path) != STDIN:
        return load_image(path, max_pixels=max_pixels)
    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImageError(f"<stdin>: more than {MAX_FILE_BYTES:,} bytes; pass a smaller image")
    return decode_image(data, source="<stdin>", max_pixels=max_pixels)


def predict_photos(classifier, photos: list[Path], *, keep_images: bool = False, progress=None) -> Iterator[PhotoResult]:
    """Analyze photos in chunks (faces of a chunk share inference batches); bad files become error results."""

    for start in range(0, len(photos), PHOTOS_PER_CHUNK):
        chunk = photos[start : start + PHOTOS_PER_CHUNK]
        results, images = [], []
        for path in chunk:
            try:
                images.append(_read_photo(path, classifier.max_pixels))
                results.append(PhotoResult(str(path)))
            except FerSdkError as exc:
                results.append(PhotoResult(str(path), error=str(exc), error_code=exc.exit_code))
        good = [r for r in results if r.error is None]
        analyzed = analyze_each(classifier, images)
        for result, image, (faces, error) in zip(good, images, analyzed):
            result.faces = faces
            if error is not None:
                result.error, result.error_code = f"{result.source}: {error}", error.exit_code
            if keep_images and result.error is None:
                result.image = image
        for result in results:
            yield result
            if progress is not None:
                progress()


def annotate_image(image: np.ndarray, faces) -> np.ndarray:
    """A BGR copy of ``image`` with a box and "emotion score" label on each face, sized by that face (so labels on
    a group photo do not cover each other), and the five landmarks where the detector gave them."""
    import cv2

    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    for face in faces:
        x, y, w, h = face.box
        thickness = max(1, round(w / 80))
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), thickness)
        for px, py in face.landmarks or ():
            cv2.circle(out, (round(px), round(py)), thickness + 1, (0, 200, 255), -1)
        label = f"{face.emotion} {face.score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)
        scale = float(np.clip(w / max(tw, 1), 0.3, 3.0))  # the label spans about the face's width
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = max(y, th + base + 2)
        cv2.rectangle(out, (x, ty - th - base - 2), (x + tw + 2, ty), (0, 200, 0), -1)
        cv2.putText(out, label, (x + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return out


def unique_path(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``name-2.ext``, ``name-3.ext``... when the name is taken or the file already exists.

    ``taken`` holds resolved paths: this run's earlier outputs and its inputs (see :func:`reserved_paths`);
    a file that exists is never replaced either, so an annotated copy cannot overwrite another output, a photo,
    or anything else already in the folder.
    """
    candidate, n = target, 1
    while candidate.resolve() in taken or os.path.lexists(candidate):
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    taken.add(candidate.resolve())
    return candidate


def reserved_paths(*inputs: Iterable[Path]) -> set[Path]:
    """The resolved input paths, which :func:`unique_path` must never hand out as an output."""
    return {Path(p).resolve() for group in inputs for p in group}


def relative_name(source: str, roots: Iterable[Path] = ()) -> Path:
    """Where a photo's outputs go under an output folder: its path below the input folder it was found in
    (``a/x.png`` and ``b/x.png`` stay apart), else its file name."""
    if source == STDIN:
        return Path("stdin.png")
    path = Path(source)
    for root in roots:
        try:
            return path.relative_to(root)
        except ValueError:
            continue
    return Path(path.name)


def write_annotated(result: PhotoResult, folder: Path, taken: set[Path] | None = None,
                    roots: Iterable[Path] = ()) -> Path:
    """Write ``result``'s photo with its boxes and labels into ``folder``; return the path written.

    ``taken`` is the run's set of reserved paths (inputs and earlier outputs). Without one, the photo's
    own source is reserved, so annotating into the photo's folder writes ``name-2.ext`` beside it. ``roots``:
    the input folders; a photo found in one keeps its relative folders under ``folder``.
    """
    import cv2

    target = folder / relative_name(result.source, roots)
    ext = target.suffix.lower() if target.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"} else ".png"
    if taken is None:
        taken = reserved_paths([Path(result.source)])
    target = unique_path(target.with_suffix(ext), taken)
    ok, buf = cv2.imencode(ext, annotate_image(result.image, result.faces))
    if not ok:
        raise FerSdkError(f"could not encode the annotated copy of {result.source}")
    with atomic_path(target) as tmp:
        tmp.write_bytes(buf.tobytes())
    return target


def write_crops(result: PhotoResult, classifier, folder: Path, taken: set[Path], roots: Iterable[Path] = ()) -> list[Path]:
    """Save each face of ``result`` as the classifier cut it (``NAME.face0.png``, ...) under ``folder``."""
    import cv2

    from .detection import Detection

    base = folder / relative_name(result.source, roots)
    written = []
    for i, face in enumerate(result.faces):
        crop = classifier.crop(result.image, Detection(face.box, face.detection_score, face.landmarks))
        target = unique_path(base.with_name(f"{base.stem}.face{i}.png"), taken)
        ok, buf = cv2.imencode(".png", crop)
        if not ok:
            raise FerSdkError(f"could not encode face {i} of {result.source}")
        with atomic_path(target) as tmp:
            tmp.write_bytes(buf.tobytes())
        written.append(target)
    return written


CSV_HEADER = ["file", "face", "x", "y", "w", "h", "emotion", "score", *EMOTIONS, *DETECTION_COLUMNS, "annotated",
              "error"]


def csv_rows(result: PhotoResult) -> Iterator[list]:
    """One row per face; a photo with no face or an error still gets one row (empty face fields)."""
    if result.error is not None or not result.faces:
        yield [result.source, "", "", "", "", "", "", "", *[""] * len(EMOTIONS), *[""] * len(DETECTION_COLUMNS),
               result.annotated or "", result.error or ""]
        return
    for i, face in enumerate(result.faces):
        yield [result.source, i, *face.box, face.emotion, f"{face.score:.6f}",
               *(f"{face.emotions[e]:.6f}" for e in EMOTIONS),
               *("" if v is None else v for v in face.detection_values()), result.annotated or "", ""]


def render(results: list[PhotoResult], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for r in results:
            writer.writerows(csv_rows(r))
        return buf.getvalue()
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("file", "face", "box (x, y, w, h)", "emotion", "score", "runner-up"):
        table.add_column(col)
    for r in results:
        if r.error is not None:
            table.add_row(r.source, "-", "-", "[red]error[/red]", "-", r.error)
            continue
        if not r.faces:
            table.add_row(r.source, "-", "-", "no face found", "-", "-")
        for i, f in enumerate(r.faces):
            second = sorted(f.emotions.items(), key=lambda kv: -kv[1])[1]
            table.add_row(r.source, str(i), str(tuple(f.box)), f.emotion, f"{f.score:.2f}", f"{second[0]} {second[1]:.2f}")
    buf = io.StringIO()
    Console(file=buf, width=160).print(table)
    return buf.getvalue()


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
    """Run the CLI's predict; returns how many inputs it processed and how many failed."""
    from .classifier import Classifier

    if ray is not None:
        if annotate is not None:
            raise InvalidInputError("--annotate does not work with --ray (results go to Parquet); drop one of them")
        if smooth is not None or summary is not None:
            raise InvalidInputError("--smooth and --summary are for videos, which --ray does not read; drop them")
        if save_crops is not None:
            raise InvalidInputError("--save-crops does not work with --ray (results go to Parquet); drop one of them")
        from .ray_batch import run_ray_predict

        failed = run_ray_predict(paths, address=ray, model=model, batch_size=batch_size, output=output, fmt=fmt,
                                 providers=providers, detector=detector, min_score=min_score, min_face=min_face,
                                 align=align, face_margin=face_margin, flip_tta=flip_tta)
        return RunOutcome(None, failed)
    from .video import frame_step

    frame_step(25.0, every, fps)  # validates --every / --fps before any work
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
    if save_crops is not None and videos:
        raise InvalidInputError("--save-crops applies to photos; these inputs include videos: drop it")
    if (smooth is not None or summary is not None) and photos and not videos:
        raise InvalidInputError("--smooth and --summary apply to videos; these inputs are photos: drop them")
    if photos and videos:
        raise InvalidInputError(
            f"got {len(photos)} photo(s) and {len(videos)} video(s) in one run; their outputs differ (one row per "
            "photo vs one row per video frame face): run photos and videos separately"
        )
    clf = Classifier(model, providers=providers, batch_size=batch_size, detector=detector, min_score=min_score,
                     min_face=min_face, align=align, face_margin=face_margin, flip_tta=flip_tta,
                     max_pixels=max_pixels)
    roots = [Path(p) for p in paths if str(p) != STDIN and _is_dir(Path(p))]
    # annotated copies never take an input's name, nor the results' or the summary's
    taken = reserved_paths(photos, videos, [p for p in (output, summary) if p is not None])
    if videos:
        from .video import predict_videos

        failed_videos = predict_videos(clf, videos, every=every, fps=fps, fmt="json" if fmt == "json" else "csv",
                                       output=output, annotate=annotate, taken=taken, smooth=smooth,
                                       summary=summary)
        if not photos:
            for missing in results:
                print(f"fer-sdk: error: {missing.error}", file=sys.stderr)
            return RunOutcome.of(len(videos) + len(results), failed_videos + [r.error_code for r in results])
    else:
        failed_videos = []

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from .progress import bar as progress_bar

    started = time.perf_counter()
    with progress_bar(
        TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), enabled=len(photos) > 1
    ) as bar:
        task = bar.add_task("photos", total=len(photos))
        for result in predict_photos(clf, photos, keep_images=annotate is not None or save_crops is not None,
                                     progress=lambda: bar.advance(task)):
            if save_crops is not None and result.error is None:
                write_crops(result, clf, save_crops, taken, roots)
            if annotate is not None and result.error is None:
                try:
                    result.annotated = str(write_annotated(result, annotate, taken, roots))
                except OSError as exc:  # a name too long for this file system is this photo's problem only;
                    if exc.errno != errno.ENAMETOOLONG:  # a full disk or a permission is the run's: it stops
                        raise
                    result.error = (f"{result.source}: the annotated copy's name is too long for the file system "
                                    f"({exc.strerror}); rename the photo")
                    result.error_code = FerSdkError.exit_code
            result.image = None
            results.append(result)
    text = render(results, fmt)
    if output is not None:
        atomic_write_text(output, text)
    else:
        print(text, end="")
    outcome = RunOutcome.of(len(videos) + len(results),
                            failed_videos + [r.error_code for r in results if r.error is not None])
    faces = sum(len(r.faces) for r in results)
    name = clf.spec.name if clf.spec is not None else str(model)
    detector = "yunet" if type(clf.detector).__name__ == "YuNetDetector" else type(clf.detector).__name__
    summary = (f"{name} ({clf.metadata.get('precision', '?')}, {clf.providers[0]}), detector {detector}: "
               f"{len(photos)} photo(s), {faces} face(s) in {time.perf_counter() - started:.2f} s")
    return dataclasses.replace(outcome, summary=summary)

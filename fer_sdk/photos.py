"""Photos in, results out: the pieces photo prediction, video and Ray share.

:func:`collect_inputs` expands folders (one walk, one skip rule, for every pipeline), :func:`predict_photos`
yields one :class:`PhotoResult` per photo (a bad file becomes an error result, never an abort),
:func:`photo_rows` turns a result into ``fer_sdk.rows`` rows, :func:`annotate_image` draws boxes and labels,
:func:`unique_path` picks output names that never replace an input or an earlier output.

This module imports none of ``video``, ``ray_batch`` or the CLI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FerSdkError, InvalidImageError, InvalidInputError
from .files import atomic_path
from .rows import empty_row, face_row

#: What folder walks pick up: the extensions of the formats ``images.decode_image`` accepts.
IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".gif",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
}
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
        """``{"source", "faces": [Face.to_dict(), ...], "annotated"?, "error"?}``."""
        out = {"source": self.source, "faces": [f.to_dict() for f in self.faces]}
        if self.annotated is not None:
            out["annotated"] = self.annotated
        if self.error is not None:
            out["error"] = self.error
        return out


def photo_rows(result: PhotoResult, *, model: str | None = None, model_version: str | None = None) -> Iterator[dict]:
    """``result`` as ``fer_sdk.rows`` rows: one per face; a photo with no face or an error gets one row."""
    if result.error is not None or not result.faces:
        yield empty_row(
            result.source, model=model, model_version=model_version, error=result.error, annotated=result.annotated
        )
        return
    for i, face in enumerate(result.faces):
        yield face_row(result.source, i, face, model=model, model_version=model_version, annotated=result.annotated)


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
            missing.append(
                PhotoResult(
                    str(path),
                    error=f"{path}: cannot be used ({exc}); check the path",
                    error_code=InvalidInputError.exit_code,
                )
            )
            continue
        if is_dir:
            files = visible_files(path)
            photos.extend(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
            videos.extend(p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS)
        elif exists:  # regular or not: the readers refuse FIFOs and devices with the input's own error
            (videos if path.suffix.lower() in VIDEO_EXTENSIONS else photos).append(path)
        else:
            missing.append(
                PhotoResult(
                    str(path),
                    error=f"{path}: no such file or folder; check the path",
                    error_code=InvalidInputError.exit_code,
                )
            )
    return photos, videos, missing


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system: collect_inputs reported it
        return False


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder``, sorted; dot files and dot folders (``.git``, macOS ``._photo.jpg`` sidecars) are
    skipped without being walked."""
    found: list[Path] = []
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


def predict_photos(
    classifier, photos: list[Path], *, keep_images: bool = False, progress=None
) -> Iterator[PhotoResult]:
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


def write_annotated(
    result: PhotoResult, folder: Path, taken: set[Path] | None = None, roots: Iterable[Path] = ()
) -> Path:
    """Write ``result``'s photo with its boxes and labels into ``folder``; return the path written.

    ``taken`` is the run's set of reserved paths (inputs and earlier outputs). Without one, the photo's
    own source is reserved, so annotating into the photo's folder writes ``name-2.ext`` beside it. ``roots``:
    the input folders; a photo found in one keeps its relative folders under ``folder``.
    """
    import cv2

    if result.image is None:  # predict_photos keeps the decoded photo only with keep_images=True
        raise InvalidInputError(f"{result.source}: no image to annotate (predict_photos(..., keep_images=True))")
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


def write_crops(
    result: PhotoResult, classifier, folder: Path, taken: set[Path], roots: Iterable[Path] = ()
) -> list[Path]:
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

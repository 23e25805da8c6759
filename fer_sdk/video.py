"""Video files: decode with OpenCV, classify the faces of sampled frames, stream per-face rows.

Frames are read and processed in chunks (``FRAMES_PER_CHUNK`` sampled frames at a time: detection on a
thread pool, all their faces in shared inference batches), so memory stays flat however long the video.
Rows go out as they are produced: CSV, or JSON Lines with ``fmt="json"``. With ``output=`` the file is
written to a temporary name and renamed when the video is done; with ``annotate=`` an annotated copy of
the video (every sampled frame, boxes and labels drawn) is written the same way.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .constants import EMOTIONS
from .errors import FerSdkError, InvalidInputError
from .io import atomic_path

FRAMES_PER_CHUNK = 32
ROW_FIELDS = ["video", "frame", "time_s", "face", "x", "y", "w", "h", "emotion", "score", *EMOTIONS]


def _open(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InvalidInputError(f"{path}: OpenCV cannot open this video; check the file or convert it to MP4 (H.264)")
    return cap


def frame_step(native_fps: float, every: int = 1, fps: float | None = None) -> int:
    """How many frames to advance per sample: ``every``, or the step that gives about ``fps`` samples/s."""
    if every < 1:
        raise InvalidInputError(f"every={every!r} must be >= 1 (e.g. every=5)")
    if fps is None:
        return every
    if not fps > 0:
        raise InvalidInputError(f"fps={fps!r} must be > 0 (e.g. fps=2)")
    if native_fps <= 0:
        return every
    return max(1, round(native_fps / fps))


def iter_video_faces(classifier, path: Path, *, every: int = 1, fps: float | None = None,
                     on_frames=None, on_annotated=None) -> Iterator[dict]:
    """Yield one row per face (dicts with ``ROW_FIELDS``) of the sampled frames of ``path``."""
    cap = _open(path)
    try:
        native = cap.get(5) or 0.0  # cv2.CAP_PROP_FPS
        step = frame_step(native, every, fps)
        index = 0
        while True:
            frames, numbers = [], []
            while len(frames) < FRAMES_PER_CHUNK:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % step == 0:
                    frames.append(frame)
                    numbers.append(index)
                index += 1
                if on_frames is not None:
                    on_frames(1)
            if not frames:
                return
            for frame_no, frame, faces in zip(numbers, frames, classifier.analyze_many(frames)):
                t = round(frame_no / native, 3) if native > 0 else None  # None: the video states no frame rate
                if on_annotated is not None:
                    on_annotated(frame, faces)
                for i, face in enumerate(faces):
                    yield {
                        "video": str(path), "frame": frame_no, "time_s": t, "face": i,
                        "x": face.box[0], "y": face.box[1], "w": face.box[2], "h": face.box[3],
                        "emotion": face.emotion, "score": round(face.score, 6),
                        **{e: round(face.emotions[e], 6) for e in EMOTIONS},
                    }
            if len(frames) < FRAMES_PER_CHUNK and not ok:
                return
    finally:
        cap.release()


def predict_videos(classifier, videos: list[Path], *, every: int = 1, fps: float | None = None,
                   fmt: str = "csv", output: Path | None = None, annotate: Path | None = None,
                   taken: set[Path] | None = None) -> list[int]:
    """Classify the faces of every video; returns the exit codes of the videos that failed (each reported on
    stderr), so ``[]`` when all were processed.

    ``taken``: resolved paths annotated videos must not take (the inputs, earlier outputs); two videos with
    the same name in different folders get ``clip.annotated.mp4`` and ``clip.annotated-2.mp4``.
    """
    import cv2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .predict import annotate_image, reserved_paths, unique_path

    failed: list[int] = []
    json_lines = fmt == "json"
    if taken is None:
        taken = reserved_paths(videos)
    with ExitStack() as stack:
        if output is not None:
            tmp = stack.enter_context(atomic_path(output))
            sink = stack.enter_context(open(tmp, "w", newline=""))
        else:
            sink = sys.stdout
        writer = None if json_lines else csv.DictWriter(sink, fieldnames=ROW_FIELDS, lineterminator="\n")
        if writer is not None:
            writer.writeheader()
        progress = stack.enter_context(Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        ))
        for path in videos:
            try:
                cap = _open(path)
                total = int(cap.get(7) or 0)  # cv2.CAP_PROP_FRAME_COUNT
                size = (int(cap.get(3)), int(cap.get(4)))
                native = cap.get(5) or 25.0
                cap.release()
                task = progress.add_task(f"frames of {path.name}", total=total or None)
                with ExitStack() as per_video:
                    on_annotated = None
                    if annotate is not None:
                        target = unique_path(Path(annotate) / f"{path.stem}.annotated.mp4", taken)
                        vtmp = per_video.enter_context(atomic_path(target))
                        step = frame_step(native, every, fps)
                        out_video = cv2.VideoWriter(str(vtmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                                    max(native / step, 1.0), size)
                        per_video.callback(out_video.release)
                        if not out_video.isOpened():
                            raise FerSdkError(
                                f"OpenCV cannot write {target} ({size[0]}x{size[1]}, mp4v); this OpenCV build "
                                "lacks an MP4 encoder or the video reports no frame size: drop --annotate"
                            )

                        def on_annotated(frame, faces, _w=out_video):
                            _w.write(annotate_image(frame, faces))

                    for row in iter_video_faces(classifier, path, every=every, fps=fps,
                                                on_frames=lambda n, t=task: progress.advance(t, n),
                                                on_annotated=on_annotated):
                        if json_lines:
                            sink.write(json.dumps(row) + "\n")
                        else:
                            writer.writerow(row)
            except FerSdkError as exc:
                failed.append(exc.exit_code)
                print(f"fer-sdk: error: {exc}", file=sys.stderr)
    return failed


def make_test_video(path: Path, images: list[np.ndarray], *, frames_per_image: int = 5, fps: float = 10.0,
                    size: tuple[int, int] = (320, 240)) -> Path:
    """Write a short MP4 that shows each image for ``frames_per_image`` frames (used by tests and demos)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise FerSdkError(f"OpenCV cannot write {path}; this OpenCV build lacks an MP4 encoder")
    try:
        for image in images:
            frame = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            for _ in range(frames_per_image):
                writer.write(frame)
    finally:
        writer.release()
    return path

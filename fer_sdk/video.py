"""Video files: decode with OpenCV, classify the faces of sampled frames, stream per-face rows.

Faces are followed across sampled frames (:class:`FaceTracker`: greedy matching by box overlap, then by landmark
distance), so every row carries a ``track`` id; ``smooth=SECONDS`` replaces each row's probabilities with the
mean of its track's over the last SECONDS (causal: only frames already seen), which stops per-frame labels
from flickering; :class:`VideoSummary` collects per-video totals (``--summary FILE``).

Frames are read and processed in chunks (``FRAMES_PER_CHUNK`` sampled frames at a time: detection on a
thread pool, all their faces in shared inference batches), so memory stays flat however long the video.
Rows (``fer_sdk.rows``, the schema photos and Ray share) go out as they are produced; with ``annotate=`` an
annotated copy of the video (every sampled frame, boxes and labels drawn) is written to a temporary name and
renamed when the video is done.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .constants import EMOTIONS
from .errors import FerSdkError, InvalidImageError, InvalidInputError
from .files import atomic_path
from .photos import annotate_image, reserved_paths, unique_path
from .rows import face_row

if TYPE_CHECKING:
    from .classifier import Face

FRAMES_PER_CHUNK = 32
log = logging.getLogger(__name__)
#: Frame rate assumed for a video whose file states none (sampling with --fps, annotated copies, smoothing
#: windows, track expiry); its rows' time_s stay empty.
ASSUMED_FPS = 25.0
#: A track not matched for this long ends; a face seen again later gets a new id.
TRACK_TIMEOUT_S = 1.0
#: Smallest box overlap (IoU) that continues a track.
TRACK_MIN_IOU = 0.3


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _landmark_distance(a, b) -> float:
    """Mean landmark distance of two faces over the size of the first box (inf without landmarks)."""
    if a.landmarks is None or b.landmarks is None:
        return math.inf
    d = np.linalg.norm(np.asarray(a.landmarks) - np.asarray(b.landmarks), axis=1).mean()
    return float(d / max(a.box[2], a.box[3], 1))


class FaceTracker:
    """Gives each face a track id that follows it from one sampled frame to the next.

    Each frame, pairs (live track, face) are taken best first: by box IoU (at least ``TRACK_MIN_IOU``), then,
    for faces left over, by landmark distance (under half the box size: a face that moved fast). A track not
    matched for ``timeout_s`` ends. Ids count from 0 in order of appearance; no new dependency, O(tracks x faces).
    """

    def __init__(self, timeout_s: float = TRACK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._tracks: dict[int, tuple[float, Face]] = {}  # id -> (last time seen, last face)
        self._next = 0

    def update(self, t: float, faces: list[Face]) -> list[int]:
        self._tracks = {k: v for k, v in self._tracks.items() if t - v[0] <= self.timeout_s}
        ids: list[int | None] = [None] * len(faces)
        free = set(self._tracks)
        pairs = sorted(
            ((_iou(self._tracks[k][1].box, f.box), k, i) for k in free for i, f in enumerate(faces)),
            reverse=True,
        )
        for iou, k, i in pairs:
            if iou >= TRACK_MIN_IOU and k in free and ids[i] is None:
                ids[i] = k
                free.discard(k)
        near = sorted(
            (_landmark_distance(self._tracks[k][1], f), k, i)
            for k in free
            for i, f in enumerate(faces)
            if ids[i] is None
        )
        for dist, k, i in near:
            if dist < 0.5 and k in free and ids[i] is None:
                ids[i] = k
                free.discard(k)
        out: list[int] = []
        for i, face in enumerate(faces):
            track = ids[i]
            if track is None:
                track = self._next
                self._next += 1
            self._tracks[track] = (t, face)
            out.append(track)
        return out


class Smoother:
    """Causal moving average of each track's probabilities over the last ``seconds``."""

    def __init__(self, seconds: float) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise InvalidInputError(f"smooth={seconds!r} must be a number of seconds > 0 (e.g. smooth=1.0)")
        self.seconds = float(seconds)
        self._history: dict[int, deque] = {}

    def update(self, track: int, t: float, probs: np.ndarray) -> np.ndarray:
        history = self._history.setdefault(track, deque())
        history.append((t, probs))
        while history and history[0][0] <= t - self.seconds + 1e-9:  # window (t - seconds, t], float-safe
            history.popleft()
        return np.mean([p for _, p in history], axis=0)


class VideoSummary:
    """Per-video totals: frames sampled, face rows, tracks (span, dominant emotion), share of rows per emotion."""

    def __init__(self, video: str) -> None:
        self.video = video
        self.frames = 0
        self.rows = 0
        self._tracks: dict[int, dict] = {}
        self._counts = dict.fromkeys(EMOTIONS, 0)

    def add_frame(self) -> None:
        self.frames += 1

    def add(self, track: int, t: float, emotion: str, probs: np.ndarray) -> None:
        self.rows += 1
        self._counts[emotion] += 1
        entry = self._tracks.setdefault(track, {"first_s": t, "last_s": t, "frames": 0, "sum": np.zeros(len(EMOTIONS))})
        entry["last_s"] = t
        entry["frames"] += 1
        entry["sum"] += probs

    def to_dict(self) -> dict:
        tracks = []
        for track, e in sorted(self._tracks.items()):
            mean = e["sum"] / e["frames"]
            tracks.append(
                {
                    "track": track,
                    "first_s": round(e["first_s"], 3),
                    "last_s": round(e["last_s"], 3),
                    "frames": e["frames"],
                    "dominant_emotion": EMOTIONS[int(mean.argmax())],
                    "mean_probabilities": {k: round(float(v), 6) for k, v in zip(EMOTIONS, mean)},
                }
            )
        return {
            "video": self.video,
            "frames_sampled": self.frames,
            "face_rows": self.rows,
            "faces_seen": len(tracks),
            "emotion_share": {k: round(v / self.rows, 6) if self.rows else 0.0 for k, v in self._counts.items()},
            "tracks": tracks,
        }


#: Decoded frames held at once are capped to this many bytes (a chunk of 4K frames is fewer frames).
CHUNK_BYTES = 256 * 1024 * 1024


def _open(path: Path, max_pixels: int | None = None):
    import cv2

    from .files import open_regular
    from .images import DEFAULT_MAX_PIXELS

    open_regular(path, error=InvalidInputError, what="video file").close()  # no FIFO, device or folder
    # an absolute path: FFmpeg reads a name like "file:x.mp4" or "pipe:0" as a protocol, not as this file
    cap = cv2.VideoCapture(str(Path(path).absolute()))
    if not cap.isOpened():
        raise InvalidInputError(f"{path}: OpenCV cannot open this video; check the file or convert it to MP4 (H.264)")
    width, height = int(cap.get(3) or 0), int(cap.get(4) or 0)  # CAP_PROP_FRAME_WIDTH / HEIGHT
    limit = max_pixels or DEFAULT_MAX_PIXELS
    if width * height > limit:
        cap.release()
        raise InvalidImageError(
            f"{path}: frames are {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
            f"(refused before decoding). Fix: if you trust this file, pass max_pixels={width * height} "
            f"(CLI: --max-pixels {width * height}) or larger."
        )
    return cap


def _frames_per_chunk(cap) -> int:
    frame_bytes = max(1, int(cap.get(3) or 0) * int(cap.get(4) or 0) * 3)
    return max(1, min(FRAMES_PER_CHUNK, CHUNK_BYTES // frame_bytes))


def frame_step(native_fps: float, every: int = 1, fps: float | None = None) -> int:
    """How many frames to advance per sample: ``every``, or the step that gives about ``fps`` samples/s."""
    if every < 1:
        raise InvalidInputError(f"every={every!r} must be >= 1 (e.g. every=5)")
    if fps is None:
        return every
    if every != 1:
        raise InvalidInputError(
            f"every={every} and fps={fps} both set how often frames are sampled; give one of them (--every or --fps)"
        )
    if not fps > 0:
        raise InvalidInputError(f"fps={fps!r} must be > 0 (e.g. fps=2)")
    if native_fps <= 0:
        return 1
    return max(1, round(native_fps / fps))


def native_fps(cap) -> float:
    """The frame rate a video file states, or 0.0 when it states none (or nonsense)."""
    value = float(cap.get(5) or 0.0)  # cv2.CAP_PROP_FPS
    return value if math.isfinite(value) and 0 < value <= 1000 else 0.0


def iter_video_faces(
    classifier,
    path: Path,
    *,
    every: int = 1,
    fps: float | None = None,
    on_frames=None,
    on_annotated=None,
    smooth: float | None = None,
    summary: VideoSummary | None = None,
    annotated: str | None = None,
    cap=None,
) -> Iterator[dict]:
    """Yield one ``fer_sdk.rows`` row per face of the sampled frames of ``path``.

    ``smooth``: seconds of each track's history its probabilities are averaged over (``None``: per frame).
    ``annotated``: the annotated copy's path, recorded in each row. ``cap``: ``path`` already opened (by
    ``_open``; released here). A video that states no frame rate is sampled, tracked and annotated as if it
    ran at ``ASSUMED_FPS``; its rows' ``time_s`` stay empty, since the real time is unknown.
    """
    smoother = None if smooth is None else Smoother(smooth)
    tracker = FaceTracker()
    from .images import DEFAULT_MAX_PIXELS

    model = getattr(classifier, "model_name", None)
    version = getattr(classifier, "model_version", None)
    limit = getattr(classifier, "max_pixels", None) or DEFAULT_MAX_PIXELS
    cap = _open(path, limit) if cap is None else cap
    try:
        native = native_fps(cap)
        clock = native or ASSUMED_FPS
        if not native and fps is not None:
            log.warning("%s states no frame rate: --fps %s samples it as if it ran at %s fps", path, fps, ASSUMED_FPS)
        step = frame_step(clock, every, fps)
        chunk = _frames_per_chunk(cap)
        index = 0
        while True:
            frames: list[np.ndarray] = []
            numbers: list[int] = []
            while len(frames) < chunk:
                ok, frame = cap.read()
                if not ok:
                    break
                if frame.shape[0] * frame.shape[1] > limit:
                    raise InvalidImageError(
                        f"{path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, over the pixel limit "
                        f"although the file states a smaller size. Fix: re-encode the video."
                    )
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
                now = frame_no / clock
                tracks = tracker.update(now, faces)
                if summary is not None:
                    summary.add_frame()
                if on_annotated is not None:
                    on_annotated(frame, faces)
                for i, (face, track) in enumerate(zip(faces, tracks)):
                    probs = np.array([face.emotions[e] for e in EMOTIONS])
                    if smoother is not None:
                        probs = smoother.update(track, now, probs)
                    if summary is not None:
                        summary.add(track, now, EMOTIONS[int(probs.argmax())], probs)
                    yield face_row(
                        str(path),
                        i,
                        face,
                        model=model,
                        model_version=version,
                        probabilities=probs,
                        frame=frame_no,
                        time_s=t,
                        track=track,
                        annotated=annotated,
                    )
            if len(frames) < chunk and not ok:
                return
    finally:
        cap.release()


def video_rows(
    classifier,
    path: Path,
    *,
    every: int = 1,
    fps: float | None = None,
    annotate: Path | None = None,
    taken: set[Path] | None = None,
    smooth: float | None = None,
    summary: VideoSummary | None = None,
    progress=None,
) -> Iterator[dict]:
    """Rows of one video (see :func:`iter_video_faces`); with ``annotate`` (a folder) also its annotated copy,
    ``NAME.annotated.mp4``, written to a temporary name and renamed when the video is done (never on failure).

    ``taken``: resolved paths the copy must not take (the inputs, earlier outputs); two videos with the same name
    in different folders get ``clip.annotated.mp4`` and ``clip.annotated-2.mp4``. ``progress``: a
    ``rich.progress.Progress`` to show this video's frames on. Raises ``FerSdkError`` when the video fails.
    """
    import cv2

    if smooth is not None:
        Smoother(smooth)  # validate before any work
    cap = _open(path, getattr(classifier, "max_pixels", None))  # opened once, handed on
    total = int(cap.get(7) or 0)  # cv2.CAP_PROP_FRAME_COUNT
    size = (int(cap.get(3)), int(cap.get(4)))
    clock = native_fps(cap) or ASSUMED_FPS  # the rule iter_video_faces samples by
    on_frames = None
    if progress is not None:
        task = progress.add_task(f"frames of {path.name}", total=total or None)

        def on_frames(n, _task=task):
            progress.advance(_task, n)

    with ExitStack() as stack:
        stack.callback(cap.release)  # iter_video_faces releases it too; releasing twice is harmless
        on_annotated, annotated = None, None
        if annotate is not None:
            target = unique_path(
                Path(annotate) / f"{path.stem}.annotated.mp4", reserved_paths([path]) if taken is None else taken
            )
            tmp = stack.enter_context(atomic_path(target))
            step = frame_step(clock, every, fps)  # the copy holds the sampled frames: it plays at their rate
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), max(clock / step, 1.0), size)
            stack.callback(writer.release)
            if not writer.isOpened():
                raise FerSdkError(
                    f"OpenCV cannot write {target} ({size[0]}x{size[1]}, mp4v); this OpenCV build "
                    "lacks an MP4 encoder or the video reports no frame size: drop --annotate"
                )
            annotated = str(target)

            def on_annotated(frame, faces, _w=writer):
                _w.write(annotate_image(frame, faces))

        yield from iter_video_faces(
            classifier,
            path,
            every=every,
            fps=fps,
            on_frames=on_frames,
            on_annotated=on_annotated,
            smooth=smooth,
            summary=summary,
            annotated=annotated,
            cap=cap,
        )


def make_test_video(
    path: Path,
    images: list[np.ndarray],
    *,
    frames_per_image: int = 5,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """Write a short MP4 that shows each image for ``frames_per_image`` frames (used by tests and demos)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
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

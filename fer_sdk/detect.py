"""Pluggable face detection: the bundled YuNet (default), OpenCV's Haar cascade, a YuNet file, or your own.

``get_detector`` is the one registry that turns a name (``"yunet"``, ``"haar"``), an ``.onnx`` path or an
object into a detector; the Classifier, the CLI, video and Ray all go through it. Every detector gives boxes
``(x, y, w, h)`` as plain Python ints, clipped to the image (boxes with nothing left inside are dropped),
sorted left to right, then top to bottom; ``detect_faces`` gives ``Detection`` objects, which add the
detector's score and five landmarks where it has them (YuNet does, Haar and plain callables do not).
OpenCV detector objects are not thread-safe, so each thread gets its own instance: one detector may be
shared by many threads. ONNX Runtime sessions are thread-safe.
"""

from __future__ import annotations

import os
import threading
from numbers import Real
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from .detection import Box, Detection, normalize_boxes
from .errors import DependencyError, InvalidInputError, ModelError
from .images import as_image
from .registry import REINSTALL, read_verified_file
from .yunet import YuNetDetector

#: Names ``get_detector`` accepts, the first is the default.
DETECTOR_NAMES = ("yunet", "haar")
#: Folder of the bundled face detector files, their manifest (sha256), license and provenance.
DETECTORS_DIR: Path = Path(__file__).resolve().parent / "models" / "detectors"

_OPENCV_FIX = 'Fix: pip install "opencv-python-headless>=4.9,<5" (OpenCV 5 wheels no longer ship the Haar cascades).'
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(image) -> [(x, y, w, h), ...]``.

    ``image`` is uint8 BGR (H, W, 3) or gray (H, W).
    """

    def detect(self, image: np.ndarray) -> list[Box]: ...


class _ThreadLocalDetector:
    """Holds one OpenCV object per thread; subclasses implement ``_create`` and ``_run``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _instance(self):
        instance = getattr(self._local, "instance", None)
        if instance is None:
            instance = self._local.instance = self._create()
        return instance

    def _create(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def __getstate__(self) -> dict:  # threading.local cannot be pickled: rebuild it on the other side
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class HaarDetector(_ThreadLocalDetector):
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python 4.x (nothing is downloaded).

    Images whose longer side exceeds ``max_side`` are searched at that size (INTER_AREA) and the boxes
    scaled back: on a 1920x1080 photo this was ~2x faster and dropped a false positive on fine texture, at the
    price of missing faces smaller than about ``30 * longer_side / max_side`` pixels. ``max_side=None``
    searches at full resolution. ``min_size`` is in pixels of the original image.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (30, 30),
        max_side: int | None = 960,
    ) -> None:
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, Real) or not scale_factor > 1:
            raise InvalidInputError(
                f"HaarDetector: scale_factor must be a number > 1 (e.g. 1.1), got {scale_factor!r}."
            )
        if isinstance(min_neighbors, bool) or not isinstance(min_neighbors, (int, np.integer)) or min_neighbors < 0:
            raise InvalidInputError(f"HaarDetector: min_neighbors must be an int >= 0, got {min_neighbors!r}.")
        if not _is_size(min_size):
            raise InvalidInputError(f"HaarDetector: min_size must be (width, height) positive ints, got {min_size!r}.")
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 64
        ):
            raise InvalidInputError(
                f"HaarDetector: max_side must be an int >= 64 (e.g. 960) or None for full resolution, got {max_side!r}."
            )
        super().__init__()
        self.max_side: int | None = None if max_side is None else int(max_side)
        self.scale_factor: float = float(scale_factor)
        self.min_neighbors: int = int(min_neighbors)
        self.min_size: tuple[int, int] = (int(min_size[0]), int(min_size[1]))
        self.cascade_path: str = _haar_cascade_path()
        self._instance()  # load once now so a broken install fails here, not at the first detect

    def _create(self):
        try:
            classifier = cv2.CascadeClassifier(self.cascade_path)
        except (cv2.error, SystemError) as exc:  # a malformed XML surfaces as SystemError from the binding
            raise DependencyError(
                f"OpenCV could not parse the Haar cascade {self.cascade_path}. {_OPENCV_FIX}"
            ) from exc
        if classifier.empty():
            raise DependencyError(f"OpenCV could not load the Haar cascade {self.cascade_path}. {_OPENCV_FIX}")
        return classifier

    def detect(self, image: np.ndarray) -> list[Box]:
        image = as_image(image, what="detect: image")
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        longer = max(gray.shape[:2])
        scale = 1.0 if self.max_side is None or longer <= self.max_side else self.max_side / longer
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        min_size = tuple(max(1, round(v * scale)) for v in self.min_size)
        found = self._instance().detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=min_size
        )
        if scale < 1.0 and len(found):
            found = np.asarray(found, dtype=np.float64) / scale
        return normalize_boxes(found, image.shape)

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        """``Detection`` objects (no score, no landmarks: the cascade has neither)."""
        return [Detection(box) for box in self.detect(image)]

    def __repr__(self) -> str:
        return (
            f"HaarDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, max_side={self.max_side})"
        )


class CallableDetector:
    """Adapts ``fn(image) -> boxes`` (or an object's ``detect``) to ``FaceDetector``, checking its boxes."""

    def __init__(self, fn, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)

    def detect(self, image: np.ndarray) -> list[Box]:
        return [d.box for d in self.detect_faces(image)]

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        """Run the function; it may return boxes or ``Detection`` objects (their score and landmarks are kept)."""
        image = as_image(image, what="detect: image")
        found = self.fn(image)
        source = f"face detector {self.name}"
        if isinstance(found, (list, tuple)) and found and all(isinstance(d, Detection) for d in found):
            out = []
            for d in found:
                boxes = normalize_boxes([d.box], image.shape, source=source)
                if boxes:
                    out.append(Detection(boxes[0], d.score, d.landmarks))
            return sorted(out, key=lambda d: d.box)
        return [Detection(box) for box in normalize_boxes(found, image.shape, source=source)]

    def __repr__(self) -> str:
        return f"CallableDetector({self.name})"


def detect_faces(detector, image: np.ndarray) -> list[Detection]:
    """``Detection`` objects from any detector: ``detect_faces`` when it has one, else its boxes from ``detect``."""
    method = getattr(detector, "detect_faces", None)
    if callable(method):
        return list(method(image))
    return [Detection(box) for box in normalize_boxes(detector.detect(image), np.shape(image))]


def detect_faces_batch(detector, images: list[np.ndarray]) -> list[list[Detection]]:
    """``detect_faces`` for several photos, in one call where the detector batches (the bundled YuNet does)."""
    method = getattr(detector, "detect_faces_batch", None)
    if callable(method):
        return list(method(images))
    return [detect_faces(detector, image) for image in images]


def bundled_yunet_file() -> tuple[str, bytes]:
    """``(file name, bytes)`` of the YuNet file shipped in ``models/detectors``, checked against its sha256."""
    import json

    try:
        entry = json.loads((DETECTORS_DIR / "manifest.json").read_text(encoding="utf-8"))["detectors"]["yunet"]
        file, sha256 = str(entry["file"]), str(entry["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"the bundled face detector is missing or unreadable ({exc}); {REINSTALL}") from None
    return file, read_verified_file(DETECTORS_DIR / file, sha256, what="bundled face detector")


def bundled_yunet(**options) -> YuNetDetector:
    """The bundled YuNet (sha256 checked on the very bytes it loads)."""
    file, data = bundled_yunet_file()
    return YuNetDetector(data, name=f"yunet ({file})", **options)


def get_detector(spec=None, *, min_score: float | None = None, min_face: int | None = None) -> FaceDetector:
    """Build a detector from ``spec`` (the one place names, paths and objects become detectors).

    - ``None`` or ``"yunet"``: the bundled YuNet (ONNX Runtime; scores and five landmarks).
    - ``"haar"``: ``HaarDetector()`` (OpenCV's frontal-face cascade; boxes only).
    - a ``str`` / ``os.PathLike`` ending in ``.onnx``: ``YuNetDetector(spec)``, your own YuNet file (dynamic or
      fixed input size).
    - ``HaarDetector`` / ``YuNetDetector`` / ``CallableDetector``: returned as is.
    - an object with a ``detect(image)`` method, or a plain callable ``image -> boxes``: wrapped so its
      boxes are checked, clipped, converted to ints and sorted.

    ``min_score`` (YuNet only: 0..1, default 0.6) and ``min_face`` (pixels, default 0 for YuNet and 30 for Haar)
    configure the detectors built here from a name or path; for a detector object, set them on the object.
    """
    options: dict[str, Any] = {}  # min_score (float) and min_face (int) for the detector built here
    if min_score is not None:
        options["min_score"] = min_score
    if min_face is not None:
        options["min_face"] = min_face
    name = spec.strip().lower() if isinstance(spec, str) else None
    if spec is None or name == "yunet":
        return bundled_yunet(**options)
    if name == "haar":
        if "min_score" in options:
            raise InvalidInputError(
                "min_score: the Haar cascade gives no scores; drop min_score (--min-score) or use detector='yunet'."
            )
        if "min_face" in options:
            size = options["min_face"]
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
                raise InvalidInputError(f"HaarDetector: min_face={size!r} must be an int >= 0 pixels (e.g. 30).")
            return HaarDetector(min_size=(max(1, int(size)), max(1, int(size))))
        return HaarDetector()
    if isinstance(spec, (str, os.PathLike)):
        if os.fspath(spec).lower().endswith(".onnx"):
            return YuNetDetector(spec, **options)
    elif options:
        raise InvalidInputError(
            f"min_score/min_face configure a detector built from a name or path, not {type(spec).__name__}; "
            "set them on your detector object instead (e.g. YuNetDetector(path, min_score=0.7))."
        )
    elif isinstance(spec, (HaarDetector, YuNetDetector, CallableDetector)):
        return spec
    elif callable(getattr(spec, "detect", None)):
        return CallableDetector(spec.detect, name=type(spec).__name__)
    elif callable(spec):
        return CallableDetector(spec)
    raise InvalidInputError(
        f"detector: got {spec!r} ({type(spec).__name__}); use 'yunet' (the default: bundled YuNet) or 'haar' "
        "(OpenCV Haar cascade), the path of a YuNet .onnx file, an object with detect(image) -> "
        "[(x, y, w, h), ...], or a callable image -> [(x, y, w, h), ...]."
    )


def portable_spec(spec):
    """``spec`` as it can be sent to other processes or machines: names stay names, paths become absolute."""
    if isinstance(spec, (str, os.PathLike)) and not (isinstance(spec, str) and spec.strip().lower() in DETECTOR_NAMES):
        return str(Path(spec).absolute())
    return spec


def _haar_cascade_path() -> str:
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not folder or not hasattr(cv2, "CascadeClassifier"):
        raise DependencyError(f"this OpenCV ({cv2.__version__}) ships no Haar cascades (cv2.data). {_OPENCV_FIX}")
    path = os.path.join(folder, HAAR_CASCADE)
    if not os.path.isfile(path):
        raise DependencyError(f"the Haar cascade {path} is missing from this OpenCV install. {_OPENCV_FIX}")
    return path


def _is_size(value) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    )

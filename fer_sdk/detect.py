"""Pluggable face detection: OpenCV's Haar cascade (default), YuNet (user-supplied ONNX), or your own.

Every detector returns boxes ``(x, y, w, h)`` as plain Python ints, clipped to the image (boxes with
nothing left inside are dropped), sorted left to right, then top to bottom. OpenCV detector objects are
not thread-safe, so each thread gets its own instance: one detector may be shared by many threads.
"""

from __future__ import annotations

import math
import os
import threading
from numbers import Real
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from .errors import DependencyError, InvalidInputError, ModelError, positive_int
from .images import as_image

Box = tuple[int, int, int, int]

_OPENCV_FIX = (
    'Fix: pip install "opencv-python-headless>=4.9,<5" (OpenCV 5 wheels no longer ship the Haar cascades).'
)
_YUNET_FIX = (
    "Fix: download face_detection_yunet_2023mar.onnx from the OpenCV Zoo "
    "(https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet) and pass its path."
)
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
    ):
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, Real) or not scale_factor > 1:
            raise InvalidInputError(
                f"HaarDetector: scale_factor must be a number > 1 (e.g. 1.1), got {scale_factor!r}."
            )
        if (
            isinstance(min_neighbors, bool)
            or not isinstance(min_neighbors, (int, np.integer))
            or min_neighbors < 0
        ):
            raise InvalidInputError(
                f"HaarDetector: min_neighbors must be an int >= 0, got {min_neighbors!r}."
            )
        if not _is_size(min_size):
            raise InvalidInputError(
                f"HaarDetector: min_size must be (width, height) positive ints, got {min_size!r}."
            )
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 64
        ):
            raise InvalidInputError(
                f"HaarDetector: max_side must be an int >= 64 (e.g. 960) or None for full resolution, "
                f"got {max_side!r}."
            )
        super().__init__()
        self.max_side = None if max_side is None else int(max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = (int(min_size[0]), int(min_size[1]))
        self.cascade_path = _haar_cascade_path()
        self._instance()  # load once now so a broken install fails here, not at the first detect

    def _create(self):
        try:
            classifier = cv2.CascadeClassifier(self.cascade_path)
        except (cv2.error, SystemError) as exc:  # a malformed XML surfaces as SystemError from the binding
            raise DependencyError(
                f"OpenCV could not parse the Haar cascade {self.cascade_path}. {_OPENCV_FIX}"
            ) from exc
        if classifier.empty():
            raise DependencyError(
                f"OpenCV could not load the Haar cascade {self.cascade_path}. {_OPENCV_FIX}"
            )
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

    def __repr__(self) -> str:
        return (
            f"HaarDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, max_side={self.max_side})"
        )


class YuNetDetector(_ThreadLocalDetector):
    """OpenCV's YuNet CNN face detector (``cv2.FaceDetectorYN``) with an ONNX file you supply.

    Get ``face_detection_yunet_2023mar.onnx`` from the OpenCV Zoo
    (https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet). The input size is set
    per image; gray and BGRA images are converted to BGR first.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ):
        for name, value in (("score_threshold", score_threshold), ("nms_threshold", nms_threshold)):
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
                raise InvalidInputError(f"YuNetDetector: {name} must be a number in [0, 1], got {value!r}.")
        top_k = positive_int("top_k", top_k, "5000", owner="YuNetDetector")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DependencyError(f"this OpenCV build has no cv2.FaceDetectorYN. {_OPENCV_FIX}")
        path = Path(model_path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ModelError(f"YuNet model {path} {what}. {_YUNET_FIX}")
        try:
            self._model = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"YuNet model {path} cannot be read ({exc}). {_YUNET_FIX}") from exc
        super().__init__()
        self.model_path = path
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = top_k
        self.detect(np.zeros((32, 32, 3), np.uint8))  # fail now on a file that is not a YuNet model

    def _create(self):
        try:  # the buffer overload reads the bytes we loaded: non-ASCII paths work on every OS
            detector = cv2.FaceDetectorYN.create(
                "onnx",
                np.frombuffer(self._model, np.uint8),
                np.empty(0, np.uint8),
                (320, 320),
                self.score_threshold,
                self.nms_threshold,
                self.top_k,
            )
        except cv2.error as exc:
            lines = str(exc).strip().splitlines()
            raise ModelError(
                f"{self.model_path} is not a usable YuNet ONNX model "
                f"(OpenCV: {lines[-1] if lines else exc}). "
                f"{_YUNET_FIX}"
            ) from exc
        if detector is None:
            raise ModelError(f"{self.model_path} is not a usable YuNet ONNX model. {_YUNET_FIX}")
        return detector

    def detect(self, image: np.ndarray) -> list[Box]:
        image = as_image(image, what="detect: image")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        detector = self._instance()
        try:
            detector.setInputSize((image.shape[1], image.shape[0]))
            _, faces = detector.detect(image)
        except cv2.error as exc:
            lines = str(exc).strip().splitlines()
            raise ModelError(
                f"{self.model_path} failed as a YuNet face detector on a {image.shape} image (OpenCV: "
                f"{lines[-1] if lines else exc}). {_YUNET_FIX}"
            ) from exc
        return normalize_boxes(None if faces is None else faces[:, :4], image.shape)

    def __repr__(self) -> str:
        return f"YuNetDetector({str(self.model_path)!r}, score_threshold={self.score_threshold})"


class CallableDetector:
    """Adapts ``fn(image) -> boxes`` (or an object's ``detect``) to ``FaceDetector``, checking its boxes."""

    def __init__(self, fn, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)

    def detect(self, image: np.ndarray) -> list[Box]:
        image = as_image(image, what="detect: image")
        return normalize_boxes(self.fn(image), image.shape, source=f"face detector {self.name}")

    def __repr__(self) -> str:
        return f"CallableDetector({self.name})"


def get_detector(spec=None) -> FaceDetector:
    """Build a detector from ``spec``.

    - ``None`` or ``"haar"``: ``HaarDetector()``.
    - a ``str`` / ``os.PathLike`` ending in ``.onnx``: ``YuNetDetector(spec)``.
    - ``HaarDetector`` / ``YuNetDetector`` / ``CallableDetector``: returned as is.
    - an object with a ``detect(image)`` method, or a plain callable ``image -> boxes``: wrapped so its
      boxes are checked, clipped, converted to ints and sorted.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "haar"):
        return HaarDetector()
    if isinstance(spec, (str, os.PathLike)):
        if os.fspath(spec).lower().endswith(".onnx"):
            return YuNetDetector(spec)
    elif isinstance(spec, (HaarDetector, YuNetDetector, CallableDetector)):
        return spec
    elif callable(getattr(spec, "detect", None)):
        return CallableDetector(spec.detect, name=type(spec).__name__)
    elif callable(spec):
        return CallableDetector(spec)
    raise InvalidInputError(
        f"detector: got {spec!r} ({type(spec).__name__}); use None or 'haar' (OpenCV Haar cascade), the path "
        "of a YuNet .onnx file, an object with detect(image) -> [(x, y, w, h), ...], or a callable "
        "image -> [(x, y, w, h), ...]."
    )


def normalize_boxes(boxes, image_shape, *, source: str = "face detector") -> list[Box]:
    """Boxes -> sorted list of int ``(x, y, w, h)`` clipped to the image; empty ones dropped.

    Raises ``InvalidInputError`` when ``boxes`` is not a sequence of 4 finite numbers with w, h > 0.
    """
    if boxes is None:
        return []
    if isinstance(boxes, np.ndarray):
        if boxes.size == 0:
            return []
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidInputError(
                f"{source} returned an array of shape {boxes.shape}; expected (N, 4) boxes."
            )
        boxes = boxes.tolist()
    height, width = image_shape[:2]
    out = []
    try:
        items = list(boxes)
    except TypeError:
        raise InvalidInputError(
            f"{source} returned {boxes!r}; expected a list of (x, y, w, h) boxes."
        ) from None
    for box in items:
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
            raise InvalidInputError(
                f"{source} returned the box {box!r}; each box must be (x, y, w, h) finite numbers "
                "with w, h > 0."
            )
        x, y, w, h = values
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 > x0 and y1 > y0:
            out.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return sorted(out)


def _haar_cascade_path() -> str:
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not folder or not hasattr(cv2, "CascadeClassifier"):
        raise DependencyError(
            f"this OpenCV ({cv2.__version__}) ships no Haar cascades (cv2.data). {_OPENCV_FIX}"
        )
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

"""``Classifier``: emotion probabilities for face crops, and detect-then-classify for whole photos.

Everything the runtime needs to know about a model (labels, input size, normalisation) is read from the
ONNX file's ``fer_sdk`` metadata. One ``Classifier`` may be shared by many threads: ONNX Runtime's
``session.run`` is thread-safe, its only mutable state is the ``analyze_many`` thread pool (made and ended
under a lock), and the OpenCV detectors keep one instance per thread.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .constants import EMOTIONS
from .detect import HaarDetector, detect_faces_batch, get_detector
from .detection import LANDMARKS, Detection
from .errors import FerSdkError, InvalidInputError, ModelError, positive_int
from .framing import Framing, aligned_crop, check_margin, frame_box
from .images import is_pil_image, load_image, plain_array
from .metadata import ModelMetadata
from .preprocess import Preprocessing, crop_face, flip_horizontal, prepare_faces
from .registry import ModelSpec
from .runtime import (
    check_threads,
    create_session,
    import_onnxruntime,
    read_metadata,
    session_source,
    usable_cores,
)
from .yunet import YuNetDetector

_SOURCE_TYPES = (str, bytes, bytearray, memoryview, os.PathLike)


def _is_source(value: Any) -> bool:
    """A path, encoded bytes or a PIL image: something ``load_image`` turns into an array."""
    return isinstance(value, _SOURCE_TYPES) or is_pil_image(value)


logger = logging.getLogger("fer_sdk")
#: ``predict_proba`` warns when a face's shorter side is over this many times the model's input (a photo?).
LARGE_FACE_FACTOR = 8
#: Box margin for detectors the SDK knows no framing for (custom objects and callables).
CUSTOM_DETECTOR_MARGIN = 0.1


@dataclass(frozen=True)
class Face:
    """One detected face: its box in the photo, the emotion probabilities, and what the detector said.

    ``landmarks``: five (x, y) points in photo pixels (right eye, left eye, nose tip, right and left mouth
    corners) and ``detection_score`` the detector's confidence in 0..1; both ``None`` for detectors that give
    neither (the Haar cascade, box-only custom detectors).
    """

    box: tuple[int, int, int, int]  # x, y, w, h in the photo
    emotions: dict[str, float]  # name -> probability, EMOTIONS order
    emotion: str  # top name
    score: float  # its probability
    landmarks: tuple[tuple[float, float], ...] | None = None
    detection_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"box": [x, y, w, h], "emotion", "score", "emotions": {...}, "detection_score",
        "landmarks": [[x, y] * 5] or None}``."""
        return {
            "box": [int(v) for v in self.box],
            "emotion": self.emotion,
            "score": float(self.score),
            "emotions": {k: float(v) for k, v in self.emotions.items()},
            "detection_score": None if self.detection_score is None else float(self.detection_score),
            "landmarks": None if self.landmarks is None else [[float(x), float(y)] for x, y in self.landmarks],
        }

    def detection_values(self, digits: int = 2) -> list[float | None]:
        """Values for ``fer_sdk.detection.DETECTION_COLUMNS``: score (6 decimals), landmarks (``digits``);
        ``None`` where absent."""
        score = None if self.detection_score is None else round(float(self.detection_score), 6)
        if self.landmarks is None:
            return [score, *([None] * (2 * len(LANDMARKS)))]
        return [score, *(round(float(v), digits) for point in self.landmarks for v in point)]


#: Bundled LiteRT models are named after their ONNX twin with this suffix (``deep-int8-litert``).
LITERT_SUFFIX = "-litert"


class Classifier:
    """Classify 48x48 face crops (``predict_proba``/``predict``) or whole photos (``analyze``/``analyze_many``).

    Args:
        model: a bundled model name (default: the manifest's best model) or a path to an ONNX file this
            project exported. With ``session=`` it is only used for naming.
        providers: ``None`` (CPU), ``"auto"`` (CUDA when available) or a list of ONNX Runtime providers.
        batch_size: faces per ``session.run`` call.
        threads: ONNX Runtime intra-op threads (``None``: ONNX Runtime's default).
        session: an existing ``onnxruntime.InferenceSession`` to use instead of loading ``model``.
        detector: face detector for ``analyze``, anything ``fer_sdk.detect.get_detector`` accepts: ``None`` or
            ``"yunet"`` (the bundled YuNet, default), ``"haar"`` (OpenCV Haar cascade), a YuNet ``.onnx`` path,
            an object with ``detect(image) -> [(x, y, w, h), ...]`` (must be thread-safe when the classifier is
            shared by threads) or such a callable.
        min_score: drop faces the detector scores below this (YuNet; default 0.6).
        min_face: drop faces whose box is smaller than this many pixels (default: 0 for YuNet, 30 for Haar).
        align: cut faces with landmarks so the eyes are level and sit where the model's training faces have
            them (``fer_sdk.framing``); faces without landmarks use the box rule.
        face_margin: ``None`` (default): the model's training framing (see ``fer_sdk.framing``). A number: with
            ``align`` the frame grows by that fraction per side, without it the detector's box does (custom
            detectors without a known framing use 0.1).
        flip_tta: average each face's probabilities with those of its horizontal mirror.
        max_pixels: refuse photos larger than this many pixels (``None``: the loader's default).
        workers: threads ``analyze_many`` decodes and detects on (``None``: all usable cores). The pool lives
            as long as the Classifier (``close()`` or ``with Classifier() as clf:`` ends it sooner).
        backend: ``None`` (from the model: ``.tflite`` files and ``*-litert`` bundled models run on LiteRT, others on
            ONNX Runtime), ``"onnxruntime"``, or ``"litert"`` (``Classifier("deep-int8", backend="litert")`` loads
            the bundled ``deep-int8-litert``; needs ``pip install "fer-sdk[litert]"``).
        channels: the channel order of color numpy arrays you pass: ``"bgr"`` (OpenCV's, default) or ``"rgb"``
            (PIL, imageio, matplotlib). Files, bytes and PIL images are always read correctly.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        providers: str | Sequence[Any] | None = None,
        batch_size: int = 64,
        threads: int | None = None,
        session: Any = None,
        detector: Any = None,
        min_score: float | None = None,
        min_face: int | None = None,
        align: bool = True,
        face_margin: float | None = None,
        flip_tta: bool = False,
        max_pixels: int | None = None,
        workers: int | None = None,
        channels: str = "bgr",
        backend: str | None = None,
    ) -> None:
        import_onnxruntime()  # DependencyError with the pip command before anything else
        self._batch_size = positive_int("batch_size", batch_size, "64")
        self._threads = check_threads(threads)
        if not isinstance(flip_tta, (bool, np.bool_)):
            raise InvalidInputError(f"flip_tta={flip_tta!r} must be True or False")
        self._flip_tta = bool(flip_tta)
        self._face_margin = check_margin(face_margin)
        if not isinstance(align, (bool, np.bool_)):
            raise InvalidInputError(f"align={align!r} must be True or False")
        self._align = bool(align)
        self._workers = positive_int("workers", workers, "2", none_means="all usable cores")
        if channels not in ("bgr", "rgb"):
            raise InvalidInputError(
                f"channels={channels!r} must be 'bgr' (OpenCV's order, the default) or 'rgb' (PIL, imageio, "
                "matplotlib arrays)"
            )
        self._rgb = channels == "rgb"
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if max_pixels is not None:
            max_pixels = positive_int("max_pixels", max_pixels, "40_000_000")
        self._max_pixels = max_pixels

        if backend not in (None, "onnxruntime", "litert"):
            raise InvalidInputError(
                f"backend={backend!r} must be 'onnxruntime' (default for .onnx files) or 'litert' (.tflite files, "
                "with the litert extra)"
            )
        if session is None:
            if model is None:
                model = registry.default_model_name()
            if backend == "litert" and registry._is_name(model) and not model.endswith(LITERT_SUFFIX):
                twin = model + LITERT_SUFFIX  # deep-int8 -> deep-int8-litert, the bundled .tflite twin
                if twin not in registry.model_names():
                    lite = [n for n in registry.model_names() if n.endswith(LITERT_SUFFIX)]
                    raise InvalidInputError(
                        f"{model!r} has no bundled LiteRT twin; with backend='litert' pass one of {lite} or a .tflite "
                        "file (or drop backend= to run it on ONNX Runtime)"
                    )
                model = twin
            path, self._spec = registry.resolve_model(model, verify=False)
            self._model_path: Path | None = path
            self._name = self._spec.name if self._spec else path.name
            # a bundled model runs from the very bytes whose sha256 was checked
            source_data: bytes | Path = registry.read_verified(self._spec) if self._spec else path
            litert = (self._spec.backend == "litert") if self._spec else path.suffix.lower() == ".tflite"
            if backend == "onnxruntime" and litert:
                raise InvalidInputError(f"{self._name} is a LiteRT (.tflite) model; drop backend='onnxruntime'")
            if backend == "litert" and not litert:
                raise InvalidInputError(
                    f"{self._name} is an ONNX model, which LiteRT cannot run; pass a .tflite file or drop backend="
                )
            if litert:
                if providers not in (None, "auto", "cpu", ["cpu"], ["CPUExecutionProvider"]):
                    raise InvalidInputError(
                        f"providers={providers!r} are ONNX Runtime's; a LiteRT model runs on the CPU with XNNPACK: "
                        "drop providers="
                    )
                from .litert import LiteRTSession

                self._session = LiteRTSession(source_data, threads=self._threads, source=self._name)
            else:
                self._session = create_session(source_data, providers, self._threads)
            source = str(path)
        else:
            if backend is not None:
                raise InvalidInputError(
                    f"backend={backend!r} chooses how the Classifier loads a model; with session= the session is "
                    "yours: drop backend="
                )
            if providers is not None or threads is not None:
                raise InvalidInputError(
                    "providers= and threads= configure a session the Classifier creates; with session= set them "
                    "on your InferenceSession instead (or drop session= to let the Classifier load the model)"
                )
            if not hasattr(session, "run") or not hasattr(session, "get_modelmeta"):
                raise InvalidInputError(
                    f"session={type(session).__name__} is not an onnxruntime.InferenceSession; pass one, e.g. "
                    "session=onnxruntime.InferenceSession('model.onnx')"
                )
            self._session = session
            self._spec = None
            source = session_source(session) if model is None else str(model)
            self._model_path = _session_path(session)
            if model is not None:
                self._name = str(model)
            else:
                self._name = self._model_path.name if self._model_path else "<injected session>"

        self._model_metadata = read_metadata(self._session, source)
        self._metadata = self._model_metadata.to_dict()
        self._prep = Preprocessing.from_metadata(self._metadata)
        labels = self._model_metadata.labels
        if labels == EMOTIONS:
            self._columns: np.ndarray | None = None
        elif sorted(labels) == sorted(EMOTIONS):
            # model column holding each EMOTIONS entry
            self._columns = np.array([labels.index(e) for e in EMOTIONS])
        else:
            raise ModelError(
                f"{source}: metadata labels {list(labels)} are not the FER2013 emotions {list(EMOTIONS)}; "
                "export the model with this project (fer-sdk export)"
            )
        self._logits = self._model_metadata.output.kind == "logits"
        self._input_name = self._model_metadata.input.name
        self._output_name = self._model_metadata.output.name

        self._framing = Framing.from_metadata(self._metadata, source)
        self._model_version: str | None = None
        # Detectors from get_detector are thread-safe (ONNX Runtime sessions; one OpenCV object per thread).
        self._detector = get_detector(detector, min_score=min_score, min_face=min_face)

    # ------------------------------------------------------------------ properties
    @property
    def labels(self) -> tuple[str, ...]:
        """Column names of ``predict_proba``: always ``EMOTIONS``."""
        return EMOTIONS

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the model's ``fer_sdk`` metadata."""
        return copy.deepcopy(self._metadata)

    @property
    def model_metadata(self) -> ModelMetadata:
        """The model's metadata as the typed contract (``fer_sdk.metadata.ModelMetadata``)."""
        return self._model_metadata

    @property
    def providers(self) -> list[str]:
        """Providers the session actually runs on (``session.get_providers()``)."""
        return list(self._session.get_providers())

    @property
    def model_path(self) -> Path | None:
        return self._model_path

    @property
    def model_name(self) -> str:
        """What result rows call the model: the bundled name (``"deep-int8"``), else the file's name."""
        return self._name

    @property
    def model_version(self) -> str | None:
        """Which build of the model ran: the fer-sdk release for a bundled model (they change only with a
        version bump), else ``"sha256:"`` and the first 12 hex digits of the file's sha256; ``None`` for an
        injected session without a file."""
        if self._model_version is None:
            if self._spec is not None:
                from .version import __version__

                self._model_version = __version__
            elif self._model_path is not None and self._model_path.is_file():
                from .registry import sha256_file

                self._model_version = "sha256:" + sha256_file(self._model_path)[:12]
        return self._model_version

    @property
    def spec(self) -> ModelSpec | None:
        """The registry spec when a bundled model was loaded by name, else ``None``."""
        return self._spec

    @property
    def session(self) -> Any:
        return self._session

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def flip_tta(self) -> bool:
        return self._flip_tta

    @property
    def max_pixels(self) -> int | None:
        """Pixel limit for photos (``None``: the image loader's default)."""
        return self._max_pixels

    @property
    def preprocessing(self) -> Any:
        return self._prep

    def __repr__(self) -> str:
        return (
            f"Classifier(model={self._name!r}, precision={self._model_metadata.precision!r}, "
            f"providers={self.providers}, batch_size={self._batch_size}, flip_tta={self._flip_tta})"
        )

    # ------------------------------------------------------------------ face crops
    def _chunks(self, faces: Any, convert: bool = True):
        """The model's float32 batches for ``faces``, at most ``batch_size`` faces each, converted one at a time
        (so memory is the input plus a few batches, whatever the input's size)."""
        if _is_source(faces):  # one image file / encoded buffer / PIL image holding one face crop
            faces = [faces]
        if isinstance(faces, np.ndarray):
            faces = plain_array(faces, what="faces")
            # uint16 is judged on the whole array (its 8-bit-in-16-bit check), empty arrays are checked as given
            if _is_batch(faces) and len(faces) and faces.dtype != np.uint16:
                for start in range(0, len(faces), self._batch_size):
                    chunk = faces[start : start + self._batch_size]
                    yield prepare_faces(self._bgr(chunk) if convert else chunk, self._prep)
                return
            if convert:
                self._warn_if_photo(faces)
            yield prepare_faces(self._bgr(faces) if convert else faces, self._prep)
            return
        if not isinstance(faces, (list, tuple)):
            yield prepare_faces(faces, self._prep)  # raises the accepted-inputs message
            return
        pending: list[Any] = []
        warned = False
        first = 0  # the index in ``faces`` of pending[0], so errors name the caller's index
        for position, item in enumerate(faces):
            if _is_source(item):
                item = load_image(item, max_pixels=self._max_pixels)
            elif convert:
                item = self._bgr(item)
            if convert and not warned and isinstance(item, np.ndarray) and item.ndim in (2, 3) and not _is_batch(item):
                warned = self._warn_if_photo(item)
            if isinstance(item, np.ndarray) and _is_batch(plain_array(item, what=f"faces[{position}]")):
                if pending:
                    yield prepare_faces(pending, self._prep, first_index=first)
                    pending = []
                yield from self._chunks(item, convert)
                continue
            if not pending:
                first = position
            pending.append(item)
            if len(pending) == self._batch_size:
                yield prepare_faces(pending, self._prep, first_index=first)
                pending = []
        if pending:
            yield prepare_faces(pending, self._prep, first_index=first)

    def _bgr(self, value: Any) -> Any:
        """A color array given as RGB (``channels="rgb"``) turned into BGR; anything else as it is."""
        if self._rgb and isinstance(value, np.ndarray) and value.ndim in (3, 4) and value.shape[-1] in (3, 4):
            order = [2, 1, 0] if value.shape[-1] == 3 else [2, 1, 0, 3]
            return value[..., order]
        return value

    def _load(self, image: Any) -> np.ndarray:
        return load_image(self._bgr(image), max_pixels=self._max_pixels)

    def _warn_if_photo(self, image: np.ndarray) -> bool:
        """Log a warning when a "face" is far larger than a face crop: most likely a whole photo."""
        side = min(image.shape[:2])
        if side <= LARGE_FACE_FACTOR * max(self._prep.height, self._prep.width):
            return False
        logger.warning(
            "predict/predict_proba got a %dx%d image as one face crop; it is classified whole. If it is a photo, "
            "use analyze() (or analyze_many), which finds the faces first",
            image.shape[1],
            image.shape[0],
        )
        return True

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), len(EMOTIONS)), np.float32)
        for start in range(0, len(batch), self._batch_size):
            chunk = np.ascontiguousarray(batch[start : start + self._batch_size], dtype=np.float32)
            (probs,) = self._session.run([self._output_name], {self._input_name: chunk})
            probs = np.asarray(probs)
            if probs.shape != (len(chunk), len(EMOTIONS)):
                raise ModelError(
                    f"{self._name} returned shape {probs.shape} for {len(chunk)} faces, expected "
                    f"({len(chunk)}, {len(EMOTIONS)}); re-export the model"
                )
            if self._logits:  # a model that ends on logits (LiteRT INT8): softmax here, in float
                probs = _softmax(probs, self._name)
            _check_probabilities(probs, self._name)
            out[start : start + len(chunk)] = probs
        return out

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        probs = self._run(batch)
        if self._flip_tta:
            probs = (probs + self._run(flip_horizontal(batch))) / 2
        if self._columns is not None:
            probs = probs[:, self._columns]
        probs = probs / probs.sum(axis=1, keepdims=True)  # exact row sums (INT8 softmax drifts by ~1e-7)
        return probs.astype(np.float32, copy=False)

    def predict_proba(self, faces: Any, *, progress: Callable[[int], Any] | None = None) -> np.ndarray:
        """(N, 7) float32 probabilities, columns in ``EMOTIONS`` order, rows in input order.

        ``faces``: one face (H, W) gray or (H, W, 3) BGR of any size, a batch (N, H, W) / (N, H, W, 1) /
        (N, H, W, 3), uint8 or float, a list of such arrays, or a list of image paths / encoded bytes.
        Faces are converted batch by batch, so a large input costs little more memory than itself.
        ``progress``: called with the number of faces of each batch once it is classified (a progress bar's
        ``advance``).
        """
        return self._proba(faces, convert=True, progress=progress)

    def _proba(self, faces: Any, *, convert: bool, progress: Callable[[int], Any] | None = None) -> np.ndarray:
        """``predict_proba``; ``convert=False`` for the SDK's own crops: BGR whatever ``channels``, and large
        because they are cut at the photo's resolution (no "is this a photo?" warning)."""
        parts = []
        for batch in self._chunks(faces, convert):
            parts.append(self._probabilities(batch))
            if progress is not None:
                progress(len(batch))
        parts = [p for p in parts if len(p)]
        if not parts:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict(self, faces: Any) -> list[str]:
        """Top emotion name per face (see ``predict_proba`` for accepted inputs)."""
        probs = self.predict_proba(faces)
        return [EMOTIONS[i] for i in probs.argmax(axis=1)]

    # ------------------------------------------------------------------ whole photos
    @property
    def detector(self) -> Any:
        """The face detector ``analyze`` uses."""
        return self._detector

    @property
    def framing(self) -> Framing:
        """The framing the model was trained on (from its metadata), which detected faces are cut to."""
        return self._framing

    @property
    def align(self) -> bool:
        return self._align

    @property
    def face_margin(self) -> float | None:
        return self._face_margin

    def crop(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """Cut one detected face out of ``image`` as ``analyze`` does (see ``align`` and ``face_margin``)."""
        if self._align and detection.landmarks is not None:
            return aligned_crop(image, detection.landmarks, self._framing, self._face_margin or 0.0)
        if self._face_margin is not None:
            return crop_face(image, detection.box, self._face_margin)
        if isinstance(self._detector, YuNetDetector):
            return crop_face(image, frame_box(detection.box, self._framing.yunet_box))
        if isinstance(self._detector, HaarDetector):
            return crop_face(image, frame_box(detection.box, self._framing.haar_box))
        return crop_face(image, detection.box, CUSTOM_DETECTOR_MARGIN)

    def detect(self, image: Any) -> list[Detection]:
        """The faces the detector finds in one photo (path, bytes or array), without classifying them."""
        return detect_faces_batch(self._detector, [self._load(image)])[0]

    def _detect_group(self, images: list[np.ndarray]) -> list[tuple[list[Detection], list[np.ndarray]]]:
        found = detect_faces_batch(self._detector, images)
        return [(dets, [self.crop(img, d) for d in dets]) for img, dets in zip(images, found)]

    def _load_and_detect(self, images: list[Any], keep_errors: bool = False) -> list[Any]:
        """``(detections, crops)`` per image; with ``keep_errors`` an image's ``FerSdkError`` takes its place
        (a batch whose detection fails is redone image by image, so one bad photo costs only itself)."""
        if not keep_errors:
            return self._detect_group([self._load(img) for img in images])
        out: list[Any] = [None] * len(images)
        loaded, where = [], []
        for i, img in enumerate(images):
            try:
                loaded.append(self._load(img))
                where.append(i)
            except FerSdkError as exc:
                out[i] = exc
        groups: list[Any]  # per image: its (detections, crops), or the FerSdkError that image raised
        try:
            groups = list(self._detect_group(loaded))
        except FerSdkError:
            groups = []
            for image in loaded:
                try:
                    groups.append(self._detect_group([image])[0])
                except FerSdkError as exc:
                    groups.append(exc)
        for i, group in zip(where, groups):
            out[i] = group
        return out

    def _run_shares(self, shares: list[list[Any]], keep_errors: bool) -> list[list[Any]]:
        """``_load_and_detect`` of each share on the Classifier's pool (made on first use with a thread per
        usable core; a call asking for more threads gets a pool of its own). Work is handed over under the lock,
        so ``close()`` from another thread waits for it instead of cutting it off."""
        if len(shares) > max(usable_cores(), self._workers or 1):
            with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="fer_sdk-detect") as own:
                return list(own.map(lambda share: self._load_and_detect(share, keep_errors), shares))
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(usable_cores(), self._workers or 1), thread_name_prefix="fer_sdk-detect"
                )
            futures = [self._pool.submit(self._load_and_detect, share, keep_errors) for share in shares]
        return [f.result() for f in futures]

    def _faces(self, detections: list[Detection], probs: np.ndarray) -> list[Face]:
        faces = []
        for det, row in zip(detections, probs):
            top = int(row.argmax())
            faces.append(
                Face(
                    box=(int(det.box[0]), int(det.box[1]), int(det.box[2]), int(det.box[3])),
                    emotions={name: float(p) for name, p in zip(EMOTIONS, row)},
                    emotion=EMOTIONS[top],
                    score=float(row[top]),
                    landmarks=det.landmarks,
                    detection_score=det.score,
                )
            )
        return faces

    def analyze(self, image: Any) -> list[Face]:
        """Detect every face in a photo (path, bytes, or BGR/gray array) and classify them in one batch."""
        img = self._load(image)
        ((detections, crops),) = self._detect_group([img])
        if not crops:
            return []
        return self._faces(detections, self._proba(crops, convert=False))

    def close(self) -> None:
        """End the ``analyze_many`` thread pool, after the work already handed to it (a later ``analyze_many``
        starts a new one; the pool also ends when the Classifier is garbage-collected)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def analyze_many(self, images: Iterable[Any], *, workers: int | None = None, on_error: str = "raise") -> list[Any]:
        """``analyze`` for many photos: decoding and detection run on ``workers`` threads (default: the
        Classifier's ``workers``, else all cores), each thread detecting its share of the photos in batched
        ONNX Runtime calls; then the faces of all photos are classified together in shared batches. Results are
        in input order.

        ``on_error``: what a photo the SDK rejects (unreadable, too large, a failing custom detector) does:
        ``"raise"`` (default) raises its ``FerSdkError``; ``"skip"`` gives it ``[]``; ``"return"`` puts the
        ``FerSdkError`` itself in its place. The other photos are analyzed either way."""
        if on_error not in ("raise", "skip", "return"):
            raise InvalidInputError(f"on_error={on_error!r} must be 'raise', 'skip' or 'return'")
        keep = on_error != "raise"
        if isinstance(images, np.ndarray) or _is_source(images):
            raise InvalidInputError(
                f"analyze_many expects a list of images, got one {type(images).__name__}; use analyze(image) or "
                "analyze_many([image])"
            )
        images = list(images)
        if workers is None:
            workers = self._workers or usable_cores()
        workers = positive_int("workers", workers, "4")
        if not images:
            return []
        workers = min(workers, len(images))
        if workers == 1:
            detected = self._load_and_detect(images, keep)
        else:
            shares = [images[i::workers] for i in range(workers)]
            detected = [None] * len(images)
            for i, share in enumerate(self._run_shares(shares, keep)):
                detected[i::workers] = share
        good = [d for d in detected if not isinstance(d, FerSdkError)]
        crops = [crop for _, photo_crops in good for crop in photo_crops]
        probs = self._proba(crops, convert=False) if crops else np.zeros((0, len(EMOTIONS)), np.float32)
        results: list[Any] = []
        start = 0
        for item in detected:
            if isinstance(item, FerSdkError):
                results.append([] if on_error == "skip" else item)
                continue
            detections, _ = item
            results.append(self._faces(detections, probs[start : start + len(detections)]))
            start += len(detections)
        return results


def _softmax(logits: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(logits)):
        raise ModelError(f"{name} returned non-finite logits; the model file is damaged: re-export it")
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _check_probabilities(probs: np.ndarray, name: str) -> None:
    """A model's rows must be probabilities: finite, >= 0, summing to 1 (1e-3: INT8 heads drift by ~1e-7)."""
    if not np.isfinite(probs).all():
        raise ModelError(f"{name} returned NaN or infinite probabilities; the model file is broken: re-export it")
    sums = probs.sum(axis=1)
    if probs.size and (probs.min() < -1e-6 or np.abs(sums - 1).max() > 1e-3):
        raise ModelError(
            f"{name} returned rows that are not probabilities (min {probs.min():.3g}, row sums "
            f"{sums.min():.4g}..{sums.max():.4g}); its output must be a softmax: re-export it with fer-sdk export"
        )


def _is_batch(array: np.ndarray) -> bool:
    """A batch (N, H, W) of gray faces or (N, H, W, C), as ``prepare_faces`` reads shapes."""
    return (array.ndim == 4 and array.shape[3] in (1, 3, 4)) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))


def _session_path(session: Any) -> Path | None:
    path = getattr(session, "_model_path", None)
    return Path(path) if path else None

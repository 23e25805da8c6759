"""YuNet on ONNX Runtime: the bundled default face detector, with scores and five landmarks per face.

YuNet (libfacedetection.train, Apache-2.0) is an anchor-free CNN with heads at strides 8, 16 and 32. Per cell
it outputs a class and an objectness score (already sigmoid-ed), a box (centre offset in cells, log size in
cells) and five landmark offsets. This module decodes them as OpenCV's ``FaceDetectorYN`` does
(``objdetect/src/face_detect.cpp``): score = sqrt(cls * obj), box centre = (cell + offset) * stride,
size = exp(log size) * stride, landmarks = (cell + offset) * stride, then non-maximum suppression.

Input: BGR float32 NCHW, pixel values 0..255, no normalisation, height and width multiples of 32 (the image is
padded at the bottom and right with zeros). The dynamic files take any batch and size; fixed-size files (e.g.
OpenCV Zoo's ``face_detection_yunet_2023mar.onnx``, 640x640) get the image letterboxed into their size.

Photos larger than ``max_side`` are searched on a downscaled copy (INTER_AREA) and the results scaled back.
Faces that fill the frame (already-cropped portraits) need nothing special: on 1,505 tight 350x350 portraits
YuNet found 99.47 % as they are, and a second search inside a border found no more.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .detection import Detection, normalize_boxes
from .errors import InvalidInputError, ModelError, positive_int
from .images import as_image

STRIDES = (8, 16, 32)
DIVISOR = 32

_HEADS = tuple(f"{head}_{s}" for head in ("cls", "obj", "bbox", "kps") for s in STRIDES)
_FIX = (
    "pass the bundled detector (detector='yunet'), or a YuNet .onnx file from libfacedetection.train or the "
    "OpenCV Zoo (face_detection_yunet_2023mar.onnx)"
)


def _unit(name: str, value: Any, owner: str) -> float:
    # `value < 0 or not value <= 1`: the comparisons numbers.Real declares; `not <=` rejects NaN too
    if isinstance(value, bool) or not isinstance(value, Real) or value < 0 or not value <= 1:
        raise InvalidInputError(f"{owner}: {name}={value!r} must be a number in [0, 1] (e.g. {name}=0.6).")
    return float(value)


class YuNetDetector:
    """YuNet face detection through ONNX Runtime. Thread-safe (``InferenceSession.run`` is).

    Args:
        model: path to a YuNet ``.onnx`` file, or its bytes (the bundled one is read once and checked against
            its sha256 by ``detectors.bundled_yunet``, then handed over as bytes).
        min_score: faces scoring below this are dropped (0..1).
        min_face: faces whose box is narrower or shorter than this many pixels (of the original photo) are dropped.
        nms_threshold: boxes overlapping a better one by more than this IoU are dropped.
        max_side: photos whose longer side exceeds this are searched at that size (``None``: full size).
        threads: ONNX Runtime intra-op threads (``None``: its default).
        name: how ``repr`` and errors name the model.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        min_score: float = 0.6,
        min_face: int = 0,
        nms_threshold: float = 0.3,
        max_side: int | None = 640,
        threads: int | None = 1,
        top_k: int = 750,
        name: str | None = None,
    ) -> None:
        owner = "YuNetDetector"
        self.min_score = _unit("min_score", min_score, owner)
        self.nms_threshold = _unit("nms_threshold", nms_threshold, owner)
        if isinstance(min_face, bool) or not isinstance(min_face, (int, np.integer)) or min_face < 0:
            raise InvalidInputError(f"{owner}: min_face={min_face!r} must be an int >= 0 pixels (e.g. min_face=20).")
        self.min_face = int(min_face)
        if max_side is not None and (
            isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 64
        ):
            raise InvalidInputError(
                f"{owner}: max_side={max_side!r} must be an int >= 64 (e.g. 640) or None for full resolution."
            )
        self.max_side = None if max_side is None else int(max_side)
        self.top_k = positive_int("top_k", top_k, "750", owner=owner)
        self.threads = positive_int("threads", threads, "1", none_means="ONNX Runtime's default", owner=owner)
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            self.model_path: Path | None = None
            self.name = name or f"<{len(data)} bytes of YuNet ONNX>"
        else:
            path = Path(model)
            if not path.is_file():
                what = "is a directory" if path.is_dir() else "does not exist"
                raise ModelError(f"YuNet model {path} {what}; {_FIX}.")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ModelError(f"YuNet model {path} cannot be read ({exc}); {_FIX}.") from exc
            self.model_path = path
            self.name = name or str(path)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._data = data
        self._session, self._input, self._fixed = self._load(data)

    def _load(self, data: bytes):
        from .runtime import create_session

        try:
            session = create_session(data, None, self.threads)
        except ModelError as exc:
            reason = str(exc).split(";")[0].split(" is not a loadable ONNX model ")[-1]
            raise ModelError(f"{self.name} is not a loadable ONNX model {reason}; {_FIX}.") from None
        inputs = session.get_inputs()
        outputs = {o.name for o in session.get_outputs()}
        missing = [h for h in _HEADS if h not in outputs]
        if len(inputs) != 1 or missing or len(inputs[0].shape) != 4:
            raise ModelError(
                f"{self.name} is not a YuNet face detector (inputs {[i.name for i in inputs]}, missing outputs "
                f"{missing}); {_FIX}."
            )
        batch, _, h, w = inputs[0].shape
        self._max_batch = batch if isinstance(batch, int) and batch > 0 else 16  # a dynamic batch: 16 at a time
        fixed = (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None
        if fixed is not None and (fixed[0] % DIVISOR or fixed[1] % DIVISOR):
            raise ModelError(f"{self.name}: fixed input {fixed} is not a multiple of {DIVISOR}; {_FIX}.")
        return session, inputs[0].name, fixed

    # ------------------------------------------------------------------ public
    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Boxes ``(x, y, w, h)`` only (the ``FaceDetector`` protocol)."""
        return [d.box for d in self.detect_faces(image)]

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        """``Detection`` objects (box, score, five landmarks) for one BGR or gray photo."""
        return self.detect_faces_batch([image])[0]

    def detect_faces_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """``detect_faces`` for several photos; photos searched at the same size share one ONNX Runtime call."""
        prepared = [self._prepare(as_image(img, what="detect: image")) for img in images]
        found = self._search([p[0] for p in prepared])
        return [self._finish(dets, scale, shape) for (_, scale, shape), dets in zip(prepared, found)]

    def __repr__(self) -> str:
        return (
            f"YuNetDetector({self.name!r}, min_score={self.min_score}, min_face={self.min_face}, "
            f"max_side={self.max_side})"
        )

    def __reduce__(self):  # an InferenceSession does not pickle (Ray, multiprocessing): rebuild from the bytes
        return (_rebuild, (self._data, self._options()))

    # ------------------------------------------------------------------ internals
    def _options(self) -> dict:
        return {
            "min_score": self.min_score,
            "min_face": self.min_face,
            "nms_threshold": self.nms_threshold,
            "max_side": self.max_side,
            "threads": self.threads,
            "top_k": self.top_k,
            "name": self.name,
        }

    def _prepare(self, image: np.ndarray):
        """BGR canvas to search, the scale from the photo to it, the photo's shape."""
        shape = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        h, w = bgr.shape[:2]
        if self._fixed is not None:
            limit_h, limit_w = self._fixed
            scale = min(limit_h / h, limit_w / w, 1.0)
        else:
            scale = 1.0 if self.max_side is None or max(h, w) <= self.max_side else self.max_side / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        return bgr, scale, shape

    def _search(self, canvases: list[np.ndarray]) -> list[list[tuple]]:
        """Run the network on each canvas (same padded size -> one batch); raw detections in canvas pixels."""
        out: list[list[tuple]] = [[] for _ in canvases]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(canvases):
            groups.setdefault(self._fixed or _padded(c.shape[:2]), []).append(i)
        for (ph, pw), group in groups.items():
            for start in range(0, len(group), self._max_batch):
                members = group[start : start + self._max_batch]
                self._run_group(canvases, members, ph, pw, out)
        return out

    def _run_group(self, canvases: list[np.ndarray], members: list[int], ph: int, pw: int, out: list) -> None:
        """One ONNX Runtime call on the canvases ``members`` (zero-padded to ph x pw); decoded into ``out``."""
        blob = np.zeros((len(members), 3, ph, pw), np.float32)
        for k, i in enumerate(members):
            h, w = canvases[i].shape[:2]
            blob[k, :, :h, :w] = canvases[i].transpose(2, 0, 1)
        try:
            heads = self._session.run(list(_HEADS), {self._input: blob})
        except Exception as exc:  # ORT's own pybind error types
            raise ModelError(
                f"{self.name} failed as a YuNet face detector on a {ph}x{pw} input "
                f"({type(exc).__name__}: {str(exc).strip()[:200]}); {_FIX}."
            ) from exc
        named = dict(zip(_HEADS, heads))
        for k, i in enumerate(members):
            out[i] = self._decode(named, k, ph, pw)

    def _decode(self, heads: dict, k: int, ph: int, pw: int) -> list[tuple]:
        boxes, scores, points = [], [], []
        for s in STRIDES:
            cols = pw // s
            cls = heads[f"cls_{s}"][k].reshape(-1)
            obj = heads[f"obj_{s}"][k].reshape(-1)
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            idx = np.flatnonzero(score >= self.min_score)
            if idx.size == 0:
                continue
            bbox = heads[f"bbox_{s}"][k].reshape(-1, 4)[idx].astype(np.float64)
            kps = heads[f"kps_{s}"][k].reshape(-1, 5, 2)[idx].astype(np.float64)
            row, col = (idx // cols).astype(np.float64), (idx % cols).astype(np.float64)
            cx, cy = (col + bbox[:, 0]) * s, (row + bbox[:, 1]) * s
            w, h = np.exp(np.minimum(bbox[:, 2], 20)) * s, np.exp(np.minimum(bbox[:, 3], 20)) * s
            boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
            scores.append(score[idx].astype(np.float64))
            kps[:, :, 0] = (kps[:, :, 0] + col[:, None]) * s
            kps[:, :, 1] = (kps[:, :, 1] + row[:, None]) * s
            points.append(kps)
        if not boxes:
            return []
        b, sc, pts = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        finite = np.isfinite(b).all(axis=1) & np.isfinite(pts).all(axis=(1, 2)) & (b[:, 2] > 0) & (b[:, 3] > 0)
        b, sc, pts = b[finite], sc[finite], pts[finite]
        keep = nms(b, sc, self.nms_threshold, self.top_k)
        return [(b[i], float(sc[i]), pts[i]) for i in keep]

    def _finish(self, dets: list[tuple], scale: float, shape: tuple[int, int]) -> list[Detection]:
        """Canvas pixels -> photo pixels; clip, filter by ``min_face``, sort like every detector."""
        out = []
        for box, score, pts in dets:
            box = box / scale
            clipped = normalize_boxes([box], shape, source=self.name)
            if not clipped or min(box[2], box[3]) < self.min_face:
                continue
            landmarks = tuple((float(x), float(y)) for x, y in pts / scale)
            out.append(Detection(clipped[0], score, landmarks))
        return sorted(out, key=lambda d: d.box)


def _padded(shape: tuple[int, int]) -> tuple[int, int]:
    h, w = shape
    return (h - 1) // DIVISOR * DIVISOR + DIVISOR, (w - 1) // DIVISOR * DIVISOR + DIVISOR


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> list[int]:
    """Greedy non-maximum suppression on ``(x, y, w, h)`` boxes; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")[: top_k * 4]  # the best candidates; NMS keeps top_k of them
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    keep: list[int] = []
    while order.size and len(keep) < top_k:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return keep


def _rebuild(data: bytes, options: dict) -> YuNetDetector:
    return YuNetDetector(data, **options)

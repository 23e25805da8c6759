"""How a detected face is cut out so that it looks like the faces a model was trained on.

FER2013 faces are 48x48 crops with a framing of their own. It was measured by running the bundled YuNet on
3,000 Training faces (seed 0), each upscaled 4x (INTER_CUBIC) and framed in a replicated border of half its
size, then taking the median of each landmark and of the box in units of the 48x48 frame
(``python -m fer_sdk.benchmarks.framing``; YuNet found 95.8 % of the faces, the Haar cascade 75.0 %).

Two rules use it; the Classifier picks one per face:

- ``align=True`` and the detector gave landmarks: the five points are mapped onto ``FER2013`` by a similarity
  transform (rotation, uniform scale, shift; least squares, Umeyama), so the eyes are level and sit where
  FER2013's do. The crop is cut at the photo's own resolution and then resized by the model's preprocessing.
- otherwise, the box: the square frame that a FER2013 face's box sits in for that detector
  (``box_in_frame``), or, with an explicit ``face_margin``, the box grown by that fraction on every side.

``face_margin`` with ``align=True`` zooms out: 0.1 adds 10 % of the frame on each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import cv2
import numpy as np

from .errors import InvalidInputError, ModelError

Frame = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Framing:
    """Where a model's training faces have their five landmarks and their detector boxes, in frame units.

    ``landmarks``: right eye, left eye, nose tip, right and left mouth corner, (x, y) with (0, 0) the top left
    corner and (1, 1) the bottom right of the model's input. ``yunet_box`` / ``haar_box``: (x, y, w, h) of the
    box each detector puts on such a face, same units.
    """

    name: str
    landmarks: Frame
    yunet_box: tuple[float, float, float, float]
    haar_box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "landmarks": [list(p) for p in self.landmarks],
            "yunet_box": list(self.yunet_box),
            "haar_box": list(self.haar_box),
        }

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "model") -> Framing:
        """The ``framing`` object of a model's metadata; models without one were trained on FER2013's framing."""
        raw = meta.get("framing") if isinstance(meta, dict) else None
        if raw is None:
            return FER2013
        fix = "re-export the model with fer_sdk's export step, which writes this metadata"
        try:
            if not isinstance(raw, dict):
                raise TypeError(f"an object, not {type(raw).__name__}")
            points = tuple((_unit_float(x), _unit_float(y)) for x, y in raw["landmarks"])
            if len(points) != 5:
                raise ValueError(f"5 landmarks, not {len(points)}")
            boxes = [tuple(_unit_float(v, lo=-1.0, hi=2.0) for v in raw[k]) for k in ("yunet_box", "haar_box")]
            if any(len(b) != 4 or b[2] <= 0 or b[3] <= 0 for b in boxes):
                raise ValueError("boxes of 4 numbers with w, h > 0")
            name = str(raw.get("name", "custom"))[:64]
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"{source}: metadata 'framing' is malformed (expected {exc}); {fix}") from None
        return cls(name, points, boxes[0], boxes[1])  # type: ignore[arg-type]


def _unit_float(value, lo: float = 0.0, hi: float = 1.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or not lo <= float(value) <= hi
    ):
        raise ValueError(f"numbers in [{lo}, {hi}], got {value!r}")
    return float(value)


#: FER2013's framing (see the module docstring for how it was measured).
FER2013 = Framing(
    name="fer2013",
    landmarks=((0.3135, 0.3785), (0.6728, 0.3751), (0.4865, 0.5921), (0.3505, 0.7390), (0.6440, 0.7372)),
    yunet_box=(0.1146, -0.0312, 0.7656, 1.0),
    haar_box=(0.0104, 0.0052, 0.9792, 0.9792),
)


def check_margin(face_margin) -> float | None:
    if face_margin is None:
        return None
    if (
        isinstance(face_margin, bool)
        or not isinstance(face_margin, Real)
        or not math.isfinite(face_margin)
        or not 0 <= float(face_margin) <= 2
    ):
        raise InvalidInputError(
            f"face_margin={face_margin!r} must be a number in [0, 2] (e.g. face_margin=0.1) or None for the "
            "model's training framing"
        )
    return float(face_margin)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, shift) taking ``src`` points onto ``dst`` (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s**2).sum() / len(src)
    if not var > 1e-12:
        raise InvalidInputError("landmarks: all five points coincide; the face cannot be aligned (use align=False).")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / var
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def aligned_crop(image: np.ndarray, landmarks, framing: Framing = FER2013, margin: float = 0.0) -> np.ndarray:
    """The face with its five ``landmarks`` moved onto ``framing``'s, cut at about the photo's resolution.

    The square output's side is the face's own size (so nothing is thrown away before the model's resize);
    parts outside the photo repeat the nearest edge pixel, as ``crop_face`` does.
    """
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise InvalidInputError(f"landmarks: expected five finite (x, y) points, got {landmarks!r}.")
    template = (np.asarray(framing.landmarks, np.float64) - 0.5) / (1 + 2 * margin) + 0.5
    unit = similarity(points, template)  # photo -> frame units
    scale = math.hypot(unit[0, 0], unit[1, 0])
    side = int(np.clip(round(1 / scale), 8, 1024))  # the frame's side in photo pixels, bounded
    matrix = unit * side
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def frame_box(box, box_in_frame) -> tuple[float, float, float, float]:
    """The square frame ``(x, y, side, side)`` around a detector ``box`` that puts it where ``box_in_frame`` says."""
    x, y, w, h = (float(v) for v in box)
    fx, fy, fw, fh = box_in_frame
    side = (w / fw + h / fh) / 2
    cx = x + w / 2 - (fx + fw / 2 - 0.5) * side
    cy = y + h / 2 - (fy + fh / 2 - 0.5) * side
    return cx - side / 2, cy - side / 2, side, side

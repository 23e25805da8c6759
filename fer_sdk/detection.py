"""What a face detector finds: the ``Detection`` type every consumer shares, and box normalisation.

A module of its own (it imports nothing else of the SDK but errors) so the detectors, the Classifier, video,
and Ray can all use it without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

Box = tuple[int, int, int, int]
Point = tuple[float, float]
#: Landmark order of YuNet and of ``Detection.landmarks`` ("right" is the person's right).
LANDMARKS = ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")
#: Flat columns (CSV, video rows) for what the detector said: its score, then x and y of each landmark.
DETECTION_COLUMNS = ("detection_score", *(f"{p}_{c}" for p in LANDMARKS for c in ("x", "y")))


@dataclass(frozen=True)
class Detection:
    """One face found by a detector: its box, the detector's score and five landmarks when it has them.

    ``landmarks``: (x, y) in photo pixels, in YuNet's order: right eye, left eye, nose tip, right and left
    mouth corners ("right" is the person's right, on the left of the photo).
    """

    box: Box
    score: float | None = None
    landmarks: tuple[Point, ...] | None = None


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
            raise InvalidInputError(f"{source} returned an array of shape {boxes.shape}; expected (N, 4) boxes.")
        boxes = boxes.tolist()
    height, width = image_shape[:2]
    out = []
    try:
        items = list(boxes)
    except TypeError:
        raise InvalidInputError(f"{source} returned {boxes!r}; expected a list of (x, y, w, h) boxes.") from None
    for box in items:
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
            raise InvalidInputError(
                f"{source} returned the box {box!r}; each box must be (x, y, w, h) finite numbers with w, h > 0."
            )
        x, y, w, h = values
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 > x0 and y1 > y0:
            out.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return sorted(out)

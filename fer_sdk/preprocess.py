"""Faces -> model batch: gray, resized as in training, scaled, shaped (N, H, W, 1) float32.

The rule (docs/CONTRACTS.md): BGR -> gray with ``cv2.cvtColor(..., COLOR_BGR2GRAY)``, resize to the
model's input with ``cv2.INTER_AREA`` when shrinking and ``cv2.INTER_LINEAR`` when enlarging, then
``pixel * scale + offset`` (scale = 1/255, offset = 0 for the models this project exports).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Real

import cv2
import numpy as np

from .constants import INPUT_SIZE
from .errors import InvalidInputError, ModelError
from .images import load_image, pixel_values, plain_array

#: ``resize`` names -> (interpolation when shrinking, interpolation when enlarging).
RESIZE_METHODS: dict[str, tuple[int, int]] = {
    "area": (cv2.INTER_AREA, cv2.INTER_LINEAR),
    "linear": (cv2.INTER_LINEAR, cv2.INTER_LINEAR),
    "nearest": (cv2.INTER_NEAREST, cv2.INTER_NEAREST),
}
COLORS = ("gray",)

_ACCEPTED = (
    "accepted: uint8 arrays (also uint16, other integers holding 0..255, or floats in [0, 1] meaning "
    "pixel/255) shaped (H, W) gray, (H, W, 1), (H, W, 3) BGR, (H, W, 4) BGRA, (N, H, W) gray batch or "
    "(N, H, W, 1|3|4) batch; an image path; encoded image bytes; or a list/tuple of those"
)


def _check_field(key: str, value):
    """Validate one Preprocessing field; return it normalized or raise ValueError naming the problem."""
    if key in ("height", "width"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 4096:
            raise ValueError(f"{key} must be an int in 1..4096, got {value!r}")
        return int(value)
    if key in ("scale", "offset"):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        if key == "scale" and value == 0:
            raise ValueError("scale must not be 0")
        if abs(float(value)) > _MAX_AFFINE:  # pixel * scale + offset must stay a sane float32 for 0..255
            raise ValueError(f"{key} must lie in [-{_MAX_AFFINE:g}, {_MAX_AFFINE:g}], got {value!r}")
        return float(value)
    if key == "color":
        if value not in COLORS:
            raise ValueError(f"color must be one of {list(COLORS)}, got {value!r}")
        return value
    if key == "resize":
        if not isinstance(value, str) or value not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {sorted(RESIZE_METHODS)}, got {value!r}")
        return value
    raise ValueError(f"unknown field {key!r}")


_FIELDS = ("height", "width", "scale", "offset", "color", "resize")
_MAX_AFFINE = 1000.0
# Keys of the metadata `input` object that must hold these values when present (the SDK supports no other).
_FIXED = {"channels": 1, "layout": "NHWC", "dtype": "float32"}


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: size, ``pixel * scale + offset``, color, resize method."""

    height: int = INPUT_SIZE[0]
    width: int = INPUT_SIZE[1]
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    color: str = "gray"
    resize: str = "area"

    def __post_init__(self) -> None:
        for key in _FIELDS:
            try:
                object.__setattr__(self, key, _check_field(key, getattr(self, key)))
            except ValueError as exc:
                raise InvalidInputError(f"Preprocessing: {exc}.") from None

    @classmethod
    def from_metadata(cls, meta: dict) -> Preprocessing:
        """Read the ``input`` object of a model's ``fer_sdk`` metadata (docs/CONTRACTS.md).

        ``height``, ``width``, ``scale``, ``offset``, ``color`` and ``resize`` are required;
        ``channels``, ``layout`` and ``dtype`` are optional but must be 1, "NHWC" and "float32" when present.
        Anything missing or invalid raises ``ModelError`` naming the key.
        """
        fix = "Fix: re-export the model with fer_sdk's export step, which writes this metadata."
        if not isinstance(meta, dict) or not isinstance(meta.get("input"), dict):
            got = type(meta).__name__ if not isinstance(meta, dict) else f"keys {sorted(meta)}"
            raise ModelError(f"model metadata: no 'input' object (got {got}). {fix}")
        spec = meta["input"]
        values = {}
        for key in _FIELDS:
            if key not in spec:
                raise ModelError(f"model metadata: input.{key} is missing. {fix}")
            try:
                values[key] = _check_field(key, spec[key])
            except ValueError as exc:
                raise ModelError(f"model metadata: input.{key} is invalid: {exc}. {fix}") from None
        for key, expected in _FIXED.items():
            if key in spec and spec[key] != expected:
                raise ModelError(
                    f"model metadata: input.{key} is {spec[key]!r}; this SDK supports only {expected!r}. {fix}"
                )
        return cls(**values)


def prepare_faces(faces, prep: Preprocessing | None = None, *, first_index: int = 0) -> np.ndarray:
    """Turn one face or many into the model's float32 batch ``(N, H, W, 1)``.

    Input shapes (an array of any size is resized; color is converted to gray):

    - 2-D ``(H, W)``: one gray image.
    - 3-D ``(H, W, C)``: one image when the last dimension ``C`` is 1 (gray), 3 (BGR) or 4 (BGRA; alpha
      ignored); any other last dimension means a batch ``(N, H, W)`` of gray faces.
    - 4-D ``(N, H, W, C)`` with ``C`` in 1, 3, 4: a batch.
    - A path (str / ``os.PathLike``) or encoded bytes: one image, read with ``images.load_image``.
    - A list or tuple mixing any of the above (each array may itself be a batch); the results are
      concatenated in order.

    Pixel values: uint8 as is; uint16 is 16-bit (divided by 257); other integer dtypes must hold 0..255;
    floats must lie in [0, 1] and mean ``pixel / 255`` (a float ``v`` becomes ``v * 255 * scale + offset``,
    no rounding). An empty list or an ``(0, ...)`` batch gives shape ``(0, H, W, 1)``. Anything else
    raises ``InvalidInputError`` saying what was received and what is accepted.
    """
    prep = Preprocessing() if prep is None else prep
    if not isinstance(prep, Preprocessing):
        raise InvalidInputError(f"prep: expected a Preprocessing, got {type(prep).__name__}.")
    stacks = [_resize_stack(_gray_stack(item, what), prep) for item, what in _items(faces, first_index)]
    if not stacks:
        return np.empty((0, prep.height, prep.width, 1), np.float32)
    batch = np.concatenate([s.astype(np.float32, copy=False) for s in stacks]) if len(stacks) > 1 else stacks[0]
    batch = batch.astype(np.float32) * np.float32(prep.scale) + np.float32(prep.offset)
    return np.ascontiguousarray(batch[..., np.newaxis], dtype=np.float32)


def resize_image(image: np.ndarray, height: int, width: int, resize: str = "area") -> np.ndarray:
    """Resize to ``(height, width)``: for "area", INTER_AREA when no side grows, INTER_LINEAR otherwise."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrink, enlarge = RESIZE_METHODS[resize]
    interpolation = shrink if (h >= height and w >= width) else enlarge
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)


def to_gray(image: np.ndarray) -> np.ndarray:
    """BGR ``(H, W, 3)`` or BGRA ``(H, W, 4)`` -> gray ``(H, W)`` (OpenCV's weights); 2-D passes through."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
    return cv2.cvtColor(np.ascontiguousarray(image), code)


def flip_horizontal(batch: np.ndarray) -> np.ndarray:
    """Mirror a batch left-right: ``(N, H, W, C)`` or ``(N, H, W)``; returns a contiguous copy."""
    if not isinstance(batch, np.ndarray) or batch.ndim not in (3, 4):
        shape = getattr(batch, "shape", None)
        raise InvalidInputError(
            f"flip_horizontal: got {type(batch).__name__} with shape {shape}; expected an array shaped "
            "(N, H, W, C) or (N, H, W), e.g. the output of prepare_faces."
        )
    return np.ascontiguousarray(batch[:, :, ::-1])


def crop_face(image: np.ndarray, box, margin: float = 0.0) -> np.ndarray:
    """Crop ``box`` = (x, y, w, h) grown by ``margin * w`` left and right and ``margin * h`` above and below.

    The crop always has the grown box's size: parts of it outside the image repeat the nearest edge pixel
    (edge replication), so a face near the border stays centered. The box must overlap the image.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise InvalidInputError(
            f"crop_face: got image {type(image).__name__} with shape {getattr(image, 'shape', None)}; "
            "expected a non-empty (H, W) or (H, W, C) array."
        )
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InvalidInputError(f"crop_face: box {box!r} is not (x, y, w, h) numbers.") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise InvalidInputError(f"crop_face: box {box!r} needs finite values and w, h > 0.")
    if isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin) or margin < 0:
        raise InvalidInputError(f"crop_face: margin {margin!r} must be a finite number >= 0 (0.2 adds 20% per side).")
    x0, x1 = _round(x - margin * w), _round(x + w + margin * w)
    y0, y1 = _round(y - margin * h), _round(y + h + margin * h)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    height, width = image.shape[:2]
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise InvalidInputError(
            f"crop_face: box {tuple(box)} (with margin {margin}) lies outside the {width}x{height} image."
        )
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1].copy()
    rows = np.clip(np.arange(y0, y1), 0, height - 1)
    cols = np.clip(np.arange(x0, x1), 0, width - 1)
    return image[rows[:, None], cols[None, :]]


def _round(value: float) -> int:
    return math.floor(value + 0.5)


def _items(faces, first_index: int = 0):
    """Yield ``(array_or_image, description)`` for each input item; load paths and bytes. ``first_index``: the
    position of ``faces[0]`` in the caller's list (errors name the caller's index)."""
    if isinstance(faces, (np.ndarray, str, os.PathLike, bytes, bytearray, memoryview)):
        faces, single = [faces], True
    elif isinstance(faces, (list, tuple)):
        single = False
    else:
        raise InvalidInputError(f"faces: got {_describe(faces)}; {_ACCEPTED}.")
    for index, item in enumerate(faces):
        what = "faces" if single else f"faces[{index + first_index}]"
        if isinstance(item, np.ndarray):
            yield plain_array(item, what=what), what
        elif isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
            yield load_image(item), what
        else:
            raise InvalidInputError(f"{what}: got {_describe(item)}; {_ACCEPTED}.")


def _gray_stack(array: np.ndarray, what: str) -> np.ndarray:
    """Array -> gray stack ``(N, h, w)`` of uint8 or float32 pixel values (0..255)."""
    shape, ndim = array.shape, array.ndim
    if ndim == 2:
        spatial = shape
    elif ndim == 3:
        spatial = shape[:2] if shape[2] in (1, 3, 4) else shape[1:]
    elif ndim == 4 and shape[3] in (1, 3, 4):
        spatial = shape[1:3]
    else:
        raise InvalidInputError(f"{what}: got dtype {array.dtype} with shape {shape}; {_ACCEPTED}.")
    if 0 in spatial:
        raise InvalidInputError(f"{what}: got an empty image (shape {shape}); height and width must be >= 1.")
    values = pixel_values(array, what=what, keep_float=True)
    if ndim == 2:
        return values[np.newaxis]
    if ndim == 3 and shape[2] in (1, 3, 4):
        return to_gray(values)[np.newaxis]
    if ndim == 3:
        return values
    if shape[3] == 1:
        return values[..., 0]
    if shape[0] == 0:
        return np.empty(shape[:3], values.dtype)
    return np.stack([to_gray(image) for image in values])


def _resize_stack(stack: np.ndarray, prep: Preprocessing) -> np.ndarray:
    if stack.shape[1:] == (prep.height, prep.width):
        return stack
    if stack.shape[0] == 0:
        return np.empty((0, prep.height, prep.width), stack.dtype)
    return np.stack([resize_image(image, prep.height, prep.width, prep.resize) for image in stack])


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"

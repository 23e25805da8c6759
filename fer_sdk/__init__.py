"""fer-sdk: facial expression recognition (FER2013, 7 emotions) on ONNX Runtime.

    >>> from fer_sdk import Classifier
    >>> clf = Classifier()                      # best bundled model, CPU
    >>> clf.analyze("photo.jpg")                # [Face(box=(x, y, w, h), emotion='happy', ...)]
    >>> clf.predict_proba(faces_48x48)          # (N, 7) float32, columns in EMOTIONS order

Importing this package loads neither ONNX Runtime nor TensorFlow: ``Classifier`` and ``Face`` are imported on
first use, and ONNX Runtime when a ``Classifier`` is built.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

# A backstop behind the SDK's own header checks (fer_sdk.images): OpenCV refuses, before allocating, any image
# over this many pixels. It must be set before cv2 is first imported, and a value the user set wins.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))

from .constants import EMOTIONS
from .errors import (
    DatasetError,
    DependencyError,
    FerSdkError,
    InvalidImageError,
    InvalidInputError,
    ModelError,
)
from .registry import ModelSpec, list_models

if TYPE_CHECKING:
    from .classifier import Classifier, Face
    from .detect import HaarDetector, get_detector
    from .detection import Detection
    from .images import load_image
    from .yunet import YuNetDetector

from .version import __version__

__all__ = [
    "EMOTIONS",
    "Classifier",
    "DatasetError",
    "DependencyError",
    "Detection",
    "Face",
    "FerSdkError",
    "HaarDetector",
    "InvalidImageError",
    "InvalidInputError",
    "ModelError",
    "ModelSpec",
    "YuNetDetector",
    "__version__",
    "get_detector",
    "list_models",
    "load_image",
]

_LAZY = {
    "Classifier": "classifier",
    "Face": "classifier",
    "Detection": "detection",
    "HaarDetector": "detect",
    "YuNetDetector": "yunet",
    "get_detector": "detect",
    "load_image": "images",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fer_sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

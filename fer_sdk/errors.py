"""The SDK's error types. Every error raised for bad input, models or data derives from ``FerSdkError``.

Messages name the value received and say what to do next. The CLI prints them as one line on stderr and
exits with the code in ``exit_code`` (documented in the README).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, overload

#: The one install hint for everything that needs TensorFlow (training, export, INT8 calibration, LiteRT export);
#: export also runs ONNX Runtime, hence cpu.
TRAIN_EXTRA_HINT = 'pip install "fer-sdk[cpu,train]"'


class FerSdkError(Exception):
    """Base of every error the SDK raises on purpose."""

    exit_code = 1


class InvalidInputError(FerSdkError, ValueError):
    """An argument or array the caller passed is not usable (wrong shape, dtype, NaN, bad option)."""

    exit_code = 2


class InvalidImageError(InvalidInputError):
    """An image file or buffer cannot be decoded, is empty, or exceeds the pixel limit."""

    exit_code = 3


class ModelError(FerSdkError):
    """A model is unknown, missing, corrupt, fails its checksum, or lacks this project's metadata."""

    exit_code = 4


class DatasetError(FerSdkError):
    """A FER2013 file or folder is malformed; the message names the line or file and the fix."""

    exit_code = 5


class DependencyError(FerSdkError, ImportError):
    """An optional dependency is missing; the message gives the exact ``pip install`` to run."""

    exit_code = 6


@overload
def positive_int(name: str, value: Any, example: str, *, none_means: None = None, owner: str = "") -> int: ...
@overload
def positive_int(name: str, value: Any, example: str, *, none_means: str, owner: str = "") -> int | None: ...
def positive_int(name: str, value: Any, example: str, *, none_means: str | None = None, owner: str = "") -> int | None:
    """``value`` as an ``int`` >= 1 (Python or NumPy integer, not bool), else ``InvalidInputError``.

    With ``none_means``, ``None`` is accepted (returned as is) and the message says what it stands for;
    ``owner`` (e.g. ``"YuNetDetector"``) prefixes the message.
    """
    if value is None and none_means is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        alt = f" or None for {none_means}" if none_means is not None else ""
        prefix = f"{owner}: " if owner else ""
        raise InvalidInputError(f"{prefix}{name}={value!r} must be a positive integer{alt} (e.g. {name}={example})")
    return int(value)

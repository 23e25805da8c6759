"""The SDK's error types. Every error raised for bad input, models or data derives from ``FerSdkError``.

Messages name the value received and say what to do next. The CLI prints them as one line on stderr and
exits with the code in ``exit_code`` (documented in the README).
"""

from __future__ import annotations


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

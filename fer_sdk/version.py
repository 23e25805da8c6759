"""The installed fer-sdk release, in one place (``fer_sdk.__version__`` is this)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fer-sdk")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

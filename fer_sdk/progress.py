"""Progress bars for the SDK's long loops: rich, on stderr, off when stderr is not a terminal or when quiet.

One switch for the whole process: the CLI's ``--quiet`` calls :func:`set_quiet`; library callers may too.
"""

from __future__ import annotations

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (``True``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def bar(*columns, enabled: bool = True):
    """A transient ``rich.progress.Progress`` on stderr, disabled when quiet or when ``enabled`` is false."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), transient=True, disable=_quiet or not enabled)

"""Progress bars for the SDK's long loops: rich, on stderr, off when stderr is not a terminal or when quiet.

One switch for the whole process: the CLI's ``--quiet`` calls :func:`set_quiet`; library callers may too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar off (``True``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


_debug = False


def set_debug(debug: bool) -> None:
    """Let third-party libraries' own log lines through (Ray's, ONNX Runtime's): the CLI's ``--debug``."""
    global _debug
    _debug = bool(debug)
    from .runtime import set_onnxruntime_logging

    set_onnxruntime_logging(_debug)


def is_debug() -> bool:
    return _debug


def bar(*columns, enabled: bool = True):
    """A transient ``rich.progress.Progress`` on stderr, disabled when quiet or when ``enabled`` is false."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    # off the terminal a bar would only leave a blank line behind
    return Progress(*columns, console=console, transient=True, disable=_quiet or not enabled or not console.is_terminal)


@contextlib.contextmanager
def counter(description: str, total: int | None, *, enabled: bool = True):
    """A bar for one loop: yields ``advance(n=1, info=None)``; ``info`` is a short text shown after the counts
    (a running loss). Shows done/total, elapsed time and the time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        enabled=enabled,
    ) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            progress.update(task, advance=n, **({} if info is None else {"info": info}))

        yield advance


@contextlib.contextmanager
def native_stderr_to_file(enabled: bool):
    """Send what native code writes straight to file descriptor 2 (TensorFlow's and Ray's C++ start-up lines, which
    no setting silences: they come before those libraries' logging starts) to a temporary file; replay it if the block
    fails, so nothing that explains a failure is lost. ``enabled=False`` (the CLI's ``--debug``) leaves stderr alone."""
    if not enabled:
        yield
        return
    with _STDERR_LOCK:  # fd 2 is the process's: two threads redirecting at once would lose the real stderr
        yield from _redirected()


_STDERR_LOCK = threading.RLock()


def _redirected():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)

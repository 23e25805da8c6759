"""File input and output with guarantees: bounded reads of regular files, atomic writes that replace nothing
they should not.

Reading (:func:`open_regular`, :func:`read_regular_file`): only regular files are read. The file is opened
without blocking (a FIFO cannot hang the reader), checked with ``fstat`` on the open descriptor (so a swap after
the check changes nothing), and never read past ``max_bytes``; a symlink to ``/dev/zero``, a FIFO, a device or a
folder raise the caller's error type naming the path.

Writing: writers get a temporary path in the destination folder (same file system, same suffix so libraries
that pick a format from the extension still work); on success it is renamed over the destination with
``os.replace``, which is atomic on POSIX and Windows. A crash or kill mid-write leaves the old file (or
none) plus, at worst, a hidden ``.*.tmp*`` file. A destination that is a character device or FIFO
(``/dev/stdout``, ``/dev/null``, a named pipe) is written to, never replaced. :func:`check_output_file`
refuses, before any work, an output that is one of the run's inputs, a block device, socket or folder.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import FerSdkError, InvalidInputError

FILE_MODE = 0o644
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, *, error: type[FerSdkError], what: str = "file") -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (after symlinks); else raise ``error`` naming it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}. Fix: check the path (and the working directory).") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}. Fix: pass a {what} path.") from None
    except (OSError, ValueError) as exc:  # permissions, NUL bytes in the path, name too long, ...
        raise error(f"{path}: cannot be read ({exc}). Fix: check the path and its permissions.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(
                f"{path}: is {_kind(mode)}, not a regular {what}; only regular files are read. Fix: pass the "
                f"{what} itself (a symlink to a regular file is fine)."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(
    path: str | os.PathLike, *, max_bytes: int, error: type[FerSdkError], what: str = "file"
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (refused, by ``error``, as soon as it reads more)."""
    with open_regular(path, error=error, what=what) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot be read ({exc}). Fix: check the file.") from None
    if len(data) > max_bytes:
        raise error(f"{path}: is larger than {max_bytes:,} bytes, the most a {what} may be. Fix: pass a smaller file.")
    return data


def is_stream(path: str | os.PathLike) -> bool:
    """True when ``path`` exists as a character device or FIFO (after symlinks): outputs write into it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    A character device or FIFO is yielded as is: writing goes into it and it is never replaced.
    """
    path = Path(path)
    if is_stream(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.chmod(tmp_path, FILE_MODE)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8; file names that are not UTF-8 (held by Python as surrogate escapes) are written as their bytes."""
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def check_output_file(path: str | os.PathLike, *, option: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse, before any work, an output file path that cannot be written (``option`` names it in the error).

    An existing folder, block device or socket, a file where a parent folder should be, an unwritable parent,
    or the same file as one of ``inputs`` raise ``InvalidInputError``; missing parent folders are fine (writers
    create them); character devices and FIFOs are written into.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; pass a file path, e.g. {option} {path / 'out.txt'}")
    if path.exists() and not path.is_file() and not is_stream(path):
        raise InvalidInputError(f"{option} {path} is {_kind(os.stat(path).st_mode)}; pass a file path")
    if path.exists() and not is_stream(path):
        for source in inputs:
            if same_file(path, source):
                raise InvalidInputError(
                    f"{option} {path} is one of the inputs ({source}); writing it would replace that input. "
                    f"Fix: choose another {option} path."
                )
    _check_creatable(path.parent, option)
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and are the same file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output_folder(path: str | os.PathLike, *, option: str) -> Path:
    """Like :func:`check_output_file`, for an output folder (which may exist, but not as a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{option} {path} is a file, not a folder; pass a folder (it is created if missing)")
    _check_creatable(path, option)
    return path


def _check_creatable(folder: Path, option: str) -> None:
    """``folder`` exists as a writable folder, or can be created: its nearest existing ancestor is one."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidInputError(f"{option} {folder}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"{option} {folder}: {ancestor} is not writable; check its permissions or choose another path"
        )

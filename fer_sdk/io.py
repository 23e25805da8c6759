"""Atomic file output: every file the SDK writes appears whole or not at all.

Writers get a temporary path in the destination folder (same file system, same suffix so libraries that
pick a format from the extension still work); on success it is renamed over the destination with
``os.replace``, which is atomic on POSIX and Windows. A crash or kill mid-write leaves the old file (or
none) plus, at worst, a hidden ``.*.tmp*`` file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InvalidInputError

FILE_MODE = 0o644


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds."""
    path = Path(path)
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
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def check_output_file(path: str | os.PathLike, *, option: str) -> Path:
    """Refuse, before any work, an output file path that cannot be written (``option`` names it in the error).

    An existing folder, a file where a parent folder should be, or an unwritable parent raise
    ``InvalidInputError``; missing parent folders are fine (writers create them).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; pass a file path, e.g. {option} {path / 'out.txt'}")
    _check_creatable(path.parent, option)
    return path


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
        raise InvalidInputError(f"{option} {folder}: {ancestor} is not writable; check its permissions "
                                "or choose another path")

"""Public-domain sample photos with faces (see SOURCES.md): ``sample_path("astronaut.jpg")``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError

_FOLDER = Path(__file__).resolve().parent


def sample_names() -> list[str]:
    """File names of the bundled sample photos."""
    return sorted(p.name for p in _FOLDER.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def sample_path(name: str) -> Path:
    """Path of a bundled sample photo, e.g. ``sample_path("astronaut.jpg")``."""
    names = sample_names()
    if name not in names:
        raise InvalidInputError(f"sample {name!r} does not exist; bundled samples: {', '.join(names)}.")
    return _FOLDER / name

"""One row schema for every result, and the writers that render it.

Photos, video frames and Ray's Parquet all produce the same flat rows (:data:`ROW_FIELDS`): one per face, and one
for a photo without faces or an input that failed (empty face fields, ``error`` set). ``frame``, ``time_s`` and
``track`` are empty for photos. Every row names the model that produced it (``model``, ``model_version``).

Writers (:func:`row_writer`) stream: ``csv`` (a header, then rows), ``jsonl`` (one JSON object per line), ``json``
(one array of the same objects) and ``table`` (aligned columns for people). Numbers are rounded the same way in
every format: probabilities and scores to 6 decimals, landmarks to 2 pixels.

This module imports nothing of the SDK's pipelines, so photos, video and Ray can all use it.
"""

from __future__ import annotations

import csv
import json
from typing import IO, Any

from .constants import EMOTIONS
from .detection import DETECTION_COLUMNS
from .errors import InvalidInputError

#: The output formats of ``fer-sdk predict --format``.
FORMATS = ("table", "json", "jsonl", "csv")
#: Columns of every result row, in order.
ROW_FIELDS = (
    "source",
    "frame",
    "time_s",
    "face",
    "track",
    "x",
    "y",
    "w",
    "h",
    "emotion",
    "score",
    *EMOTIONS,
    *DETECTION_COLUMNS,
    "model",
    "model_version",
    "annotated",
    "error",
)
#: Decimal places of probabilities and scores in every format.
PROB_DIGITS = 6

_INT_FIELDS = ("frame", "face", "track", "x", "y", "w", "h")
_TEXT_FIELDS = ("source", "emotion", "model", "model_version", "annotated", "error")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInputError(f"format={fmt!r} is not one of {', '.join(FORMATS)}; pick one of them")
    return fmt


def empty_row(
    source: str,
    *,
    model: str | None = None,
    model_version: str | None = None,
    error: str | None = None,
    annotated: str | None = None,
) -> dict[str, Any]:
    """The row of an input without faces (``error=None``) or one that failed."""
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(source=source, model=model, model_version=model_version, annotated=annotated, error=error)
    return row


def face_row(
    source: str,
    index: int,
    face,
    *,
    model: str | None = None,
    model_version: str | None = None,
    probabilities=None,
    frame: int | None = None,
    time_s: float | None = None,
    track: int | None = None,
    annotated: str | None = None,
) -> dict[str, Any]:
    """The row of face ``index`` of ``source`` (a ``Face``). ``probabilities``: seven values in ``EMOTIONS``
    order that replace the face's own (a video's smoothed ones); the row's emotion and score follow them."""
    probs = [float(face.emotions[e]) for e in EMOTIONS] if probabilities is None else [float(p) for p in probabilities]
    top = max(range(len(EMOTIONS)), key=probs.__getitem__)
    row = empty_row(source, model=model, model_version=model_version, annotated=annotated)
    x, y, w, h = (int(v) for v in face.box)
    row.update(
        frame=frame,
        time_s=time_s,
        face=index,
        track=track,
        x=x,
        y=y,
        w=w,
        h=h,
        emotion=EMOTIONS[top],
        score=round(probs[top], PROB_DIGITS),
    )
    row.update({e: round(p, PROB_DIGITS) for e, p in zip(EMOTIONS, probs)})
    row.update(zip(DETECTION_COLUMNS, face.detection_values()))
    return row


def arrow_schema():
    """The rows' ``pyarrow`` schema (Parquet from ``--ray``): every column nullable."""
    import pyarrow as pa

    def kind(name: str):
        if name in _TEXT_FIELDS:
            return pa.string()
        if name == "track" or name == "frame":
            return pa.int64()
        if name in _INT_FIELDS:
            return pa.int32()
        return pa.float64()

    return pa.schema([pa.field(name, kind(name), nullable=True) for name in ROW_FIELDS])


class _CsvWriter:
    def __init__(self, sink: IO[str]) -> None:
        self._writer = csv.DictWriter(sink, fieldnames=ROW_FIELDS, lineterminator="\n")
        self._writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: "" if v is None else v for k, v in row.items()})

    def close(self) -> None:
        pass


class _JsonLinesWriter:
    def __init__(self, sink: IO[str]) -> None:
        self._sink = sink

    def write(self, row: dict[str, Any]) -> None:
        self._sink.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        pass


class _JsonWriter:
    """One JSON array, written as rows arrive (memory stays flat however many rows)."""

    def __init__(self, sink: IO[str]) -> None:
        self._sink, self._first = sink, True
        sink.write("[")

    def write(self, row: dict[str, Any]) -> None:
        self._sink.write(("\n  " if self._first else ",\n  ") + json.dumps(row, ensure_ascii=False))
        self._first = False

    def close(self) -> None:
        self._sink.write("]\n" if self._first else "\n]\n")


class _TableWriter:
    """Aligned columns for people, one line per row as it arrives. ``video``: show frame, time and track."""

    def __init__(self, sink: IO[str], *, source_width: int = 24, video: bool = False) -> None:
        self._sink, self._video = sink, video
        self._width = max(6, min(source_width, 60))
        head = ["source".ljust(self._width)]
        if video:
            head += ["frame".rjust(6), "time_s".rjust(8), "track".rjust(5)]
        head += ["face".rjust(4), "box (x, y, w, h)".ljust(22), "emotion".ljust(9), "score".rjust(5), "runner-up"]
        sink.write("  ".join(head).rstrip() + "\n")

    def write(self, row: dict[str, Any]) -> None:
        cells = [str(row["source"]).ljust(self._width)]
        if self._video:
            time_s = "" if row["time_s"] is None else f"{row['time_s']:.3f}"
            cells += [_cell(row["frame"]).rjust(6), time_s.rjust(8), _cell(row["track"]).rjust(5)]
        if row["error"] is not None:
            cells += ["-".rjust(4), f"error: {row['error']}"]
        elif row["face"] is None:
            cells += ["-".rjust(4), "no face found"]
        else:
            second = sorted(EMOTIONS, key=lambda e: -row[e])[1]
            box = f"({row['x']}, {row['y']}, {row['w']}, {row['h']})"
            cells += [
                str(row["face"]).rjust(4),
                box.ljust(22),
                row["emotion"].ljust(9),
                f"{row['score']:.2f}".rjust(5),
                f"{second} {row[second]:.2f}",
            ]
        self._sink.write("  ".join(cells).rstrip() + "\n")

    def close(self) -> None:
        pass


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def row_writer(sink: IO[str], fmt: str, *, source_width: int = 24, video: bool = False):
    """A writer with ``write(row)`` and ``close()`` that renders rows to ``sink`` in ``fmt`` (see :data:`FORMATS`).
    ``source_width`` and ``video`` shape only the ``table`` format."""
    check_format(fmt)
    if fmt == "csv":
        return _CsvWriter(sink)
    if fmt == "jsonl":
        return _JsonLinesWriter(sink)
    if fmt == "json":
        return _JsonWriter(sink)
    return _TableWriter(sink, source_width=source_width, video=video)

"""FER2013 readers (numpy + OpenCV only): the Kaggle CSV, plain or gzip, and the image-folder release.

Both return ``{split: (x, y)}`` with ``x`` uint8 ``(N, 48, 48)`` and ``y`` int64 ``(N,)`` holding indices
into ``fer_sdk.constants.EMOTIONS``. Splits are "Training", "PublicTest" and "PrivateTest".

CSV: header ``emotion,pixels,Usage`` (columns in any order, names case-insensitive, surrounding spaces and
quotes ignored; a UTF-8 BOM and CRLF line endings are fine); gzip is detected from the magic bytes, not the
suffix. Kaggle's download archives (``fer2013.tar.gz``, the competition ``.zip``) are read in place: their
``fer2013.csv``, else ``icml_face_data.csv``, else their only ``.csv`` member is the CSV. Blank lines are
skipped. Every row's label and Usage are checked; pixels are parsed and checked only for the requested
splits (that is where the time goes).

Image folders: ``<root>/train/<emotion>/*.jpg`` and ``<root>/test/<emotion>/*.jpg`` (either may be absent;
emotion folder names as in ``EMOTIONS``, any case; .jpg .jpeg .png .bmp files are read, other files and
names starting with "." are ignored). The split of a file comes from its name prefix ``Training_``,
``PublicTest_`` or ``PrivateTest_`` (the release's ``test/`` folder mixes PublicTest and PrivateTest, so the
folder cannot tell them apart); a file without one of these prefixes raises ``DatasetError``. Images not
48x48 or not gray are converted (OpenCV gray decode; INTER_AREA when shrinking, INTER_LINEAR when
enlarging). Rows are sorted by split, then by the number after the prefix, then by file name.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import numpy as np

from .constants import EMOTIONS, INPUT_SIZE
from .errors import DatasetError, InvalidInputError
from .files import open_regular, read_regular_file
from .preprocess import resize_image, to_gray

SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
#: Accepted split names (lower case) -> canonical split.
SPLIT_ALIASES: dict[str, str] = {
    "training": "Training",
    "train": "Training",
    "publictest": "PublicTest",
    "public": "PublicTest",
    "test": "PublicTest",
    "privatetest": "PrivateTest",
    "private": "PrivateTest",
}
EXPECTED_HEADER = "emotion,pixels,Usage"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

_PIXELS = INPUT_SIZE[0] * INPUT_SIZE[1]
#: A FER2013 row is at most ~9.3 kB ("6,", 2,304 values of up to 3 digits and a space, ",PrivateTest").
MAX_LINE_BYTES = 16 * 1024
#: Most CSV bytes read from one file (FER2013 unpacks to 301 MB): caps what a .gz/.tar/.zip may expand to.
MAX_CSV_BYTES = 1024 * 1024 * 1024
#: Most blank lines tolerated (FER2013 has none; a file of blank lines is refused in seconds, not minutes).
MAX_BLANK_LINES = 10_000
#: Image-folder faces: largest file and picture read (the release's faces are 48x48 JPEGs of ~2 kB).
MAX_FACE_FILE_BYTES = 16 * 1024 * 1024
MAX_FACE_PIXELS = 4096 * 4096
_ROW_FORMAT = (
    f"each row must read <emotion 0-{len(EMOTIONS) - 1}>,<{_PIXELS} space-separated integers 0-255>,"
    f"<{'|'.join(SPLITS)}>"
)
_LABELS = {str(i).encode(): i for i in range(len(EMOTIONS))}
_FILE_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)?")


def canonical_split(name: str) -> str:
    """Map a split name or alias (case-insensitive) to "Training", "PublicTest" or "PrivateTest"."""
    key = name.strip().lower().replace("_", "").replace("-", "") if isinstance(name, str) else None
    if key not in SPLIT_ALIASES:
        raise InvalidInputError(
            f"split: got {name!r}; use one of {', '.join(SPLITS)} (aliases, any case: "
            f"{', '.join(sorted(SPLIT_ALIASES))})."
        )
    return SPLIT_ALIASES[key]


def read_fer2013(
    path: str | os.PathLike, splits: Iterable[str] | str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read FER2013 from a CSV (plain or gzip) or an image-folder root: ``{split: (x, y)}``.

    ``splits`` (names or aliases) restricts which splits are decoded; the result holds those of them that
    the data has (possibly none: check, or use ``load_split``, which raises ``DatasetError`` listing the
    splits present). With ``splits=None`` every split present is returned. Malformed data raises
    ``DatasetError`` naming the file, the line (CSV) and the fix.
    """
    data, _ = _read(_data_path(path), _wanted(splits))
    return {split: data[split] for split in SPLITS if split in data}


def load_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split ``(x, y)`` by name or alias ("train", "test", "public", "private", ... any case)."""
    name = canonical_split(split)
    path = _data_path(path)
    data, present = _read(path, (name,))
    if name not in data:
        raise DatasetError(
            f"{path}: has no {name} rows; splits present: "
            f"{', '.join(s for s in SPLITS if s in present) or 'none'}. Fix: ask for one of those."
        )
    return data[name]


def _data_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(
            f"path: got {type(path).__name__} {path!r}; pass the path (str or pathlib.Path) of fer2013.csv "
            "(or .csv.gz) or of the image-folder release root."
        )
    return Path(path)


def _read(path: Path, wanted) -> tuple[dict, set]:
    if not path.exists():
        raise DatasetError(
            f"{path}: no such file or folder. Fix: pass the path of fer2013.csv (or .csv.gz) or of the "
            "image-folder release root holding train/ and test/."
        )
    return _read_folder(path, wanted) if path.is_dir() else _read_csv(path, wanted)


def _wanted(splits) -> tuple[str, ...] | None:
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = [splits]
    try:
        names = [canonical_split(s) for s in splits]
    except TypeError:
        raise InvalidInputError(f"splits: got {splits!r}; pass None or a list of split names.") from None
    return tuple(s for s in SPLITS if s in names)


# --------------------------------------------------------------------------------------------- CSV


#: The CSV members of Kaggle's downloads, preferred in this order: the challenge's fer2013.csv, then the
#: competition zip's copy of the same rows (header ``emotion, Usage, pixels``).
_ARCHIVE_CSVS = ("fer2013.csv", "icml_face_data.csv")


def _open(path: Path, stack: ExitStack):
    """A binary file object for the CSV in ``path``: plain, gzip, or the CSV member of a tar(.gz) / zip."""
    try:
        with open_regular(path, error=DatasetError, what="dataset file") as fh:
            magic = fh.read(4)
        if magic == b"PK\x03\x04":
            if not zipfile.is_zipfile(path):
                raise DatasetError(
                    f"{path}: a truncated or corrupt zip archive (no central directory). "
                    "Fix: re-download it, or extract fer2013.csv from it and pass that."
                )
            archive = stack.enter_context(zipfile.ZipFile(path))
            name = _archive_csv(path, [i.filename for i in archive.infolist() if not i.is_dir()])
            return stack.enter_context(archive.open(name))
        _check_tar_headers(path, magic)  # before tarfile (is_tarfile too) reads long names / pax records whole
        if tarfile.is_tarfile(path):
            tar = stack.enter_context(tarfile.open(path))  # noqa: SIM115 (closed by the stack)
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            name = _archive_csv(path, list(members))
            member = tar.extractfile(members[name])
            if member is None:  # only for members that are not regular files; isfile() kept none of those
                raise DatasetError(f"{path}: member {name!r} is not a regular file. Fix: extract fer2013.csv.")
            return stack.enter_context(member)
        raw = stack.enter_context(open_regular(path, error=DatasetError, what="dataset file"))
        return stack.enter_context(gzip.open(raw, "rb")) if magic[:2] == b"\x1f\x8b" else raw
    except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported compression, encrypted member
        raise DatasetError(f"{path}: cannot be unpacked here ({exc}). Fix: extract fer2013.csv and pass that.") from exc
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{path}: cannot be read ({exc}). Fix: check the path and its permissions, or re-download it."
        ) from exc


#: Largest tar header payload (GNU long name, pax record) accepted; FER2013's archive has none over 100 bytes.
MAX_TAR_HEADER_BYTES = 64 * 1024
MAX_TAR_MEMBERS = 10_000


def _check_tar_headers(path: Path, magic: bytes) -> None:
    """Walk a tar(.gz) header by header, skipping member data, and refuse oversized long-name / pax headers or
    more than ``MAX_TAR_MEMBERS`` members, within ``MAX_CSV_BYTES`` of reading."""
    with ExitStack() as stack:
        raw = stack.enter_context(open_regular(path, error=DatasetError, what="dataset file"))
        fh = stack.enter_context(gzip.open(raw, "rb")) if magic[:2] == b"\x1f\x8b" else raw
        seen = 0
        for _ in range(MAX_TAR_MEMBERS + 1):
            header = fh.read(512)
            if len(header) < 512 or header == bytes(512) or header[257:262] != b"ustar":
                return  # the end, or not a (POSIX / GNU) tar at all
            try:
                size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                return  # not a header tarfile understands either: it reports the archive as corrupt
            if header[156:157] in (b"L", b"K", b"x", b"g") and size > MAX_TAR_HEADER_BYTES:
                raise DatasetError(
                    f"{path}: a tar header claims {size:,} bytes of member name or attributes (the most accepted is "
                    f"{MAX_TAR_HEADER_BYTES:,}). Fix: re-download the archive, or extract fer2013.csv and pass that."
                )
            skip = (size + 511) // 512 * 512
            seen += 512 + skip
            if seen > MAX_CSV_BYTES:
                raise DatasetError(
                    f"{path}: the tar archive unpacks to more than {MAX_CSV_BYTES:,} bytes. "
                    "Fix: extract fer2013.csv and pass that."
                )
            while skip:
                chunk = fh.read(min(skip, 1 << 20))
                if not chunk:
                    return
                skip -= len(chunk)
    raise DatasetError(
        f"{path}: a tar archive with more than {MAX_TAR_MEMBERS:,} members; expected fer2013.csv. "
        "Fix: extract fer2013.csv and pass that."
    )


def _archive_csv(path: Path, names: list[str]) -> str:
    """The CSV member of a downloaded archive: fer2013.csv, icml_face_data.csv, else its only ``.csv``."""
    visible = [n for n in names if not Path(n).name.startswith(".")]
    for wanted in _ARCHIVE_CSVS:
        found = [n for n in visible if Path(n).name.lower() == wanted]
        if len(found) == 1:
            return found[0]
    csvs = [n for n in visible if n.lower().endswith(".csv")]
    if len(csvs) == 1:
        return csvs[0]
    shown = ", ".join(n[:80] for n in names[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
    if any(n.lower().endswith(IMAGE_SUFFIXES) for n in visible):
        fix = "extract it and pass the folder that holds train/ and test/ (the image-folder release)"
    else:
        fix = "extract it and pass the path of fer2013.csv"
    raise DatasetError(
        f"{path}: an archive holding {shown}; expected fer2013.csv, icml_face_data.csv or a single .csv. Fix: {fix}."
    )


def _read_csv(path: Path, wanted):
    try:
        with ExitStack() as stack:
            return _parse_csv(_open(path, stack), path, wanted)
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{path}: the file cannot be read to its end ({exc}); the file or download is corrupt or truncated. "
            "Fix: re-download it (compare with SHA256SUMS when there is one)."
        ) from exc


def _bounded_lines(fh, path: Path):
    """``(line number, line)`` from line 2 on, refusing a line longer than any FER2013 row as it streams and a
    file that unpacks to more than ``MAX_CSV_BYTES``."""
    total = 0
    lineno = 1
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        lineno += 1
        total += len(line)
        if len(line) > MAX_LINE_BYTES:
            _bad_row(path, lineno, f"is longer than {MAX_LINE_BYTES:,} bytes, more than any FER2013 row holds")
        if total > MAX_CSV_BYTES:
            raise DatasetError(
                f"{path}: unpacks to more than {MAX_CSV_BYTES:,} bytes of CSV, over three times FER2013's 301 MB. "
                "Fix: pass the original fer2013.csv (or .csv.gz)."
            )
        yield lineno, line


def _parse_csv(fh, path: Path, wanted):
    header = fh.readline(MAX_LINE_BYTES + 1)
    if len(header) > MAX_LINE_BYTES:
        _bad_row(path, 1, f"is longer than {MAX_LINE_BYTES:,} bytes; the header is {EXPECTED_HEADER!r}")
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    names = [c.strip().strip(b'"').strip().lower() for c in header.rstrip(b"\r\n").split(b",")]
    expected = [b"emotion", b"pixels", b"usage"]
    if sorted(names) != expected:
        got = header.rstrip(b"\r\n")[:80].decode("utf-8", "replace")
        raise DatasetError(
            f"{path}: line 1: expected the header {EXPECTED_HEADER!r} (the Kaggle FER2013 CSV), got {got!r}. "
            "Fix: pass the original fer2013.csv (train.csv / test.csv without a Usage column are not "
            "supported), or add that header line."
        )
    i_label, i_pixels, i_usage = (names.index(n) for n in expected)
    usages = {s.encode(): s for s in SPLITS}
    rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)

    blank = 0
    for lineno, line in _bounded_lines(fh, path):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            blank += 1
            if blank > MAX_BLANK_LINES:
                _bad_row(path, lineno, f"more than {MAX_BLANK_LINES:,} blank lines (FER2013 has none)")
            continue
        fields = line.split(b",")
        if len(fields) != 3:
            _bad_row(path, lineno, f"found {len(fields)} comma-separated fields, expected 3 ({EXPECTED_HEADER})")
        fields = [f.strip().strip(b'"') for f in fields]
        label = _LABELS.get(fields[i_label].strip())
        if label is None:
            _bad_row(path, lineno, f"emotion {_show(fields[i_label])} is not an integer 0-{len(EMOTIONS) - 1}")
        usage = usages.get(fields[i_usage].strip())
        if usage is None:
            _bad_row(path, lineno, f"Usage {_show(fields[i_usage])} is not one of {', '.join(SPLITS)}")
        counts[usage] += 1
        if wanted is not None and usage not in wanted:
            continue
        pixels = fields[i_pixels]
        try:
            values = np.fromstring(pixels, dtype=np.int64, sep=" ")
            ok = values.size == _PIXELS and values.view(np.uint64).max() <= 255
        except ValueError:  # a token that is not an integer
            ok = False
        if not ok:
            _bad_row(path, lineno, _pixel_problem(pixels))
        rows[usage].append(values.astype(np.uint8))
        labels[usage].append(label)

    if not any(counts.values()):
        raise DatasetError(f"{path}: has a header but no data rows. Fix: pass the full fer2013.csv.")
    present = {s for s, n in counts.items() if n}
    out = {}
    for split in SPLITS:
        if rows[split]:
            x = np.stack(rows[split]).reshape(-1, *INPUT_SIZE)
            out[split] = (x, np.asarray(labels[split], dtype=np.int64))
    return out, present


def _pixel_problem(pixels: bytes) -> str:
    tokens = pixels.split()
    for position, token in enumerate(tokens, start=1):
        if not token.isdigit():
            return f"pixel {position} is {_show(token)}, not an integer 0-255"
        if len(token) > 3 or int(token) > 255:
            return f"pixel {position} is {_show(token)}, outside 0-255"
    return f"has {len(tokens)} pixel values, expected {_PIXELS} (48x48)"


def _bad_row(path: Path, lineno: int, problem: str) -> NoReturn:
    raise DatasetError(f"{path}: line {lineno}: {problem}. Fix: {_ROW_FORMAT}; repair or delete this line.")


def _show(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:40] + "...")


# ------------------------------------------------------------------------------------ image folders


def _read_folder(root: Path, wanted):
    parts = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in ("train", "test")]
    if not parts:
        csvs = sorted(p.name for p in root.iterdir() if ".csv" in p.name.lower())
        hint = f" It holds {', '.join(csvs)}: pass that file instead." if csvs else ""
        raise DatasetError(
            f"{root}: expected the image-folder release layout train/<emotion>/*.jpg and/or "
            f"test/<emotion>/*.jpg, found neither train/ nor test/.{hint} Fix: pass the folder that holds "
            "train/ and test/, or the fer2013.csv file."
        )
    found: list[tuple[int, int, int, str, Path, int]] = []
    for part in parts:
        for folder in sorted(part.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            emotion = folder.name.lower()
            if emotion not in EMOTIONS:
                raise DatasetError(
                    f"{folder}: unknown emotion folder {folder.name!r}; expected folders named "
                    f"{', '.join(EMOTIONS)}. Fix: rename or remove it."
                )
            for file in folder.iterdir():
                if file.name.startswith(".") or file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                match = _FILE_NAME.match(file.name)
                if match is None:
                    raise DatasetError(
                        f"{file}: the file name does not start with Training_, PublicTest_ or PrivateTest_, "
                        "so its FER2013 split is unknown. Fix: rename it with its split prefix, as in the "
                        "Kaggle image-folder release, or remove it."
                    )
                split_index = SPLITS.index(match.group(1))
                number = match.group(2)
                key = (0, int(number)) if number is not None else (1, 0)
                found.append((split_index, *key, file.name, file, EMOTIONS.index(emotion)))
    found.sort(key=lambda t: (*t[:4], str(t[4])))
    present = {SPLITS[t[0]] for t in found}
    out = {}
    for index, split in enumerate(SPLITS):
        if wanted is not None and split not in wanted:
            continue
        items = [t for t in found if t[0] == index]
        if items:
            x = np.empty((len(items), *INPUT_SIZE), np.uint8)
            for row, item in enumerate(items):
                x[row] = _read_face(item[4])
            out[split] = (x, np.asarray([t[5] for t in items], dtype=np.int64))
    return out, present


def _read_face(file: Path) -> np.ndarray:
    from .images import InvalidImageError, decode_image

    data = read_regular_file(file, max_bytes=MAX_FACE_FILE_BYTES, error=DatasetError, what="face image")
    try:
        image = to_gray(decode_image(data, source=str(file), max_pixels=MAX_FACE_PIXELS))
    except InvalidImageError as exc:
        reason = str(exc).split(" Fix:")[0].removeprefix(f"{file}: ")
        raise DatasetError(
            f"{file}: cannot be decoded as an image ({reason}). Fix: re-download it or remove it."
        ) from None
    return resize_image(image, *INPUT_SIZE)

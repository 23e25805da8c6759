"""Image loading: files, encoded bytes and arrays -> uint8 BGR (H, W, 3) or gray (H, W).

Decoding goes through ``cv2.imdecode`` on bytes read here (so non-ASCII paths work on every OS) with
``IMREAD_ANYCOLOR | IMREAD_ANYDEPTH``: gray sources stay 2-D, 16-bit sources keep their precision until
they are scaled to 8 bits, and OpenCV applies the EXIF orientation (it skips it only for
``IMREAD_UNCHANGED``). An alpha channel is dropped, as ``cv2.imread(path)`` does: transparent pixels keep
whatever color they store.

Decompression bombs: the pixel count is read from the header of every accepted format (``ACCEPTED_FORMATS``:
JPEG, PNG, GIF, BMP, WebP, TIFF and PNM) and checked against ``max_pixels`` *before* anything is decoded.
OpenCV picks its decoder by content, not by name, so data whose size cannot be read first (AVIF, HDR, EXR,
JPEG 2000, PFM, Sun raster, a header too short or malformed) is refused, whatever the file is called. The
JPEG scan skips stray bytes between segments the way libjpeg does, so junk before the frame header cannot
hide the size. Files are read only when they are regular files, and at most ``MAX_FILE_BYTES`` of them.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import InvalidImageError, InvalidInputError, positive_int

#: Largest image (width * height) ``load_image`` decodes unless told otherwise.
DEFAULT_MAX_PIXELS = 50_000_000
#: Largest image file read (a 50-megapixel 16-bit RGBA PNG stored uncompressed is 400 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024

#: Formats ``decode_image`` accepts: those whose width and height it reads before decoding.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP", "TIFF", "PNM")
_FORMATS_HINT = "JPEG, PNG, BMP, WebP, GIF, TIFF or PNM (PBM/PGM/PPM)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Comments end at CR or LF, as in OpenCV's PNM reader (a CR-ended comment must not hide a digit from us).
_PNM_HEADER = re.compile(rb"P[1-6](?:\s|#[^\r\n]*[\r\n])+(\d+)(?:\s|#[^\r\n]*[\r\n])+(\d+)")


def load_image(src, *, max_pixels: int | None = None) -> np.ndarray:
    """Load ``src`` as uint8 BGR ``(H, W, 3)`` (color sources) or gray ``(H, W)`` (grayscale sources).

    ``src`` is a path (``str`` or ``os.PathLike``), encoded image bytes (``bytes``, ``bytearray``, ``memoryview``),
    a PIL image (converted from RGB) or a numpy array (BGR, as OpenCV gives). Arrays are validated and converted:
    uint8 2-D gray and 3-D BGR pass through, ``(H, W, 1)`` becomes 2-D, BGRA drops its alpha, uint16 is scaled to 8
    bits (/257, rounded), floats must lie in [0, 1] (scaled by 255, rounded), other integer dtypes must hold values
    in 0..255.

    Files and bytes larger than ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``) are refused. Every
    failure raises ``InvalidImageError`` (bad file or bytes) or ``InvalidInputError`` (bad argument).
    """
    limit = _check_max_pixels(max_pixels)
    if isinstance(src, np.ndarray):
        return as_image(src)
    if is_pil_image(src):
        return from_pil(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        return decode_image(data, source=f"<{len(data)} bytes>", max_pixels=limit)
    if isinstance(src, (str, os.PathLike)):
        path, data = _read_file(src)
        return decode_image(data, source=str(path), max_pixels=limit)
    raise InvalidInputError(
        f"load_image: got {type(src).__name__}; pass an image path (str or pathlib.Path), encoded image "
        "bytes, or a numpy array (uint8 gray (H, W) or BGR (H, W, 3))."
    )


def decode_image(data: bytes, *, source: str = "image bytes", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image ``data``; ``source`` names it in error messages. See ``load_image``."""
    limit = _check_max_pixels(max_pixels)
    if not data:
        raise InvalidImageError(f"{source}: is empty (0 bytes). Fix: pass a non-empty {_FORMATS_HINT} file.")
    size = header_size(data)
    if size is None:
        raise InvalidImageError(
            f"{source}: not an accepted image, or its width and height cannot be read from the header before "
            f"decoding (starts with {data[:8]!r}). Fix: pass a {_FORMATS_HINT} file (convert others first, e.g. "
            "AVIF, HDR or EXR to PNG)."
        )
    _check_limit(source, size[1], size[2], limit, before_decoding=True)
    if size[0] == "JPEG" and _jpeg_is_truncated(data):
        raise InvalidImageError(
            f"{source}: the JPEG data is truncated (no end-of-image marker after the image data). "
            "Fix: re-download or re-export the file."
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:  # OpenCV raises for some corrupt inputs and returns None for others
        raise InvalidImageError(
            f"{source}: cannot be decoded as an image ({_first_line(exc)}). Fix: pass a valid {_FORMATS_HINT} file."
        ) from exc
    if image is None or image.size == 0:
        raise InvalidImageError(
            f"{source}: cannot be decoded as an image (starts with {data[:8]!r}; truncated, corrupt or "
            f"not an image). Fix: pass a valid {_FORMATS_HINT} file."
        )
    _check_limit(source, image.shape[1], image.shape[0], limit, before_decoding=False)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InvalidImageError(f"{source}: the decoded float image holds NaN or infinity values.")
    if image.dtype.kind == "f":  # EXR / HDR / PFM: clip to the displayable [0, 1] range
        image = np.clip(image, 0.0, 1.0)
    return as_image(image, what=source, decoded=True)


def is_pil_image(value) -> bool:
    """A PIL image (recognised without importing PIL)."""
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert") and hasattr(value, "mode")


def from_pil(image) -> np.ndarray:
    """A PIL image as the SDK's arrays: gray modes -> (H, W) uint8, everything else -> BGR (H, W, 3) uint8 (PIL
    holds RGB; converting here is what keeps red and blue from being swapped)."""
    if image.mode in ("L", "1", "I;16", "I", "F"):
        return np.asarray(image.convert("L"))
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def plain_array(array: np.ndarray, *, what: str = "array") -> np.ndarray:
    """``array`` as a base ``numpy.ndarray``: a ``np.matrix`` becomes its 2-D array, a masked array its data
    (refused when any pixel is masked: there is no right value for it), other subclasses their base array."""
    if isinstance(array, np.ma.MaskedArray):
        if np.ma.is_masked(array):
            raise InvalidInputError(
                f"{what}: a masked array with {int(np.ma.count_masked(array))} masked pixels; a masked pixel has no "
                "value to classify. Fix: fill them first, e.g. a.filled(0), or pass a plain array."
            )
        return np.asarray(np.ma.getdata(array))
    if type(array) is not np.ndarray:
        return np.asarray(array)
    return array


def as_image(array: np.ndarray, *, what: str = "array", decoded: bool = False) -> np.ndarray:
    """Validate an image array and return it as uint8 gray ``(H, W)`` or BGR ``(H, W, 3)``.

    ``decoded``: the array came from decoding a file, so a dark 16-bit image is not mistaken for 8-bit
    pixels stored as uint16 (see :func:`pixel_values`).
    """
    if not isinstance(array, np.ndarray):
        raise InvalidInputError(f"{what}: expected a numpy array, got {type(array).__name__}.")
    array = plain_array(array, what=what)
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    elif not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))):
        raise InvalidInputError(
            f"{what}: got an array of shape {shape} and dtype {array.dtype}; an image must be shaped (H, W) "
            "gray, (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA."
        )
    if array.size == 0:
        raise InvalidInputError(f"{what}: got an empty image of shape {shape}; width and height must be >= 1.")
    array = pixel_values(array, what=what, decoded=decoded)
    if array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array


def pixel_values(
    array: np.ndarray, *, what: str = "array", keep_float: bool = False, decoded: bool = False
) -> np.ndarray:
    """Check an array's dtype and values; return uint8 pixels (or float32 pixels when ``keep_float``).

    uint8 passes through; uint16 is scaled by 1/257 (16-bit -> 8-bit, rounded); other integer dtypes
    must hold values in 0..255; floats must be finite and in [0, 1] and mean ``pixel / 255``: they
    become ``round(value * 255)`` as uint8, or ``value * 255`` as float32 when ``keep_float`` is true.
    bool, complex, object and string arrays raise ``InvalidInputError``. A uint16 array passed in (not
    ``decoded`` from a file) whose values all lie in 0..255 (and not all 0) is refused as ambiguous: it is
    almost always 8-bit pixels stored as uint16, which read as 16-bit would be a near-black image.
    """
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    desc = f"{what}: got dtype {dtype} with shape {array.shape}"
    if dtype == np.uint16:
        if not decoded and array.size and 0 < int(array.max()) <= 255:
            raise InvalidInputError(
                f"{desc} and values in [{array.min()}, {array.max()}]: uint16 arrays are read as 16-bit "
                "(0..65535), so these would be a near-black image. Fix: if they are 8-bit pixels, cast with "
                ".astype(np.uint8); if they really are a dark 16-bit image, convert it yourself with "
                "(a.astype(np.uint32) * 255 // 65535).astype(np.uint8), or pass the image file."
            )
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InvalidInputError(
                f"{desc} and values in [{array.min()}, {array.max()}]; integer pixels must lie in 0..255 "
                "(uint16 arrays are read as 16-bit). Fix: scale the values to 0..255 and cast to np.uint8."
            )
        return array.astype(np.uint8)
    if dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InvalidInputError(f"{desc} containing NaN or infinity; pixel values must be finite.")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise InvalidInputError(
                f"{desc} and values in [{array.min():g}, {array.max():g}]; float pixels must lie in [0, 1] "
                "(pixel / 255). Fix: divide by 255, or pass 0-255 values as np.uint8."
            )
        if keep_float:
            return array.astype(np.float32) * np.float32(255.0)
        return np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    raise InvalidInputError(
        f"{desc}; accepted pixel dtypes are uint8, uint16, other integers holding 0..255, and floats in "
        "[0, 1]. bool, complex, object and string arrays are not images."
    )


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the header of PNG, JPEG, GIF, BMP, WebP, TIFF and PNM data.

    Returns None for other formats or headers too short or malformed to read (``decode_image`` refuses them).
    """
    try:
        if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height
        if data[:2] == b"\xff\xd8":
            size = _jpeg_scan(data)[0]
            return None if size is None else ("JPEG", *size)
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            width, height = struct.unpack("<HH", data[6:10])
            return "GIF", width, height
        if data[:2] == b"BM" and len(data) >= 26:
            (dib_size,) = struct.unpack("<I", data[14:18])
            if dib_size == 12:  # BITMAPCOREHEADER: 16-bit dimensions
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return "BMP", abs(width), abs(height)  # negative height = top-down rows
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] and data[1:2] in b"123456":
            match = _PNM_HEADER.match(data[:65536])
            if match:
                return "PNM", int(match.group(1)), int(match.group(2))
    except (struct.error, ValueError, IndexError):
        return None
    return None


def _tiff_size(data: bytes) -> tuple[str, int, int] | None:
    """Width and height of the first image (IFD) of a classic or Big TIFF; None when they are missing, given
    twice or with an unexpected type (libtiff keeps the first copy of a tag: we refuse rather than guess)."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        (offset,) = struct.unpack(order + "Q", data[8:16])
        (count,) = struct.unpack(order + "Q", data[offset : offset + 8])
        first, size, head = offset + 8, 20, "HHQ"
    else:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset : offset + 2])
        first, size, head = offset + 2, 12, "HHI"
    found: dict[int, int] = {}
    for k in range(min(count, 4096)):
        entry = first + size * k
        tag, kind, _ = struct.unpack(order + head, data[entry : entry + struct.calcsize(head)])
        if tag not in (256, 257):
            continue
        if tag in found or kind not in (3, 4, 16):  # a repeated width/height, or not SHORT / LONG / LONG8
            return None
        fmt = {3: "H", 4: "I", 16: "Q"}[kind]
        value_at = entry + struct.calcsize(head)
        (found[tag],) = struct.unpack(order + fmt, data[value_at : value_at + struct.calcsize(fmt)])
    if 256 in found and 257 in found:
        return "TIFF", found[256], found[257]
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return "WebP", 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return "WebP", width, height
    return None


def _jpeg_scan(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """Walk the JPEG marker segments: ``((width, height) from the SOF marker, offset of the first SOS)``."""
    size = None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips to the next 0xFF, and so do we
            i = data.find(b"\xff", i)
            if i < 0:
                return size, None
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x00:  # FF 00 is no marker: libjpeg discards it as stray data
            i += 2
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers, no length
            i += 2
            continue
        if marker == 0xD9:
            return size, None
        if marker == 0xDA:
            return size, i
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2:
            return size, None
        if marker in _JPEG_SOF and size is None and i + 9 <= n:
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            size = (width, height)
        i += 2 + seg_len
    return size, None


def _jpeg_is_truncated(data: bytes) -> bool:
    """True when the entropy-coded data after the first scan header never reaches an EOI marker.

    Entropy-coded bytes cannot contain FF D9 (0xFF is always stuffed as FF 00), so a missing EOI after the
    first SOS means the file was cut. OpenCV 4.14 refuses such files too; older builds decode a gray tail.
    """
    sos = _jpeg_scan(data)[1]
    return sos is not None and data.find(b"\xff\xd9", sos) == -1


def _check_limit(source: str, width: int, height: int, limit: int, *, before_decoding: bool) -> None:
    pixels = int(width) * int(height)
    if pixels > limit:
        when = "refused before decoding" if before_decoding else "refused after decoding"
        raise InvalidImageError(
            f"{source}: image is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            f"({when}). Fix: if you trust this file, pass max_pixels={pixels} (CLI: --max-pixels {pixels}) or larger."
        )


def _check_max_pixels(max_pixels) -> int:
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    return positive_int("max_pixels", max_pixels, "40_000_000")


def _read_file(src) -> tuple[Path, bytes]:
    from .files import read_regular_file

    try:
        path = Path(src)
    except TypeError as exc:
        raise InvalidInputError(f"load_image: {src!r} is not a usable path ({exc}).") from exc
    if str(src) == "":
        raise InvalidImageError("load_image: got an empty path. Fix: pass the path of an image file.")
    return path, read_regular_file(path, max_bytes=MAX_FILE_BYTES, error=InvalidImageError, what="image file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__

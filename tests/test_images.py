"""fer_sdk.images: decoding, array validation, pixel limits and hostile inputs, on real encoded images."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fer_sdk import images
from fer_sdk.errors import FerSdkError, InvalidImageError, InvalidInputError
from fer_sdk.images import as_image, decode_image, header_size, load_image
from fer_sdk.samples import sample_names, sample_path

RNG = np.random.default_rng(1234)
COLOR = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
SMOOTH = cv2.GaussianBlur(COLOR, (0, 0), 6)  # survives lossy codecs nearly unchanged


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) followed by a tiny IDAT and IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its SOF0 dimensions patched to width x height."""
    data = bytearray(encode(".jpg", COLOR))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# ------------------------------------------------------------------------------------ good inputs


def test_png_file_color_and_gray_roundtrip_exactly(tmp_path):
    (tmp_path / "c.png").write_bytes(encode(".png", COLOR))
    (tmp_path / "g.png").write_bytes(encode(".png", GRAY))
    color, gray = load_image(tmp_path / "c.png"), load_image(str(tmp_path / "g.png"))
    assert color.dtype == np.uint8 and color.shape == (37, 53, 3)
    np.testing.assert_array_equal(color, COLOR)
    assert gray.shape == (37, 53)
    np.testing.assert_array_equal(gray, GRAY)


def test_non_ascii_path(tmp_path):
    path = tmp_path / "visage_é_顔.png"
    path.write_bytes(encode(".png", COLOR))
    np.testing.assert_array_equal(load_image(path), COLOR)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_like_sources(wrap):
    data = encode(".png", COLOR)
    np.testing.assert_array_equal(load_image(wrap(data)), COLOR)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".pgm"])
def test_formats_decode(ext):
    src = cv2.cvtColor(SMOOTH, cv2.COLOR_BGR2GRAY) if ext == ".pgm" else SMOOTH
    out = load_image(encode(ext, src))
    assert out.shape == src.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - src).mean() < (0.01 if ext not in (".jpg", ".webp") else 3)


def test_one_by_one_png_and_jpeg():
    assert load_image(encode(".png", np.array([[[1, 2, 3]]], np.uint8))).tolist() == [[[1, 2, 3]]]
    assert load_image(encode(".jpg", np.full((1, 1, 3), 128, np.uint8))).shape == (1, 1, 3)
    assert load_image(encode(".png", np.array([[7]], np.uint8))).tolist() == [[7]]


def test_16bit_png_becomes_8bit():
    src = np.array([[0, 257 * 100, 65535], [128, 129, 257 * 254 + 129]], np.uint16)
    out = load_image(encode(".png", src))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 100, 255], [0, 1, 255]]


def test_uint16_array_holding_8bit_values_is_refused_but_a_dark_16bit_file_is_read():
    eight_bit = np.array([[0, 100, 255]], np.uint16)  # 8-bit pixels stored as uint16: ambiguous
    with pytest.raises(InvalidInputError, match=r"astype\(np.uint8\)") as info:
        load_image(eight_bit)
    assert "uint16" in str(info.value) and "[0, 255]" in str(info.value)
    assert load_image(np.zeros((2, 2), np.uint16)).tolist() == [[0, 0], [0, 0]]  # all black: unambiguous
    dark = np.array([[0, 200, 255]], np.uint16)  # a genuinely dark 16-bit PNG decodes as before
    assert load_image(encode(".png", dark)).tolist() == [[0, 1, 1]]


def test_rgba_png_drops_alpha():
    bgra = np.dstack([COLOR, np.linspace(0, 255, 37 * 53).reshape(37, 53).astype(np.uint8)])
    out = load_image(encode(".png", bgra))
    assert out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out, COLOR)


def test_palette_png_becomes_bgr():
    pil = pytest.importorskip("PIL.Image")
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)  # red left half
    rgb[:, 3:] = (0, 0, 255)  # blue right half
    buf = io.BytesIO()
    pil.fromarray(rgb).convert("P").save(buf, "PNG")
    assert buf.getvalue()[25] == 3  # IHDR color type 3: palette
    out = load_image(buf.getvalue())
    assert out.shape == (4, 6, 3)
    assert out[0, 0].tolist() == [0, 0, 255] and out[0, 5].tolist() == [255, 0, 0]  # BGR order


def _exif_jpeg(orientation: int | None) -> bytes:
    """A 20x40 JPEG, left half white, with a hand-written EXIF APP1 segment holding the orientation tag."""
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255
    data = encode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if orientation is None:
        return data
    # TIFF header (big endian), one IFD with one entry: tag 0x0112 SHORT count 1 value `orientation`.
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def test_exif_orientation_is_applied():
    plain = load_image(_exif_jpeg(None))
    assert plain.shape == (20, 40, 3)
    rotated = load_image(_exif_jpeg(6))  # 6 = rotate 90 degrees clockwise to display
    assert rotated.shape == (40, 20, 3)
    assert rotated[:15].mean() > 200 and rotated[-15:].mean() < 50  # the white left half is now on top


def test_header_size_reads_real_headers():
    pil = pytest.importorskip("PIL.Image")
    assert header_size(encode(".png", COLOR)) == ("PNG", 53, 37)
    assert header_size(encode(".jpg", COLOR)) == ("JPEG", 53, 37)
    assert header_size(encode(".jpg", COLOR, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])) == ("JPEG", 53, 37)
    assert header_size(_exif_jpeg(6)) == ("JPEG", 40, 20)
    assert header_size(encode(".bmp", COLOR)) == ("BMP", 53, 37)
    assert header_size(encode(".webp", COLOR)) == ("WebP", 53, 37)  # lossy VP8
    assert header_size(encode(".webp", COLOR, [cv2.IMWRITE_WEBP_QUALITY, 101])) == ("WebP", 53, 37)  # VP8L
    assert header_size(encode(".pgm", GRAY)) == ("PNM", 53, 37)
    buf = io.BytesIO()
    pil.fromarray(GRAY).save(buf, "GIF")
    assert header_size(buf.getvalue()) == ("GIF", 53, 37)
    assert header_size(encode(".tiff", COLOR)) == ("TIFF", 53, 37)
    assert header_size(b"\x00\x00\x00\x1cftypavif" + bytes(40)) is None  # AVIF: no size before decoding


def test_formats_whose_size_cannot_be_read_first_are_refused_whatever_their_name(tmp_path):
    hdr = encode(".hdr", np.zeros((20, 30, 3), np.float32))
    (tmp_path / "photo.jpg").write_bytes(hdr)  # Radiance HDR named .jpg: OpenCV decodes by content
    with pytest.raises(InvalidImageError, match=r"photo\.jpg: not an accepted image.*JPEG, PNG"):
        load_image(tmp_path / "photo.jpg")


def test_junk_before_the_jpeg_frame_header_cannot_hide_its_size():
    data = encode(".jpg", COLOR)
    junked = data[:2] + b"\x00" + data[2:]  # one stray byte before the first marker
    assert header_size(junked) == ("JPEG", 53, 37)
    with pytest.raises(InvalidImageError, match="refused before decoding"):
        load_image(junked, max_pixels=1000)


def test_a_tiff_bomb_is_refused_before_decoding():
    import struct

    # 1-bit 32000x32000 TIFF header (a few hundred bytes claim 1 gigapixel)
    entries = [(256, 4, 1, 32000), (257, 4, 1, 32000), (258, 3, 1, 1), (259, 3, 1, 4), (262, 3, 1, 0)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)
    with pytest.raises(InvalidImageError, match="32000x32000.*refused before decoding"):
        load_image(data)


def test_sample_photos():
    names = sample_names()
    assert {"astronaut.jpg", "two_faces.jpg"} <= set(names)
    assert (sample_path("astronaut.jpg").parent / "SOURCES.md").is_file()
    for name in names:
        assert sample_path(name).stat().st_size < 200_000
        assert load_image(sample_path(name)).ndim == 3
    with pytest.raises(InvalidInputError, match="astronaut.jpg"):
        sample_path("nope.jpg")


# ----------------------------------------------------------------------------------- pixel limits


def test_png_header_claiming_huge_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(InvalidImageError) as err:
        load_image(path)
    msg = str(err.value)
    assert "bomb.png" in msg and "100000x100000" in msg and "before decoding" in msg and "max_pixels=" in msg


def test_jpeg_header_claiming_huge_size_is_refused_before_decoding():
    with pytest.raises(InvalidImageError, match=r"60000x60000.*before decoding"):
        load_image(jpeg_claiming(60_000, 60_000))


@pytest.mark.parametrize(
    "data",
    [
        b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 20,
        b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 30_000, -30_000) + b"\x00" * 40,
        b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (20_000 - 1).to_bytes(3, "little") * 2 + b"\x00" * 8,
        b"P5\n# comment\n40000 40000\n255\n" + b"\x00" * 16,
    ],
    ids=["gif", "bmp", "webp", "pgm"],
)
def test_other_headers_claiming_huge_sizes_are_refused(data):
    with pytest.raises(InvalidImageError, match="before decoding"):
        load_image(data)


def test_max_pixels_per_call_and_module_default(monkeypatch):
    data = encode(".png", np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidImageError, match=r"100x100 = 10,000 pixels, over the limit of 9,999"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).shape == (100, 100, 3)
    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", 5_000)
    with pytest.raises(InvalidImageError, match="max_pixels=10000"):
        load_image(data)


def test_tiff_is_checked_before_decoding():
    data = encode(".tiff", np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="before decoding"):
        load_image(data, max_pixels=5_000)
    assert load_image(data).shape == (100, 100, 3)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_invalid_max_pixels(bad):
    with pytest.raises(InvalidInputError, match="max_pixels"):
        load_image(encode(".png", GRAY), max_pixels=bad)


# --------------------------------------------------------------------------------- hostile inputs


def test_zero_bytes(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"empty\.jpg: is empty \(0 bytes\).*Fix"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(InvalidImageError, match="0 bytes"):
        load_image(b"")


@pytest.mark.parametrize("cut", [2, 100, 0.5])
def test_truncated_jpeg(tmp_path, cut):
    data = encode(".jpg", COLOR)
    data = data[: int(len(data) * cut)] if isinstance(cut, float) else data[:-cut]
    (tmp_path / "cut.jpg").write_bytes(data)
    with pytest.raises(InvalidImageError, match=r"cut\.jpg.*Fix"):
        load_image(tmp_path / "cut.jpg")


def test_truncated_png():
    data = encode(".png", COLOR)
    with pytest.raises(InvalidImageError, match="Fix"):
        load_image(data[: len(data) // 2])


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image, just some text\n")
    with pytest.raises(InvalidImageError, match=r"notes\.jpg: not an accepted image.*Fix"):
        load_image(path)


def test_random_bytes():
    with pytest.raises(InvalidImageError):
        load_image(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InvalidImageError, match=r"missing\.png: no such image file.*Fix"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(InvalidImageError, match="empty path"):
        load_image("")


@pytest.mark.parametrize("bad", [None, 42, ["a.jpg"], {"path": "a.jpg"}])
def test_unsupported_source_types(bad):
    with pytest.raises(InvalidInputError, match="pass an image path"):
        load_image(bad)


# ---------------------------------------------------------------------------------------- arrays


def test_arrays_are_converted():
    np.testing.assert_array_equal(load_image(GRAY), GRAY)
    np.testing.assert_array_equal(load_image(COLOR), COLOR)
    np.testing.assert_array_equal(load_image(GRAY[:, :, None]), GRAY)
    bgra = np.dstack([COLOR, np.zeros((37, 53), np.uint8)])
    np.testing.assert_array_equal(load_image(bgra), COLOR)
    assert load_image(np.array([[0, 257, 65535]], np.uint16)).tolist() == [[0, 1, 255]]
    assert load_image(np.array([[0.0, 0.5, 1.0]], np.float64)).tolist() == [[0, 128, 255]]
    assert load_image(np.array([[0, 200]], np.int64)).tolist() == [[0, 200]]
    assert load_image(np.array([[0.25]], np.float16)).tolist() == [[64]]


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((4, 4), np.nan), "NaN or infinity"),
        (np.full((4, 4), np.inf, np.float32), "NaN or infinity"),
        (np.zeros((4, 4), np.complex64), "complex"),
        (np.zeros((4, 4), object), "object"),
        (np.zeros((4, 4), bool), "bool"),
        (np.array([["a"]]), "<U1"),
        (np.full((4, 4), 1.5), r"\[0, 1\]"),
        (np.full((4, 4), -3, np.int16), "0..255"),
        (np.zeros(5, np.uint8), r"shape \(5,\)"),
        (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
        (np.zeros((4, 4, 2), np.uint8), r"\(4, 4, 2\)"),
        (np.zeros((0, 4), np.uint8), "empty image"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(InvalidInputError, match=match):
        as_image(array)


# ------------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP", b"P5\n"]
    ),
    body=st.binary(max_size=300),
)
def test_arbitrary_bytes_never_escape(prefix, body):
    try:
        out = decode_image(prefix + body, max_pixels=1_000_000)
    except FerSdkError as exc:
        assert isinstance(exc, InvalidImageError)
    else:
        assert out.dtype == np.uint8 and out.ndim in (2, 3)


@settings(max_examples=30, deadline=2000)
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0, max_value=255))
def test_corrupted_real_files_never_escape(cut, flip):
    for data in (encode(".jpg", COLOR), encode(".png", COLOR)):
        mutated = bytearray(data[: max(1, len(data) - cut)])
        mutated[len(mutated) // 2] ^= flip
        with contextlib.suppress(InvalidImageError):
            load_image(bytes(mutated))

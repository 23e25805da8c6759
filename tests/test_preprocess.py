"""fer_sdk.preprocess: Preprocessing spec, prepare_faces input rules, flip and crop helpers."""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest
from conftest import CONTRACT_META
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fer_sdk.errors import FerSdkError, InvalidInputError, ModelError
from fer_sdk.preprocess import Preprocessing, crop_face, flip_horizontal, prepare_faces
from fer_sdk.samples import sample_path

RNG = np.random.default_rng(7)
FACES = RNG.integers(0, 256, (5, 48, 48), dtype=np.uint8)
PHOTO = RNG.integers(0, 256, (120, 90, 3), dtype=np.uint8)


def expected(gray: np.ndarray, size=(48, 48)) -> np.ndarray:
    """Reference implementation of the CONTRACTS.md rule for one gray image."""
    h, w = gray.shape
    interp = cv2.INTER_AREA if (h >= size[0] and w >= size[1]) else cv2.INTER_LINEAR
    if (h, w) != size:
        gray = cv2.resize(gray, (size[1], size[0]), interpolation=interp)
    return gray.astype(np.float32) * np.float32(1 / 255) + np.float32(0.0)


# ------------------------------------------------------------------------------- Preprocessing


def test_defaults_and_from_metadata():
    prep = Preprocessing()
    assert (prep.height, prep.width, prep.color, prep.resize, prep.offset) == (48, 48, "gray", "area", 0.0)
    assert math.isclose(prep.scale, 1 / 255)
    assert Preprocessing.from_metadata(CONTRACT_META) == prep
    with pytest.raises(AttributeError):
        prep.height = 64  # frozen


@pytest.mark.parametrize("key", ["height", "width", "scale", "offset", "color", "resize"])
def test_from_metadata_missing_key(key):
    meta = copy.deepcopy(CONTRACT_META)
    del meta["input"][key]
    with pytest.raises(ModelError, match=rf"input\.{key} is missing"):
        Preprocessing.from_metadata(meta)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("height", "48"),
        ("height", 0),
        ("width", True),
        ("scale", float("nan")),
        ("scale", 0),
        ("offset", None),
        ("color", "rgb"),
        ("resize", "cubic"),
        ("channels", 3),
        ("layout", "NCHW"),
        ("dtype", "float16"),
    ],
)
def test_from_metadata_invalid_value(key, value):
    meta = copy.deepcopy(CONTRACT_META)
    meta["input"][key] = value
    with pytest.raises(ModelError, match=rf"input\.{key}"):
        Preprocessing.from_metadata(meta)


@pytest.mark.parametrize("meta", [{}, {"input": None}, None, "json"])
def test_from_metadata_without_input(meta):
    with pytest.raises(ModelError, match="'input'"):
        Preprocessing.from_metadata(meta)


def test_direct_construction_is_validated():
    with pytest.raises(InvalidInputError, match="resize"):
        Preprocessing(resize="bicubic")
    with pytest.raises(InvalidInputError, match="height"):
        Preprocessing(height=-1)


# ------------------------------------------------------------------------------ prepare_faces


def test_gray_crops_single_and_batches():
    one = prepare_faces(FACES[0])
    assert one.shape == (1, 48, 48, 1) and one.dtype == np.float32
    np.testing.assert_allclose(one[0, :, :, 0], FACES[0] / 255.0, rtol=0, atol=1e-7)
    batch = prepare_faces(FACES)
    assert batch.shape == (5, 48, 48, 1)
    np.testing.assert_array_equal(prepare_faces(FACES[..., None]), batch)
    np.testing.assert_array_equal(prepare_faces(list(FACES)), batch)
    np.testing.assert_array_equal(prepare_faces(tuple(FACES)), batch)


def test_float_input_means_pixel_over_255():
    floats = FACES.astype(np.float64) / 255.0
    np.testing.assert_allclose(prepare_faces(floats), prepare_faces(FACES), rtol=0, atol=1e-6)
    prep = Preprocessing(scale=2 / 255, offset=-1.0)
    np.testing.assert_allclose(prepare_faces(floats, prep), prepare_faces(FACES) * 2 - 1, atol=1e-5)


def test_color_photo_is_grayed_and_resized_as_in_contract():
    gray = cv2.cvtColor(PHOTO, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(prepare_faces(PHOTO)[0, :, :, 0], expected(gray))
    bgra = np.dstack([PHOTO, np.full(PHOTO.shape[:2], 9, np.uint8)])
    np.testing.assert_array_equal(prepare_faces(bgra), prepare_faces(PHOTO))
    small = PHOTO[:20, :30]  # enlarging uses INTER_LINEAR
    np.testing.assert_array_equal(prepare_faces(small)[0, :, :, 0], expected(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)))
    # and the reference really differs between the two interpolations, so the test can tell them apart
    area = cv2.resize(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(area * np.float32(1 / 255), expected(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)))


def test_any_size_gray_and_color_batches():
    gray = RNG.integers(0, 256, (3, 100, 64), dtype=np.uint8)
    out = prepare_faces(gray)
    assert out.shape == (3, 48, 48, 1)
    np.testing.assert_array_equal(out[2, :, :, 0], expected(gray[2]))
    color = RNG.integers(0, 256, (2, 60, 60, 3), dtype=np.uint8)
    out = prepare_faces(color)
    np.testing.assert_array_equal(out[1, :, :, 0], expected(cv2.cvtColor(color[1], cv2.COLOR_BGR2GRAY)))


def test_three_d_rule():
    assert prepare_faces(np.zeros((3, 48, 48), np.uint8)).shape[0] == 3  # batch of gray faces
    assert prepare_faces(np.zeros((48, 48, 3), np.uint8)).shape[0] == 1  # one BGR image
    assert prepare_faces(np.zeros((48, 48, 4), np.uint8)).shape[0] == 1  # one BGRA image
    assert prepare_faces(np.zeros((48, 48, 1), np.uint8)).shape[0] == 1  # one gray image with a channel
    assert prepare_faces(np.zeros((2, 30, 5), np.uint8)).shape[0] == 2  # last dim 5: batch


def test_mixed_list_of_arrays_paths_and_bytes(tmp_path):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), PHOTO)
    data = cv2.imencode(".png", PHOTO)[1].tobytes()
    out = prepare_faces([FACES[:2], str(path), path, data, FACES[3]])
    assert out.shape == (6, 48, 48, 1)
    photo = prepare_faces(PHOTO)[0]
    for i in (2, 3, 4):
        np.testing.assert_array_equal(out[i], photo)
    np.testing.assert_array_equal(out[:2], prepare_faces(FACES[:2]))
    np.testing.assert_array_equal(out[5], prepare_faces(FACES[3])[0])
    assert prepare_faces(sample_path("astronaut.jpg")).shape == (1, 48, 48, 1)


def test_empty_inputs():
    for empty in (
        [],
        (),
        np.zeros((0, 48, 48), np.uint8),
        np.zeros((0, 48, 48, 1), np.uint8),
        np.zeros((0, 10, 10, 3), np.uint8),
    ):
        out = prepare_faces(empty)
        assert out.shape == (0, 48, 48, 1) and out.dtype == np.float32
    assert prepare_faces([], Preprocessing(height=64, width=32)).shape == (0, 64, 32, 1)


def test_integer_dtypes():
    np.testing.assert_array_equal(prepare_faces(FACES.astype(np.int32)), prepare_faces(FACES))
    np.testing.assert_array_equal(prepare_faces(FACES.astype(np.uint16) * 257), prepare_faces(FACES))
    with pytest.raises(InvalidInputError, match=r"int32.*0\.\.255"):
        prepare_faces(np.full((48, 48), 256, np.int32))


def test_custom_preprocessing():
    prep = Preprocessing(height=64, width=32, scale=2 / 255, offset=-1.0, resize="linear")
    out = prepare_faces(FACES[0], prep)
    assert out.shape == (1, 64, 32, 1)
    ref = cv2.resize(FACES[0], (32, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    np.testing.assert_allclose(out[0, :, :, 0], ref * np.float32(2 / 255) - 1, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (None, "NoneType"),
        ("no/such/face.jpg", "no such image file"),
        (np.full((48, 48), np.nan, np.float32), r"float32 with shape \(48, 48\).*NaN"),
        (np.full((48, 48), np.inf), "NaN or infinity"),
        (np.zeros((48, 48), np.complex128), "complex128"),
        (np.zeros((48, 48), object), "object"),
        (np.zeros((48, 48), bool), "bool"),
        (np.zeros(2304, np.uint8), r"shape \(2304,\)"),
        (np.zeros((1, 1, 48, 48, 1), np.uint8), r"shape \(1, 1, 48, 48, 1\)"),
        (np.zeros((2, 48, 48, 2), np.uint8), r"shape \(2, 48, 48, 2\)"),
        (np.full((48, 48), 255.0), r"\[0, 1\]"),
        (np.full((48, 48), -0.1, np.float32), r"\[0, 1\]"),
        (np.zeros((48, 0), np.uint8), "empty image"),
        (FACES.astype(np.uint16), r"uint16.*astype\(np.uint8\)"),  # 8-bit values in a uint16 array
        ([FACES[0], None], r"faces\[1\]: got NoneType"),
        ([[0, 1], [2, 3]], r"faces\[0\]: got list"),
        (42, "int 42"),
        ({"a": 1}, "dict"),
    ],
)
def test_bad_inputs(bad, match):
    with pytest.raises(InvalidInputError, match=match) as err:
        prepare_faces(bad)
    if not isinstance(bad, str):
        assert "accepted" in str(err.value) or "pixel" in str(err.value) or "empty" in str(err.value)


def test_bad_prep_argument():
    with pytest.raises(InvalidInputError, match="Preprocessing"):
        prepare_faces(FACES, prep={"height": 48})


@settings(max_examples=80, deadline=2000)
@given(
    hnp.arrays(
        dtype=st.sampled_from(
            [
                np.uint8,
                np.uint16,
                np.int8,
                np.int64,
                np.float16,
                np.float32,
                np.float64,
                np.complex64,
                np.bool_,
            ]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
    )
)
def test_arbitrary_arrays_raise_only_invalid_input(array):
    try:
        out = prepare_faces(array)
    except FerSdkError as exc:
        assert isinstance(exc, InvalidInputError)
    else:
        assert out.dtype == np.float32 and out.shape[1:] == (48, 48, 1)
        assert np.isfinite(out).all() and (out.size == 0 or (out.min() >= 0 and out.max() <= 1))


# ----------------------------------------------------------------------------- flip and crop


def test_flip_horizontal():
    batch = prepare_faces(FACES)
    flipped = flip_horizontal(batch)
    np.testing.assert_array_equal(flipped[:, :, 0], batch[:, :, -1])
    np.testing.assert_array_equal(flip_horizontal(flipped), batch)
    assert flipped.flags.c_contiguous and flipped.dtype == np.float32
    np.testing.assert_array_equal(flip_horizontal(FACES), FACES[:, :, ::-1])
    with pytest.raises(InvalidInputError, match="flip_horizontal"):
        flip_horizontal(FACES[0])


def test_crop_face_inside_and_margin():
    np.testing.assert_array_equal(crop_face(PHOTO, (10, 20, 30, 40)), PHOTO[20:60, 10:40])
    grown = crop_face(PHOTO, (20, 30, 40, 20), margin=0.25)  # +10 px left/right, +5 px top/bottom
    np.testing.assert_array_equal(grown, PHOTO[25:55, 10:70])
    assert crop_face(PHOTO[:, :, 0], (1.4, 2.6, 10, 10)).shape == (10, 10)


def test_crop_face_outside_is_edge_replicated():
    crop = crop_face(PHOTO, (-5, -3, 20, 10))
    assert crop.shape == (10, 20, 3)
    np.testing.assert_array_equal(crop[3:, 5:], PHOTO[0:7, 0:15])
    np.testing.assert_array_equal(crop[0, 5:], PHOTO[0, 0:15])  # rows above repeat the top row
    np.testing.assert_array_equal(crop[3:, 0], PHOTO[0:7, 0])  # columns to the left repeat column 0
    np.testing.assert_array_equal(crop[0, 0], PHOTO[0, 0])
    crop = crop_face(PHOTO, (80, 110, 20, 20), margin=0.5)  # runs off the bottom right corner
    assert crop.shape == (40, 40, 3)
    np.testing.assert_array_equal(crop[-1, -1], PHOTO[-1, -1])


@pytest.mark.parametrize(
    ("box", "margin", "match"),
    [
        ((200, 0, 10, 10), 0.0, "outside"),
        ((0, 0, 0, 10), 0.0, "w, h > 0"),
        ((0, 0, 10), 0.0, "numbers"),
        ((0, 0, float("nan"), 5), 0.0, "finite"),
        ((0, 0, 10, 10), -0.1, "margin"),
        ("abcd", 0.0, "numbers"),
    ],
)
def test_crop_face_errors(box, margin, match):
    with pytest.raises(InvalidInputError, match=match):
        crop_face(PHOTO, box, margin)

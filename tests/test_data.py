"""fer_sdk.data: the FER2013 CSV (plain, gzip, BOM, CRLF, malformed rows) and image-folder readers."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FER_CSV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fer_sdk.constants import EMOTIONS
from fer_sdk.data import canonical_split, load_split, read_fer2013
from fer_sdk.errors import DatasetError, FerSdkError, InvalidInputError

REAL = FER_CSV
HEADER = "emotion,pixels,Usage"
RNG = np.random.default_rng(3)
FACES = RNG.integers(0, 256, (4, 48, 48), dtype=np.uint8)
ROWS = [
    (3, FACES[0], "Training"),
    (0, FACES[1], "PublicTest"),
    (6, FACES[2], "Training"),
    (5, FACES[3], "PrivateTest"),
]


def row(label, face, usage) -> str:
    pixels = face if isinstance(face, str) else " ".join(map(str, face.ravel()))
    return f"{label},{pixels},{usage}"


def write_csv(path: Path, lines, *, header=HEADER, newline="\n", bom=False, gz=False) -> Path:
    text = newline.join(([header] if header is not None else []) + list(lines)) + newline
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "fer.csv", [row(*r) for r in ROWS])


# ------------------------------------------------------------------------------------------ CSV


def test_small_csv(small_csv):
    data = read_fer2013(small_csv)
    assert list(data) == ["Training", "PublicTest", "PrivateTest"]
    x, y = data["Training"]
    assert x.dtype == np.uint8 and x.shape == (2, 48, 48) and y.dtype == np.int64
    np.testing.assert_array_equal(x, FACES[[0, 2]])
    assert y.tolist() == [3, 6]
    np.testing.assert_array_equal(data["PrivateTest"][0], FACES[3:4])


def test_gzip_is_detected_by_magic_bytes(tmp_path, small_csv):
    reference = read_fer2013(small_csv)
    lines = [row(*r) for r in ROWS]
    for name, gz in (("gz_named.csv", True), ("plain_named.csv.gz", False), ("real.csv.gz", True)):
        data = read_fer2013(write_csv(tmp_path / name, lines, gz=gz))
        for split, (x, y) in reference.items():
            np.testing.assert_array_equal(data[split][0], x)
            np.testing.assert_array_equal(data[split][1], y)


def test_kaggle_download_archives_are_read_in_place(tmp_path, small_csv):
    import io
    import tarfile
    import zipfile

    reference = read_fer2013(small_csv)
    body = small_csv.read_bytes()

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp_path / "fer2013.tar.gz", "w:gz") as tar:  # Kaggle's challenge download
        add(tar, "fer2013/README", b"readme")
        add(tar, "fer2013/fer2013.bib", b"@article{}")
        add(tar, "fer2013/fer2013.csv", body)
    with zipfile.ZipFile(tmp_path / "archive.zip", "w") as zf:  # two CSVs: fer2013.csv is picked
        zf.writestr("icml_face_data.csv", b"emotion, Usage, pixels\n")
        zf.writestr("data/fer2013.csv", body)
    for archive in ("fer2013.tar.gz", "archive.zip"):
        data = read_fer2013(tmp_path / archive)
        for split, (x, y) in reference.items():
            np.testing.assert_array_equal(data[split][0], x)
            np.testing.assert_array_equal(data[split][1], y)

    # The competition zip: icml_face_data.csv holds the same rows with its columns as "emotion, Usage, pixels".
    lines = body.decode().splitlines()[1:]
    icml = "emotion, Usage, pixels\n" + "".join(f"{e},{u},{p}\n" for e, p, u in (r.split(",") for r in lines))
    with zipfile.ZipFile(tmp_path / "competition.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("example_submission.csv", "train.csv", "test.csv"):
            zf.writestr(name, b"id\n")
        zf.writestr("fer2013.tar.gz", b"\x1f\x8b")
        zf.writestr("icml_face_data.csv", icml)
    data = read_fer2013(tmp_path / "competition.zip")
    for split, (x, y) in reference.items():
        np.testing.assert_array_equal(data[split][0], x)
        np.testing.assert_array_equal(data[split][1], y)

    with tarfile.open(tmp_path / "no_csv.tar", "w") as tar:
        add(tar, "images/0.png", b"png")
    with pytest.raises(DatasetError, match=r"no_csv.tar: an archive holding images/0.png.*folder that holds train/"):
        read_fer2013(tmp_path / "no_csv.tar")
    cut = tmp_path / "cut.zip"  # a partial download: local headers but no central directory
    cut.write_bytes((tmp_path / "competition.zip").read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"cut.zip: a truncated or corrupt zip.*re-download"):
        read_fer2013(cut)


def test_bom_crlf_quotes_and_column_order(tmp_path, small_csv):
    reference = read_fer2013(small_csv)
    variant = write_csv(tmp_path / "bom.csv", [row(*r) for r in ROWS], newline="\r\n", bom=True)
    quoted = [f'"{r[0]}","{" ".join(map(str, r[1].ravel()))}","{r[2]}"' for r in ROWS]
    reordered = [f"{r[2]}, {r[0]}, {' '.join(map(str, r[1].ravel()))}" for r in ROWS]
    for path in (
        variant,
        write_csv(tmp_path / "q.csv", quoted, header='"emotion","pixels","Usage"'),
        write_csv(tmp_path / "o.csv", reordered, header="Usage, emotion, pixels"),
    ):
        data = read_fer2013(path)
        np.testing.assert_array_equal(data["Training"][0], reference["Training"][0])
        np.testing.assert_array_equal(data["PrivateTest"][1], reference["PrivateTest"][1])


@pytest.mark.parametrize(
    ("bad_row", "match"),
    [
        (row(3, " ".join(["1"] * 2303), "Training"), "has 2303 pixel values, expected 2304"),
        (row(3, " ".join(["1"] * 2305), "Training"), "has 2305 pixel values"),
        (row(3, " ".join(["1"] * 2303 + ["300"]), "Training"), "pixel 2304 is '300', outside 0-255"),
        (row(3, " ".join(["1"] * 10 + ["-1"] + ["1"] * 2293), "Training"), "pixel 11 is '-1'"),
        (
            row(3, " ".join(["7"] * 5 + ["abc"] + ["1"] * 2298), "Training"),
            "pixel 6 is 'abc', not an integer",
        ),
        (row(3, " ".join(["1.5"] * 2304), "Training"), "pixel 1 is '1.5'"),
        (row(7, FACES[0], "Training"), "emotion '7' is not an integer 0-6"),
        (row("x", FACES[0], "Training"), "emotion 'x'"),
        (row(-1, FACES[0], "Training"), "emotion '-1'"),
        (
            row(3, FACES[0], "Validation"),
            "Usage 'Validation' is not one of Training, PublicTest, PrivateTest",
        ),
        ("3," + " ".join(["1"] * 2304), "found 2 comma-separated fields, expected 3"),
        ("3,1 2,Training,extra", "found 4 comma-separated fields"),
    ],
)
def test_malformed_rows_name_file_line_value_and_fix(tmp_path, bad_row, match):
    path = write_csv(tmp_path / "bad.csv", [row(*ROWS[0]), "", row(*ROWS[1]), bad_row, row(*ROWS[2])])
    with pytest.raises(DatasetError, match=match) as err:
        read_fer2013(path)
    msg = str(err.value)
    assert "bad.csv" in msg and "line 5:" in msg and "Fix:" in msg  # header=1, blank line 3 still counts


@pytest.mark.parametrize("header", [None, "emotion,pixels", "label,pixels,Usage", "emotion;pixels;Usage"])
def test_missing_or_wrong_header(tmp_path, header):
    path = write_csv(tmp_path / "h.csv", [row(*r) for r in ROWS], header=header)
    with pytest.raises(DatasetError, match=r"line 1: expected the header 'emotion,pixels,Usage'"):
        read_fer2013(path)


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="expected the header"):
        read_fer2013(tmp_path / "empty.csv")
    with pytest.raises(DatasetError, match="no data rows"):
        read_fer2013(write_csv(tmp_path / "header.csv", []))


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.csv: no such file.*Fix"):
        read_fer2013(tmp_path / "nope.csv")
    for call in (lambda: read_fer2013(None), lambda: load_split(3, "train")):
        with pytest.raises(InvalidInputError, match=r"path: got (NoneType None|int 3); pass the path"):
            call()


def test_corrupt_gzip(tmp_path, small_csv):
    data = gzip.compress(small_csv.read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.csv\.gz.*corrupt or truncated"):
        read_fer2013(tmp_path / "cut.csv.gz")


def test_splits_restrict_decoding(tmp_path):
    # the Training row has broken pixels: asking only for PublicTest never parses them
    path = write_csv(tmp_path / "s.csv", [row(3, "1 2 3", "Training"), row(*ROWS[1])])
    data = read_fer2013(path, splits=["public"])
    assert list(data) == ["PublicTest"]
    np.testing.assert_array_equal(data["PublicTest"][0], FACES[1:2])
    with pytest.raises(DatasetError, match="line 2"):
        read_fer2013(path)


def test_load_split_aliases(small_csv):
    for alias in ("train", "Training", "TRAINING", "training"):
        np.testing.assert_array_equal(load_split(small_csv, alias)[0], FACES[[0, 2]])
    for alias in ("test", "public", "PublicTest", "public_test"):
        assert load_split(small_csv, alias)[1].tolist() == [0]
    for alias in ("private", "PrivateTest"):
        assert load_split(small_csv, alias)[1].tolist() == [5]


def test_absent_and_unknown_splits(tmp_path):
    path = write_csv(tmp_path / "two.csv", [row(*ROWS[0]), row(*ROWS[1])])
    with pytest.raises(DatasetError, match=r"no PrivateTest rows; splits present: Training, PublicTest"):
        load_split(path, "private")
    assert read_fer2013(path, splits="PrivateTest") == {}  # the caller decides what an absent split means
    assert list(read_fer2013(path, splits=["private", "train"])) == ["Training"]
    with pytest.raises(InvalidInputError, match="'validation'.*Training, PublicTest, PrivateTest"):
        load_split(path, "validation")
    with pytest.raises(InvalidInputError):
        read_fer2013(path, splits=[1])
    assert canonical_split(" Private ") == "PrivateTest"


@settings(max_examples=50, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400), with_header=st.booleans(), gz=st.booleans())
def test_arbitrary_bytes_raise_only_dataset_errors(tmp_path, body, with_header, gz):
    data = (HEADER.encode() + b"\n" if with_header else b"") + body
    path = tmp_path / "fuzz.csv"
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        read_fer2013(path)
    except FerSdkError as exc:
        assert isinstance(exc, DatasetError)


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(alphabet='0123456789 ,-.\r\tTrainingPublicTest"', max_size=60), max_size=5))
def test_arbitrary_rows_raise_only_dataset_errors(tmp_path, lines):
    path = tmp_path / "rows.csv"
    path.write_text(HEADER + "\n" + "\n".join(lines), encoding="utf-8")
    try:
        read_fer2013(path)
    except FerSdkError as exc:
        assert isinstance(exc, DatasetError)


# ------------------------------------------------------------------------------- image folders


def write_face(path: Path, value: int, size=(48, 48), color=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3) if color else size, value, np.uint8)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "fer2013"
    write_face(root / "train" / "happy" / "Training_100.jpg", 30)
    write_face(root / "train" / "happy" / "Training_2.jpg", 10)
    write_face(root / "train" / "angry" / "Training_10.jpg", 20, size=(96, 96), color=True)
    write_face(root / "test" / "sad" / "PublicTest_7.jpg", 70)
    write_face(root / "test" / "neutral" / "PrivateTest_3.jpg", 90)
    write_face(root / "test" / "neutral" / "PublicTest_1.png", 50)
    (root / "train" / "happy" / ".DS_Store").write_bytes(b"\x00junk")
    (root / "train" / "README.txt").write_text("ignored")
    return root


def test_folder_reader(folder):
    data = read_fer2013(folder)
    assert list(data) == ["Training", "PublicTest", "PrivateTest"]
    x, y = data["Training"]
    assert x.shape == (3, 48, 48) and x.dtype == np.uint8 and y.dtype == np.int64
    # numeric order of the ids (2, 10, 100), not name order; the 96x96 color JPEG became 48x48 gray
    assert [round(float(face.mean())) for face in x] == [10, 20, 30]
    assert [EMOTIONS[i] for i in y] == ["happy", "angry", "happy"]
    x, y = data["PublicTest"]
    assert [round(float(face.mean())) for face in x] == [50, 70] and [EMOTIONS[i] for i in y] == [
        "neutral",
        "sad",
    ]
    assert data["PrivateTest"][1].tolist() == [EMOTIONS.index("neutral")]
    x, y = load_split(folder, "private")
    assert x.shape == (1, 48, 48) and abs(float(x.mean()) - 90) < 2


def test_folder_splits_and_strictness(folder):
    assert list(read_fer2013(folder, splits=["test"])) == ["PublicTest"]
    (folder / "test" / "sad" / "PublicTest_8.jpg").write_bytes(b"not a jpeg")
    assert list(read_fer2013(folder, splits=["train"])) == ["Training"]  # PublicTest files are not decoded
    with pytest.raises(DatasetError, match=r"PublicTest_8\.jpg: cannot be decoded"):
        read_fer2013(folder)


def test_folder_file_without_split_prefix(folder):
    write_face(folder / "test" / "fear" / "im0.jpg", 40)
    with pytest.raises(DatasetError, match=r"im0\.jpg: the file name does not start with Training_.*Fix"):
        read_fer2013(folder)


def test_folder_unknown_emotion(folder):
    write_face(folder / "train" / "contempt" / "Training_5.jpg", 40)
    with pytest.raises(DatasetError, match=r"contempt.*unknown emotion folder.*angry, disgust"):
        read_fer2013(folder)


def test_folder_without_train_or_test(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(DatasetError, match=r"found neither train/ nor test/.*data\.csv"):
        read_fer2013(tmp_path)


def test_folder_absent_split(tmp_path):
    write_face(tmp_path / "train" / "happy" / "Training_1.jpg", 10)
    with pytest.raises(DatasetError, match="splits present: Training"):
        load_split(tmp_path, "test")


# ----------------------------------------------------------------------------------- real file


@pytest.mark.skipif(not REAL.is_file(), reason="shared FER2013 file not available")
def test_real_fer2013_class_counts():
    data = read_fer2013(REAL)
    assert list(data) == ["Training", "PublicTest"]
    counts = {split: np.bincount(y, minlength=7).tolist() for split, (_, y) in data.items()}
    assert counts["Training"] == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert counts["PublicTest"] == [467, 56, 496, 895, 653, 415, 607]
    assert data["Training"][0].shape == (28709, 48, 48) and data["PublicTest"][0].shape == (3589, 48, 48)
    assert 80 < data["PublicTest"][0].mean() < 180  # decoded pixels, not zeros

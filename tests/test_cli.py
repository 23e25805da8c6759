"""The ``fer-sdk`` command line through Typer's ``CliRunner``: predict, models, eval, train + export, errors.

Everything runs on the tiny exported models of ``conftest.tiny_models``, the sample photos and a small
FER2013 CSV (600 Training + 300 PublicTest rows of the real file) written into a temporary folder. Typer
0.29's ``CliRunner`` keeps stdout and stderr apart (``result.stdout`` / ``result.stderr``), so the tests
check that machine output (``--json``, ``--csv``) is clean and that errors go to stderr as one line.
``bench --quick`` is covered by ``test_benchmarks.test_cli_bench_quick``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV, ROW_COLUMNS, manifest_entry, parse_rows, write_manifest, write_small_fer_csv
from typer.testing import CliRunner

import fer_sdk
from fer_sdk import registry
from fer_sdk.cli import PARTIAL_FAILURE_EXIT, app
from fer_sdk.constants import EMOTIONS
from fer_sdk.rows import FORMATS, ROW_FIELDS

SAMPLES = ("astronaut.jpg", "grace_hopper.jpg", "two_faces.jpg")
N_SMALL_TRAIN, N_SMALL_TEST = 600, 300


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def by_name(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by their source's file name, in output order."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(Path(row["source"]).name, []).append(row)
    return out


def tiny_version(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


FACE_COLUMNS = tuple(
    c
    for c in ROW_COLUMNS
    if c not in ("source", "frame", "time_s", "track", "model", "model_version", "annotated", "error")
)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result, *needles: str) -> str:
    """stderr holds exactly one ``fer-sdk: error: ...`` line containing every needle; no traceback."""
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fer-sdk: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV} (set FER_SDK_FER2013)")
    return write_small_fer_csv(tmp_path_factory.mktemp("fer") / "small.csv", N_SMALL_TRAIN, N_SMALL_TEST)


@pytest.fixture(scope="module")
def tiny(tiny_models) -> Path:
    return tiny_models.fp32


@pytest.fixture(scope="module")
def library_faces(tiny, samples_dir) -> dict[str, list]:
    """What the library finds in each sample photo: {file name: [Face, ...]}."""
    from fer_sdk import Classifier

    clf = Classifier(tiny)
    return {name: clf.analyze(samples_dir / name) for name in SAMPLES}


def mixed_folder(folder: Path, samples_dir: Path) -> Path:
    """The sample photos plus a zero-byte .jpg, random bytes as .png, a truncated JPEG and a text file."""
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(samples_dir / name, folder / name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    jpeg = (samples_dir / "astronaut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "notes.txt").write_text("not an image, ignored")
    return folder


BAD_FILES = ("cut.jpg", "empty.jpg", "noise.png")


# --------------------------------------------------------------------------------------------- predict


def test_predict_table_lists_each_photo(tiny, samples_dir):
    result = invoke("predict", "--model", tiny, samples_dir)
    assert result.exit_code == 0, result.output
    for name in SAMPLES:
        assert name in result.stdout
    assert "Traceback" not in result.output
    (summary,) = stderr_lines(result)  # stderr holds only the closing summary line
    assert summary.startswith("fer-sdk: ") and "3 photo(s), 4 face(s)" in summary

    for name in SAMPLES[:2]:
        single = invoke("predict", "--model", tiny, samples_dir / name)
        assert single.exit_code == 0, single.output
        assert name in single.stdout
        assert not any(other in single.stdout for other in SAMPLES if other != name)


def test_predict_json_has_every_detected_face(tiny, samples_dir, library_faces):
    result = invoke("predict", "--model", tiny, "--json", samples_dir)
    assert result.exit_code == 0, result.output
    rows = parse_rows(result.stdout, "json")  # stdout is pure JSON: the progress bar went to stderr
    photos = by_name(rows)
    assert list(photos) == list(SAMPLES)  # in order, each photo's rows together
    assert len(rows) == sum(len(faces) for faces in library_faces.values()) >= 4  # two_faces.jpg holds two
    for name, got in photos.items():
        expected = library_faces[name]
        assert len(got) == len(expected) >= 1
        for i, (row, ref) in enumerate(zip(got, expected)):
            assert row["source"] == str(samples_dir / name) and row["face"] == i
            assert row["frame"] is row["time_s"] is row["track"] is None  # photos: no frame, time or track
            assert row["error"] is None and row["annotated"] is None
            assert (row["model"], row["model_version"]) == ("tiny-shallow.onnx", tiny_version(tiny))
            assert row["detection_score"] == pytest.approx(ref.detection_score, abs=1e-6)
            assert [
                row[f"{p}_{c}"] for p in ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth") for c in "xy"
            ] == [round(v, 2) for point in ref.landmarks for v in point]
            assert [row[k] for k in "xywh"] == list(ref.box)
            probs = {e: row[e] for e in EMOTIONS}
            assert row["emotion"] == max(probs, key=probs.get) == ref.emotion
            assert row["score"] == probs[row["emotion"]]
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert all(v == round(v, 6) for v in probs.values())  # 6 decimals
            np.testing.assert_allclose([probs[e] for e in EMOTIONS], [ref.emotions[e] for e in EMOTIONS], atol=1e-5)

    single = invoke("predict", "--model", tiny, "--json", samples_dir / "two_faces.jpg")
    assert single.exit_code == 0, single.output
    faces = parse_rows(single.stdout, "json")
    assert [r["face"] for r in faces] == [0, 1] and len(library_faces["two_faces.jpg"]) == 2
    assert {r["source"] for r in faces} == {str(samples_dir / "two_faces.jpg")}


def test_predict_csv_parses_with_header(tiny, samples_dir, library_faces):
    assert ROW_FIELDS == ROW_COLUMNS  # the schema, spelled out in conftest
    result = invoke("predict", "--model", tiny, "--csv", samples_dir)
    assert result.exit_code == 0, result.output
    lines = list(csv.reader(io.StringIO(result.stdout)))
    assert lines[0] == list(ROW_FIELDS)
    body = [dict(zip(ROW_FIELDS, line)) for line in lines[1:]]
    assert len(body) == sum(len(faces) for faces in library_faces.values())
    for row in body:
        assert len(row) == len(ROW_FIELDS) and row["error"] == ""
        assert row["frame"] == row["time_s"] == row["track"] == ""
        probs = [float(row[e]) for e in EMOTIONS]
        assert row["emotion"] == EMOTIONS[int(np.argmax(probs))]
        assert float(row["score"]) == pytest.approx(max(probs), abs=1e-6)
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        ref = library_faces[Path(row["source"]).name][int(row["face"])]
        assert [int(row[k]) for k in "xywh"] == list(ref.box)
        assert row["model"] == "tiny-shallow.onnx" and row["model_version"] == tiny_version(tiny)


def test_predict_csv_keeps_a_row_for_a_photo_without_faces(tiny, samples_dir, tmp_path):
    import cv2

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))  # a real image with no face in it
    result = invoke("predict", "--model", tiny, "--csv", blank, samples_dir / "astronaut.jpg")
    assert result.exit_code == 0, result.output
    rows = [dict(zip(ROW_FIELDS, r)) for r in list(csv.reader(io.StringIO(result.stdout)))[1:]]
    (empty,) = [r for r in rows if Path(r["source"]).name == "blank.png"]
    assert empty["face"] == empty["emotion"] == empty["error"] == ""  # processed, no face, no error
    assert all(empty[k] == "" for k in FACE_COLUMNS)
    assert empty["model"] == "tiny-shallow.onnx" and empty["model_version"] == tiny_version(tiny)
    assert [r["face"] for r in rows if Path(r["source"]).name == "astronaut.jpg"] == ["0"]


def test_predict_annotate_writes_decodable_copies(tiny, samples_dir, tmp_path):
    import cv2

    out = tmp_path / "annotated"
    result = invoke("predict", "--model", tiny, "--annotate", out, samples_dir)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(SAMPLES)
    for name in SAMPLES:
        original, annotated = cv2.imread(str(samples_dir / name)), cv2.imread(str(out / name))
        assert annotated is not None and annotated.shape == original.shape
        assert not np.array_equal(annotated, original)  # boxes were drawn


def test_predict_mixed_folder_processes_good_and_reports_bad(tiny, samples_dir, tmp_path):
    import cv2

    folder = mixed_folder(tmp_path / "mixed", samples_dir)
    out = tmp_path / "annotated"
    result = invoke("predict", "--model", tiny, "--json", "--annotate", out, folder)
    assert result.exit_code == PARTIAL_FAILURE_EXIT == 8, result.output
    photos = by_name(parse_rows(result.stdout, "json"))
    assert sorted(photos) == sorted([*SAMPLES, *BAD_FILES])  # notes.txt is not an image: skipped
    for name in SAMPLES:
        assert photos[name] and all(r["error"] is None and r["face"] is not None for r in photos[name])
        assert {r["annotated"] for r in photos[name]} == {str(out / name)}
    for name in BAD_FILES:
        (row,) = photos[name]  # one row: the error, no face fields
        assert all(row[k] is None for k in FACE_COLUMNS) and row["annotated"] is None
        assert name in row["error"] and "Fix" in row["error"]
        assert row["model"] == "tiny-shallow.onnx"
    assert_one_line_error(result, f"{len(BAD_FILES)} input(s) could not be processed")
    assert f"the other {len(SAMPLES)} were processed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(SAMPLES)
    for name in SAMPLES:
        annotated = cv2.imread(str(out / name))
        assert annotated is not None and annotated.shape == cv2.imread(str(folder / name)).shape

    as_csv = invoke("predict", "--model", tiny, "--csv", folder)
    assert as_csv.exit_code == PARTIAL_FAILURE_EXIT, as_csv.output
    rows = [dict(zip(ROW_FIELDS, r)) for r in list(csv.reader(io.StringIO(as_csv.stdout)))[1:]]
    errors = {Path(r["source"]).name: r["error"] for r in rows if r["error"]}
    assert sorted(errors) == sorted(BAD_FILES) and len(errors) == len([r for r in rows if r["error"]])
    assert {Path(r["source"]).name for r in rows if not r["error"]} == set(SAMPLES)


def test_predict_missing_path_is_reported(tiny, samples_dir, tmp_path):
    missing = tmp_path / "nowhere" / "face.jpg"
    alone = invoke("predict", "--model", tiny, "--json", missing)
    assert alone.exit_code == 2  # nothing was processed: the failure's own code, not 8 (partial failure)
    (photo,) = parse_rows(alone.stdout, "json")
    assert photo["source"] == str(missing) and str(missing) in photo["error"]
    assert all(photo[k] is None for k in FACE_COLUMNS)
    assert_one_line_error(alone, "none of the 1 input(s) could be processed")

    mixed = invoke("predict", "--model", tiny, "--json", samples_dir / "astronaut.jpg", missing)
    assert mixed.exit_code == PARTIAL_FAILURE_EXIT, mixed.output
    photos = by_name(parse_rows(mixed.stdout, "json"))
    (astronaut,) = photos["astronaut.jpg"]
    assert astronaut["face"] == 0 and astronaut["error"] is None
    (gone,) = photos["face.jpg"]
    assert str(missing) in gone["error"] and gone["face"] is None


def test_predict_where_every_photo_is_bad_exits_with_their_code(tiny, samples_dir, tmp_path):
    folder = mixed_folder(tmp_path / "mixed", samples_dir)
    for name in SAMPLES:
        (folder / name).unlink()
    result = invoke("predict", "--model", tiny, "--csv", folder)
    assert result.exit_code == 3, result.output  # InvalidImageError for each file
    rows = [dict(zip(ROW_FIELDS, r)) for r in list(csv.reader(io.StringIO(result.stdout)))[1:]]
    assert sorted(Path(r["source"]).name for r in rows if r["error"]) == sorted(BAD_FILES) and len(rows) == len(
        BAD_FILES
    )
    assert_one_line_error(result, f"none of the {len(BAD_FILES)} input(s) could be processed")

    mixed_codes = invoke("predict", "--model", tiny, "--csv", folder, tmp_path / "nowhere.jpg")
    assert mixed_codes.exit_code == 1  # bad images (3) and a missing path (2): the generic code


def test_predict_skips_hidden_files_and_folders(tiny, samples_dir, tmp_path):
    folder = tmp_path / "photos"
    (folder / ".thumbnails").mkdir(parents=True)
    shutil.copy(samples_dir / "astronaut.jpg", folder / "astronaut.jpg")
    (folder / "._astronaut.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # AppleDouble sidecar
    shutil.copy(samples_dir / "astronaut.jpg", folder / ".thumbnails" / "astronaut.jpg")
    result = invoke("predict", "--model", tiny, "--json", folder)
    assert result.exit_code == 0, result.output
    assert [Path(r["source"]).name for r in parse_rows(result.stdout, "json")] == ["astronaut.jpg"]  # one face
    hidden_parent = tmp_path / ".cache" / "shots"  # a dot folder above the one named is not a reason to skip
    hidden_parent.mkdir(parents=True)
    shutil.copy(samples_dir / "astronaut.jpg", hidden_parent / "a.jpg")
    inside = invoke("predict", "--model", tiny, "--json", hidden_parent)
    assert inside.exit_code == 0 and [r["source"] for r in parse_rows(inside.stdout, "json")] == [
        str(hidden_parent / "a.jpg")
    ]


def test_predict_refuses_unwritable_outputs_before_loading_anything(samples_dir, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me")
    missing_model = tmp_path / "no-such-model.onnx"  # the output check comes first, so this is never loaded
    cases = [
        (("-o", tmp_path / "adir"), ("--output", "adir is a folder")),
        (("--annotate", tmp_path / "afile"), ("--annotate", "afile is a file, not a folder")),
        (("-o", tmp_path / "afile" / "rows.csv"), ("--output", "afile is a file, not a folder")),
    ]
    for option, words in cases:
        result = invoke("predict", "--model", missing_model, samples_dir / "astronaut.jpg", *option)
        assert result.exit_code == 2, result.output
        assert_one_line_error(result, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert (tmp_path / "afile").read_text() == "keep me" and not any((tmp_path / "adir").iterdir())


def test_predict_empty_folder_is_a_usage_error(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("predict", "--model", tiny, tmp_path / "empty")
    assert result.exit_code == 2
    assert_one_line_error(result, "no images or videos found", str(tmp_path / "empty"))


def test_sdk_error_one_line_without_debug_traceback_with_debug(samples_dir):
    args = ("predict", "--model", "no-such-model", samples_dir / "astronaut.jpg")
    plain = invoke(*args)
    assert plain.exit_code == 4  # ModelError
    assert_one_line_error(plain, "'no-such-model'")
    assert plain.stdout == ""

    debug = invoke("--debug", *args)
    assert debug.exit_code == 4
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ModelError" in debug.stderr and "'no-such-model'" in debug.stderr
    assert stderr_lines(debug)[-1].startswith("fer-sdk: error: ")


# ----------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("predict", "--batch-size", "0", "x.jpg"), "--batch-size"),
        (("predict", "--every", "0", "x.jpg"), "--every"),
        (("eval", "--data", "x.csv", "--batch-size", "0"), "--batch-size"),
        (("train", "--arch", "resnet", "--data", "x.csv"), "resnet"),
        (("train", "--arch", "shallow", "--data", "x.csv", "--batch-size", "0"), "--batch-size"),
        (("train", "--arch", "shallow", "--data", "x.csv", "--optimizer", "adam"), "adam"),
    ],
)
def test_option_errors_exit_2_and_name_the_option(args, option):
    """Typer's own validation: exit 2, a usage message on stderr naming the option or value, no traceback."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and result.stdout == ""
    assert "Traceback" not in result.output


def test_json_and_csv_together_is_refused(tiny, samples_dir):
    result = invoke("predict", "--model", tiny, "--json", "--csv", samples_dir)
    assert result.exit_code == 2
    assert_one_line_error(result, "--json", "--csv")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--format", "json", "--csv"), "csv, json"),
        (("--format", "table", "--json"), "json, table"),
        (("-f", "jsonl", "--json"), "json, jsonl"),
        (("--format", "jsonl", "--csv"), "csv, jsonl"),
    ],
)
def test_two_output_formats_are_refused_before_anything_runs(samples_dir, tmp_path, options, named):
    out = tmp_path / "rows.txt"  # refused before the model is even looked for
    result = invoke("predict", "--model", tmp_path / "no-such-model.onnx", *options, "-o", out, samples_dir)
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, "choose one output format", named)
    assert result.stdout == "" and not out.exists()


def test_an_unknown_format_is_a_usage_error(tiny, samples_dir):
    assert FORMATS == ("table", "json", "jsonl", "csv")
    result = invoke("predict", "--model", tiny, "--format", "xml", samples_dir)
    assert result.exit_code == 2 and result.stdout == ""
    assert "xml" in result.stderr and "Traceback" not in result.output


def test_every_format_gives_the_same_rows(tiny, samples_dir, tmp_path, library_faces):
    """json, jsonl and csv hold the same rows (same keys, same values once CSV's text is typed); --json and --csv
    are --format json / csv; -o writes what stdout gets; the table shows one line per row."""
    import cv2

    folder = tmp_path / "in"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(samples_dir / name, folder / name)
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 128, np.uint8))  # no face
    (folder / "empty.jpg").write_bytes(b"")  # an error
    texts, rows = {}, {}
    for fmt in ("json", "jsonl", "csv", "table"):
        result = invoke("predict", "--model", tiny, "--format", fmt, folder)
        assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
        assert_one_line_error(result, "1 input(s) could not be processed", "the other 4 were processed")
        texts[fmt] = result.stdout
        if fmt != "table":
            rows[fmt] = parse_rows(result.stdout, fmt)
    assert rows["json"] == rows["jsonl"] == rows["csv"]
    got = rows["json"]
    assert [Path(r["source"]).name for r in got] == [
        "astronaut.jpg",
        "blank.png",
        "empty.jpg",
        "grace_hopper.jpg",
        "two_faces.jpg",
        "two_faces.jpg",
    ]
    assert [r["face"] for r in got] == [0, None, None, 0, 0, 1]
    assert [r["error"] is not None for r in got] == [False, False, True, False, False, False]
    assert "empty.jpg" in got[2]["error"]
    assert {(r["model"], r["model_version"]) for r in got} == {("tiny-shallow.onnx", tiny_version(tiny))}
    for row in got:
        if row["face"] is not None:
            ref = library_faces[Path(row["source"]).name][row["face"]]
            assert [row[k] for k in "xywh"] == list(ref.box) and row["emotion"] == ref.emotion

    for alias, fmt in (
        (("--json",), "json"),
        (("--csv",), "csv"),
        (("-f", "jsonl"), "jsonl"),
        (("--csv", "--format", "csv"), "csv"),
    ):  # the same format twice is no conflict
        result = invoke("predict", "--model", tiny, *alias, folder)
        assert result.exit_code == PARTIAL_FAILURE_EXIT and result.stdout == texts[fmt], alias
    for fmt in FORMATS:
        out = tmp_path / f"rows.{fmt}"
        result = invoke("predict", "--model", tiny, "--format", fmt, "-o", out, folder)
        assert result.exit_code == PARTIAL_FAILURE_EXIT and result.stdout == "", result.output
        assert out.read_text() == texts[fmt], fmt
    # without --format, -o's extension picks it; an unknown one gets the table
    for name, fmt in (
        ("r.csv", "csv"),
        ("r.JSON", "json"),
        ("r.jsonl", "jsonl"),
        ("r.ndjson", "jsonl"),
        ("r.txt", "table"),
    ):
        result = invoke("predict", "--model", tiny, "-o", tmp_path / name, folder)
        assert result.exit_code == PARTIAL_FAILURE_EXIT and (tmp_path / name).read_text() == texts[fmt], name
    result = invoke("predict", "--model", tiny, "--format", "jsonl", "-o", tmp_path / "forced.csv", folder)
    assert (tmp_path / "forced.csv").read_text() == texts["jsonl"]  # --format wins over the name

    lines = texts["table"].splitlines()
    assert lines[0].split()[0] == "source" and "emotion" in lines[0] and "frame" not in lines[0]
    assert len(lines) == 1 + len(got)
    for line, row in zip(lines[1:], got):
        assert line.startswith(row["source"]), (line, row["source"])
        if row["error"] is not None:
            assert f"error: {row['error']}" in line
        elif row["face"] is None:
            assert "no face found" in line
        else:
            assert f"({row['x']}, {row['y']}, {row['w']}, {row['h']})" in line
            assert f" {row['emotion']} " in line and f"{row['score']:.2f}" in line


# ---------------------------------------------------------------------------------------------- models


def test_models_without_bundled_models(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    text = invoke("models")
    assert text.exit_code == 0, text.output
    assert "no bundled models are installed" in text.stdout
    as_json = invoke("models", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []


def test_models_lists_manifest_rows(tiny, models_dir):
    folder = models_dir
    shutil.copy(tiny, folder / "tiny.onnx")
    data = (folder / "tiny.onnx").read_bytes()
    write_manifest(
        folder,
        {
            "tiny": manifest_entry(
                "tiny.onnx", data, parameters=4_741_895, metrics={"PublicTest": {"accuracy": 0.5, "macro_f1": 0.25}}
            )
        },
    )

    as_json = invoke("models", "--json")
    assert as_json.exit_code == 0, as_json.output
    (row,) = json.loads(as_json.stdout)
    assert row["name"] == "tiny" and row["default"] is True
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size_bytes"] == len(data)
    assert row["publictest_accuracy"] == 0.5 and row["publictest_macro_f1"] == 0.25
    assert row["architecture"] == "shallow" and row["precision"] == "fp32"

    table = invoke("models")
    assert table.exit_code == 0, table.output
    assert "tiny" in table.stdout and "50.00 %" in table.stdout
    assert invoke("models", "list", "--json").stdout == as_json.stdout  # `models` alone is `models list`


def test_models_group_holds_the_factory_tools():
    """ship, ensemble, average and recover are `fer-sdk models` subcommands (one help style, one exit-code map)."""
    result = invoke("models", "--help")
    assert result.exit_code == 0
    for name in ("list", "ship", "ensemble", "average", "recover"):
        assert re.search(rf"^\W*{name}\s", result.stdout, re.MULTILINE), (name, result.stdout)
    table = invoke("models", "ship", "--into", registry.MODELS_DIR, "--table")
    if (registry.MODELS_DIR / registry.MANIFEST_NAME).is_file():
        assert table.exit_code == 0 and table.stdout.startswith("| model |"), table.output
    missing = invoke("models", "ship", "--into", "/nonexistent-models", "--table")
    assert missing.exit_code == 2 and "no manifest.json there" in missing.stderr
    average = invoke("models", "average", "--data", "x.csv", "--run", "r", "--epochs", "9-2", "--out", "o")
    assert average.exit_code == 2 and "fer-sdk: error:" in average.stderr, average.output


def test_models_table_in_a_pipe_keeps_names_and_accuracy_whole():
    if not (registry.MODELS_DIR / registry.MANIFEST_NAME).is_file():
        pytest.skip("no fer_sdk/models/manifest.json yet")
    result = invoke("models")  # CliRunner output is not a terminal, like `fer-sdk models | cat`
    assert result.exit_code == 0, result.output
    rows = json.loads(invoke("models", "--json").stdout)
    for row in rows:
        line = next(line for line in result.stdout.splitlines() if f" {row['name']} " in line)
        assert f"{100 * row['publictest_accuracy']:.2f} %" in line and row["sha256"][:12] in line
        assert ("(default)" in line) == row["default"]


def test_installed_models_rows_match_their_files():
    if not (registry.MODELS_DIR / registry.MANIFEST_NAME).is_file():
        pytest.skip("no fer_sdk/models/manifest.json yet")
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and sum(r["default"] for r in rows) == 1
    for row in rows:
        path = registry.get_spec(row["name"]).path
        assert row["sha256"] == registry.sha256_file(path)
        assert row["size_bytes"] == path.stat().st_size
        assert row["publictest_accuracy"] is None or 0 <= row["publictest_accuracy"] <= 1


# ------------------------------------------------------------------------------------------------ eval


def test_eval_json_accuracy_matches_the_classifier(tiny, small_csv):
    from fer_sdk import Classifier
    from fer_sdk.data import load_split

    result = invoke("eval", "--data", small_csv, "--split", "PublicTest", "--model", tiny, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["n"] == N_SMALL_TEST

    x, y = load_split(small_csv, "PublicTest")
    assert len(x) == N_SMALL_TEST
    pred = Classifier(tiny, batch_size=256).predict_proba(x).argmax(1)
    assert report["accuracy"] == float((pred == y).mean())
    cm = np.zeros((7, 7), int)
    np.add.at(cm, (y, pred), 1)
    assert report["confusion_matrix"] == cm.tolist()
    assert report["labels"] == list(EMOTIONS) and set(report["per_class"]) == set(EMOTIONS)


def test_eval_text_prints_confusion_matrix(tiny, small_csv):
    result = invoke("eval", "--data", small_csv, "--split", "test", "--model", tiny)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    matrix = lines[start + 2 : start + 2 + len(EMOTIONS)]
    assert [line.split()[0] for line in matrix] == list(EMOTIONS)
    assert sum(int(v) for line in matrix for v in line.split()[1:]) == N_SMALL_TEST


def test_eval_unknown_split(tiny, small_csv):
    result = invoke("eval", "--data", small_csv, "--split", "Validation", "--model", tiny)
    assert result.exit_code == 2
    assert_one_line_error(result, "'Validation'", "PublicTest")


def test_eval_missing_data_file(tiny, tmp_path):
    missing = tmp_path / "fer2013.csv"
    result = invoke("eval", "--data", missing, "--model", tiny)
    assert result.exit_code == 5  # DatasetError
    assert_one_line_error(result, str(missing))


# ----------------------------------------------------------------------------------- train and export


@pytest.fixture(scope="module")
def trained_run(small_csv, tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    run = tmp_path_factory.mktemp("cli_train") / "run"
    result = invoke(
        "train", "--arch", "shallow", "--data", small_csv, "--epochs", "1", "--batch-size", "32", "--out", run
    )
    return run, result


@pytest.mark.train
def test_train_writes_metrics(trained_run):
    run, result = trained_run
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run / "metrics.json")
    assert "epoch 1/1" in result.stderr  # progress lines go to stderr
    for name in ("config.json", "state.json", "best.keras", "last.keras", "metrics.json"):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["architecture"] == "shallow" and metrics["epochs"] == 1
    assert metrics["selection_split"] == "PublicTest"
    assert set(metrics["splits"]) == {"Training", "PublicTest"}
    for split, n in (("Training", N_SMALL_TRAIN), ("PublicTest", N_SMALL_TEST)):
        report = metrics["splits"][split]
        assert report["n"] == n
        assert 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
        assert 0 <= report["accuracy_flip_tta"] <= 1
        assert set(report["per_class"]) == set(EMOTIONS)
        assert all(0 <= c["recall"] <= 1 for c in report["per_class"].values())
        cm = np.array(report["confusion_matrix"])
        assert cm.shape == (7, 7) and cm.sum() == n
        assert report["accuracy"] == pytest.approx(np.trace(cm) / n)
    assert metrics["wall_time_s"] >= 0 and len(metrics["history"]) == 1
    assert metrics["hardware"]["backend"] == "tensorflow" and metrics["hardware"]["device"]
    assert isinstance(metrics["command"], str) and metrics["command"]
    assert metrics["config"]["batch_size"] == 32 and metrics["config"]["epochs"] == 1


@pytest.mark.train
def test_export_fp32_and_int8_load_in_the_classifier(trained_run, small_csv, tmp_path):
    from fer_sdk import Classifier
    from fer_sdk.data import load_split

    run, trained = trained_run
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "m.onnx"
    result = invoke("export", run, "--out", out, "--data", small_csv, "--int8", "--calibration-size", "500")
    assert result.exit_code == 0, result.output
    int8 = tmp_path / "m-int8.onnx"
    assert result.stdout.split() == [str(out), str(int8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-int8.onnx", "m.onnx"]

    metrics = json.loads((run / "metrics.json").read_text())
    x, y = load_split(small_csv, "PublicTest")
    probs = {}
    for path, precision in ((out, "fp32"), (int8, "int8")):
        clf = Classifier(path)
        meta = clf.metadata
        assert meta["architecture"] == "shallow" and meta["precision"] == precision
        probs[precision] = clf.predict_proba(x)
        assert probs[precision].shape == (N_SMALL_TEST, 7)
    # each file records its own accuracy: the fp32 export the Keras evaluation, the INT8 file its own on PublicTest
    assert Classifier(out).metadata["metrics"]["PublicTest"]["accuracy"] == metrics["splits"]["PublicTest"]["accuracy"]
    int8_metrics = Classifier(int8).metadata["metrics"]["PublicTest"]
    assert int8_metrics == {"accuracy": pytest.approx(float((probs["int8"].argmax(1) == y).mean())), "n": len(y)}
    assert Classifier(int8).metadata["quantization"]["calibration_faces"] == 500
    agreement = (probs["fp32"].argmax(1) == probs["int8"].argmax(1)).mean()
    assert agreement >= 0.9


@pytest.mark.train
def test_export_refuses_calibration_options_without_int8(trained_run, small_csv, tmp_path):
    run, _ = trained_run
    result = invoke("export", run, "--out", tmp_path / "m.onnx", "--data", small_csv, "--calibration-size", "2000")
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, "--int8", "--calibration-size")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.train
def test_export_refuses_too_small_calibration(trained_run, small_csv, tmp_path):
    run, _ = trained_run
    result = invoke(
        "export", run, "--out", tmp_path / "m.onnx", "--data", small_csv, "--int8", "--calibration-size", "100"
    )
    assert result.exit_code == 2, result.output  # InvalidInputError, checked before any conversion
    last = stderr_lines(result)[-1]
    assert last.startswith("fer-sdk: error: ") and "calibration_size=100" in last and "at least 500" in last
    assert "Traceback" not in result.output
    assert not (tmp_path / "m-int8.onnx").exists()
    assert not (tmp_path / "m.onnx").exists()  # refused up front: nothing converted
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_annotate_keeps_same_named_photos_apart(tiny, samples_dir, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(samples_dir / "astronaut.jpg", tmp_path / "in" / sub / "photo.jpg")
    result = invoke("predict", tmp_path / "in", "--model", tiny, "--annotate", tmp_path / "ann", "--json")
    assert result.exit_code == 0, result.output
    # the input's relative folders are kept: no flattening into photo.jpg, photo-2.jpg
    assert sorted(str(p.relative_to(tmp_path / "ann")) for p in (tmp_path / "ann").rglob("*.jpg")) == [
        "a/photo.jpg",
        "b/photo.jpg",
    ]
    one = invoke(
        "predict",
        tmp_path / "in" / "a" / "photo.jpg",
        tmp_path / "in" / "b" / "photo.jpg",
        "--model",
        tiny,
        "--annotate",
        tmp_path / "flat",
        "--json",
    )  # files named one by one: names, kept apart
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["photo-2.jpg", "photo.jpg"]


def test_annotate_into_the_input_folder_never_overwrites_an_input(tiny, samples_dir, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    shutil.copy(samples_dir / "astronaut.jpg", photo)
    before = photo.read_bytes()
    result = invoke("predict", tmp_path, "--model", tiny, "--annotate", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert photo.read_bytes() == before  # the input photo is untouched
    annotated = tmp_path / "astronaut-2.jpg"
    assert annotated.is_file() and annotated.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut-2.jpg", "astronaut.jpg"]


def test_write_annotated_without_a_run_never_overwrites_its_own_photo(samples_dir, tmp_path):
    # library use: write_annotated called on its own, with no run-wide set of reserved paths
    import cv2

    from fer_sdk.photos import PhotoResult, write_annotated

    photo = tmp_path / "astronaut.jpg"
    shutil.copy(samples_dir / "astronaut.jpg", photo)
    before = photo.read_bytes()
    result = PhotoResult(source=str(photo), image=cv2.imread(str(photo)))
    written = write_annotated(result, tmp_path)
    assert photo.read_bytes() == before
    assert written == tmp_path / "astronaut-2.jpg" and written.is_file()
    (tmp_path / "out").mkdir()
    assert write_annotated(result, tmp_path / "out") == tmp_path / "out" / "astronaut.jpg"  # elsewhere: same name


def test_a_photo_and_a_broken_video_in_one_run(tiny, samples_dir, tmp_path):
    # photos and videos share one run (and one row schema): the photo's rows, then the video's error row
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    out = tmp_path / "rows.csv"
    result = invoke("predict", samples_dir / "astronaut.jpg", video, "--model", tiny, "--csv", "-o", out)
    assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
    assert_one_line_error(result, "1 input(s) could not be processed", "the other 1 were processed")
    photo, broken = parse_rows(out.read_text(), "csv")
    assert photo["source"] == str(samples_dir / "astronaut.jpg") and photo["face"] == 0 and photo["frame"] is None
    assert broken["source"] == str(video) and "clip.mp4" in broken["error"]
    assert all(broken[k] is None for k in (*FACE_COLUMNS, "frame", "time_s", "track"))
    assert broken["model"] == "tiny-shallow.onnx" and broken["model_version"] == tiny_version(tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "rows.csv"]  # no temporary file left


@pytest.mark.parametrize("flag", [["--fps", "0"], ["--every", "0"]])
def test_bad_frame_sampling_is_a_usage_error_up_front(tiny, samples_dir, flag):
    result = invoke("predict", samples_dir / "astronaut.jpg", "--model", tiny, *flag)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_train_refuses_a_bad_recipe_before_importing_tensorflow(tmp_path):
    # A fresh interpreter: the recipe is validated by the import-light export.config, so a bad --lr or a
    # --resume into a folder without a run costs no TensorFlow import, and the answer is the same (exit 2)
    # whether or not the train extra is installed (sys.modules[...] = None makes those imports fail).
    code = (
        "import sys\n"
        "if sys.argv[2] == 'without-tf':\n"
        "    sys.modules['tensorflow'] = sys.modules['keras'] = sys.modules['tf2onnx'] = None\n"
        "from typer.testing import CliRunner\n"
        "from fer_sdk.cli import app\n"
        "for extra in (['--lr', '0'], ['--out', sys.argv[1], '--resume'], ['--time-budget', '-1'],\n"
        "              ['--teacher-weight', '0'], ['--teacher', 'nope.onnx'],\n"
        "              ['--teacher', 'deep', '--teacher-weight', '0'],\n"
        "              ['--teacher', ' '], []):\n"
        "    if not extra:  # after the seven bad recipes: was TensorFlow or Keras imported?\n"
        "        print(sys.modules.get('tensorflow') is not None, sys.modules.get('keras') is not None)\n"
        "    r = CliRunner().invoke(app, ['train', '--arch', 'deep', '--data', 'x.csv', *extra])\n"
        "    print(r.exit_code, r.stderr.strip().splitlines()[-1])\n"
    )
    for mode in ("with-tf", "without-tf"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "nope"), mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = out.stdout.strip().splitlines()
        assert out.returncode == 0, out.stderr[-2000:]
        assert lines[0].startswith("2 fer-sdk: error: lr=0.0 must be > 0"), lines
        assert lines[1].startswith("2 fer-sdk: error: --resume:") and "nope" in lines[1]
        assert lines[2].startswith("2 fer-sdk: error: time_budget_s=-1.0")
        assert lines[3].startswith("2 fer-sdk: error: --teacher-weight needs --teacher") and "ensemble-int8" in lines[3]
        assert lines[4].startswith("4 fer-sdk: error: --teacher nope.onnx: model file") and "does not exist" in lines[4]
        assert lines[5].startswith("2 fer-sdk: error: teacher_weight=0.0 must be in (0, 1]")
        assert lines[6].startswith("2 fer-sdk: error: --teacher ' ' names no model")
        assert lines[7] == "False False"
        if mode == "without-tf":  # a valid recipe then asks for the train extra
            assert lines[8].startswith("6 fer-sdk: error:") and "fer-sdk[cpu,train]" in lines[8]
        else:  # ... or, with it installed, reads the data
            assert lines[8].startswith("5 fer-sdk: error: x.csv: no such file")


def test_predict_ends_with_a_summary_line(samples_dir):
    result = invoke("predict", "--model", "deep-int8", samples_dir)
    assert result.exit_code == 0, result.output
    (line,) = stderr_lines(result)
    assert re.fullmatch(
        r"fer-sdk: deep-int8 \(int8, CPUExecutionProvider\), detector yunet: 3 photo\(s\), "
        r"4 face\(s\) in \d+\.\d\d s",
        line,
    ), line


def test_version_help_and_debug_are_accepted_after_the_subcommand(tmp_path):
    import subprocess
    import sys
    from pathlib import Path as _Path

    from fer_sdk import __version__
    from fer_sdk.cli import hoist_global_flags

    assert hoist_global_flags(["predict", "a.jpg", "--debug"]) == ["--debug", "predict", "a.jpg"]
    assert hoist_global_flags(["models", "--version"]) == ["--version"]
    assert hoist_global_flags(["predict", "--", "--debug"]) == ["predict", "--", "--debug"]
    exe = _Path(sys.executable).with_name("fer-sdk")
    if not exe.is_file():
        pytest.skip("the fer-sdk console script is not installed beside this Python")
    run = lambda *a: subprocess.run([str(exe), *a], capture_output=True, text=True, timeout=120, check=False)
    assert run("models", "--version").stdout.strip() == f"fer-sdk {__version__}"
    assert "Usage: fer-sdk predict" in run("predict", "-h").stdout
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    debug = run("predict", str(bad), "--debug")
    assert debug.returncode == 3 and "fer-sdk: error:" in debug.stderr
    samples = _Path(__file__).resolve().parents[1] / "fer_sdk" / "samples"
    quiet = run("predict", str(samples), "--csv", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.count("\n") == 5  # header + 4 faces
    assert "fer-sdk: deep-int8" in run("predict", str(samples), "--csv").stderr


@pytest.mark.parametrize(("fmt", "quiet"), [("jsonl", False), ("jsonl", True), ("table", True)])
def test_a_reader_that_goes_away_ends_the_run_quietly_with_141(tiny, samples_dir, tmp_path, fmt, quiet):
    """`fer-sdk predict ... | head -1`: the console script with stdout a pipe closed after one line; stderr is a
    pipe too (not a terminal), so no progress bar may show there either."""
    exe = Path(sys.executable).with_name("fer-sdk")
    if not exe.is_file():
        pytest.skip("the fer-sdk console script is not installed beside this Python")
    folder = tmp_path / "many"
    folder.mkdir()
    photo = (samples_dir / "two_faces.jpg").read_bytes()
    for i in range(300):  # 600 rows, far more than a pipe holds: the writes after the close must fail
        (folder / f"p{i:03d}.jpg").write_bytes(photo)
    proc = subprocess.Popen(
        [str(exe), *(["-q"] if quiet else []), "predict", "--model", str(tiny), "--format", fmt, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=300)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if fmt == "jsonl":
        row = json.loads(first)
        assert row["source"] == str(folder / "p000.jpg") and row["face"] == 0
    else:
        assert first.split()[0] == b"source"
    assert code == 141, (code, err.decode(errors="replace")[-2000:])
    assert err == b"", err[-2000:]  # no "Broken pipe", no "Exception ignored", no traceback, no summary


def test_dash_reads_one_photo_from_stdin(samples_dir, tmp_path):
    photo = (samples_dir / "two_faces.jpg").read_bytes()
    result = CliRunner().invoke(
        app, ["predict", "--model", "deep-int8", "-", "--json", "--annotate", str(tmp_path)], input=photo
    )
    assert result.exit_code == 0, result.output
    rows = parse_rows(result.stdout, "json")
    assert [(r["source"], r["face"]) for r in rows] == [("-", 0), ("-", 1)]
    assert {r["annotated"] for r in rows} == {str(tmp_path / "stdin.png")}
    assert {(r["model"], r["model_version"]) for r in rows} == {("deep-int8", fer_sdk.__version__)}
    assert (tmp_path / "stdin.png").is_file()
    bad = CliRunner().invoke(app, ["predict", "--model", "deep-int8", "-"], input=b"not an image")
    assert bad.exit_code == 3 and "<stdin>: not an accepted image" in bad.stdout


def test_annotate_keeps_relative_folders_records_its_file_and_crops_are_saved(samples_dir, tmp_path):
    import cv2

    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
    shutil.copy(samples_dir / "two_faces.jpg", tmp_path / "in" / "a" / "x.jpg")
    shutil.copy(samples_dir / "grace_hopper.jpg", tmp_path / "in" / "b" / "x.jpg")
    out, crops = tmp_path / "out", tmp_path / "crops"
    result = invoke(
        "predict", "--model", "deep-int8", tmp_path / "in", "--json", "--annotate", out, "--save-crops", crops
    )
    assert result.exit_code == 0, result.output
    rows = parse_rows(result.stdout, "json")
    assert [(Path(r["source"]).relative_to(tmp_path / "in").as_posix(), r["face"], r["annotated"]) for r in rows] == [
        ("a/x.jpg", 0, str(out / "a" / "x.jpg")),
        ("a/x.jpg", 1, str(out / "a" / "x.jpg")),
        ("b/x.jpg", 0, str(out / "b" / "x.jpg")),
    ]
    assert sorted(str(p.relative_to(crops)) for p in crops.rglob("*.png")) == [
        "a/x.face0.png",
        "a/x.face1.png",
        "b/x.face0.png",
    ]
    crop = cv2.imread(str(crops / "b" / "x.face0.png"))
    assert crop.shape[0] == crop.shape[1] > 48  # the aligned square, at the photo's resolution


def test_help_renders_flags_without_a_type():
    text = invoke("predict", "--help").stdout
    flag_lines = [line for line in text.splitlines() if "--json" in line or "--tta" in line or "--help" in line]
    assert flag_lines and not any("<bool>" in line for line in flag_lines)
    assert "<int" in text  # typed options keep their type


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs the train extra")
@pytest.mark.train
def test_tensorflow_start_up_lines_are_hidden_unless_debug(tmp_path):
    exe = Path(sys.executable).with_name("fer-sdk")
    if not exe.is_file():
        pytest.skip("the fer-sdk console script is not installed beside this Python")
    (tmp_path / "run").mkdir()
    args = [str(exe), "export", str(tmp_path / "run"), "--out", str(tmp_path / "x.onnx"), "--data", str(FER_CSV)]
    quiet = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert quiet.returncode != 0 and quiet.stderr.strip().splitlines() == [
        line for line in quiet.stderr.strip().splitlines() if line.startswith("fer-sdk: error:")
    ], quiet.stderr
    loud = subprocess.run([*args, "--debug"], capture_output=True, text=True, timeout=300, check=False)
    assert "absl" in loud.stderr or "cuda" in loud.stderr.lower() or "Traceback" in loud.stderr

"""Batch inference on Ray Data (``fer_sdk.ray_batch``, ``fer-sdk predict --ray``) on a local 2-CPU Ray.

A few hundred photos are made from the sample photos (crops, mirror images, rescales, some gray) plus three
bad files; every result must equal the single-process path, ``Classifier(MODEL).analyze(load_image(path))``:
same boxes, same emotions, probabilities within 1e-6. One test lets ``--ray local`` start and stop its own
2-CPU Ray; the others share a module-scoped ``ray.init(num_cpus=2)``. They skip when ``ray[data]`` is not
installed; the ``FerPredictor`` and missing-dependency tests need no Ray. About a minute in all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROW_COLUMNS, SAMPLES_DIR
from typer.testing import CliRunner

import fer_sdk
from fer_sdk import EMOTIONS, Classifier
from fer_sdk.cli import PARTIAL_FAILURE_EXIT, app
from fer_sdk.errors import InvalidInputError
from fer_sdk.images import load_image
from fer_sdk.ray_batch import RESULT_COLUMNS, FerPredictor
from fer_sdk.rows import ROW_FIELDS

MODEL = "deep-int8"
N_PHOTOS = 240
BAD = {
    "empty.jpg": b"",
    "noise.jpg": bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8)),
    "cut.jpg": None,
}  # cut.jpg: the first half of a real JPEG


def make_photos(folder: Path, n: int) -> list[Path]:
    """``n`` JPEGs in three subfolders: random crops of the samples at 35-60 % scale, every other one
    mirrored, every seventh gray."""
    rng = np.random.default_rng(0)
    sources = [cv2.imread(str(p)) for p in sorted(SAMPLES_DIR.glob("*.jpg"))]
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        x0, y0 = int(rng.integers(0, w // 8)), int(rng.integers(0, h // 8))
        crop = img[y0 : y0 + int(h * rng.uniform(0.8, 1)), x0 : x0 + int(w * rng.uniform(0.8, 1))]
        scale = rng.uniform(0.35, 0.6)
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if i % 2:
            crop = crop[:, ::-1]
        if i % 7 == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        path = folder / f"set{i % 3}" / f"photo{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """(folder, good photos, bad files): N_PHOTOS JPEGs and the BAD files, plus a text file to be ignored."""
    folder = tmp_path_factory.mktemp("ray_photos")
    good = make_photos(folder, N_PHOTOS)
    bad = []
    for name, data in BAD.items():
        if data is None:
            data = good[0].read_bytes()[: good[0].stat().st_size // 2]
        (folder / name).write_bytes(data)
        bad.append(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder, good, bad


@pytest.fixture(scope="module")
def expected(photos) -> dict[str, list[dict]]:
    """The single-process results: absolute path -> [Face.to_dict(), ...]."""
    clf = Classifier(MODEL)
    return {str(p): [f.to_dict() for f in clf.analyze(load_image(p))] for p in photos[1]}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


#: Rows round probabilities to 6 decimals (fer_sdk.rows.PROB_DIGITS) and the single-process faces are not rounded:
#: the 1e-6 agreement of the two paths plus half a unit of the 6th decimal.
ATOL = 1e-6 + 5e-7
LANDMARK_COLUMNS = [f"{p}_{c}" for p in ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth") for c in "xy"]


def assert_same_faces(got: list[dict], want: list[dict], where: str) -> None:
    """``got``: one input's rows (one per face, or the single face-less row); ``want``: ``Face.to_dict()``s."""
    if not want:
        (row,) = got
        assert row["face"] is None and row["emotion"] is None and row["x"] is None, where
        assert all(row[e] is None for e in EMOTIONS), where
        return
    assert len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["face"] == i, where
        assert [g["x"], g["y"], g["w"], g["h"]] == w["box"], where
        assert g["emotion"] == w["emotion"], where
        assert list(w["emotions"]) == list(EMOTIONS), where
        assert np.allclose([g[e] for e in EMOTIONS], list(w["emotions"].values()), rtol=0, atol=ATOL), where
        assert np.isclose(g["score"], w["score"], rtol=0, atol=ATOL), where
        if w["detection_score"] is None:  # a detector that gives neither score nor landmarks
            assert g["detection_score"] is None and w["landmarks"] is None, where
            continue
        assert np.isclose(g["detection_score"], w["detection_score"], rtol=0, atol=ATOL), where
        assert np.allclose([g[c] for c in LANDMARK_COLUMNS], np.ravel(w["landmarks"]), rtol=0, atol=0.0051), (
            where
        )  # 2 decimals


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows by ``source``; each input's rows must be consecutive (one input's faces are not interleaved)."""
    by_source: dict[str, list[dict]] = {}
    last = None
    for r in rows:
        assert r["source"] == last or r["source"] not in by_source, f"{r['source']}: rows apart"
        by_source.setdefault(r["source"], []).append(r)
        last = r["source"]
    return by_source


def assert_rows_match(rows: list[dict], expected: dict[str, list[dict]], bad: list[str]) -> None:
    """Every expected photo and bad file appears (one row per face, one for a photo without faces or an error);
    results equal the single-process ones; every row names the model."""
    by_source = group_rows(rows)
    assert len(by_source) == len(expected) + len(bad)
    assert len(rows) == sum(max(1, len(w)) for w in expected.values()) + len(bad)
    assert {(r["model"], r["model_version"]) for r in rows} == {(MODEL, fer_sdk.__version__)}
    assert all(
        r["frame"] is None and r["time_s"] is None and r["track"] is None and r["annotated"] is None for r in rows
    )
    for path, want in expected.items():
        got = by_source[path]
        assert all(r["error"] is None for r in got), [r["error"] for r in got]
        assert_same_faces(got, want, path)
    for path in bad:
        (row,) = by_source[path]
        assert row["error"].startswith(path), row["error"]
        assert (row["face"], row["x"], row["emotion"], row["score"]) == (None, None, None, None)


def read_parquet_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    from fer_sdk.rows import arrow_schema

    table = pq.read_table(folder)
    assert tuple(table.column_names[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS == ROW_FIELDS
    schema = arrow_schema()
    for name in RESULT_COLUMNS:
        assert table.schema.field(name).type == schema.field(name).type, name
    return table.to_pylist()


# ------------------------------------------------------------------------------------------- no Ray needed
def test_predictor_batch_without_ray(photos, expected):
    """FerPredictor on a plain dict batch: bytes rows, a row read from its path, a bad row, extra columns kept;
    out comes a pyarrow Table of the rows every pipeline writes, one per face, the extra columns repeated."""
    import pyarrow as pa

    from fer_sdk.rows import arrow_schema

    _, good, bad = photos
    pred = FerPredictor(MODEL, batch_size=8)
    paths = [str(p) for p in (*good[:5], bad[1])]
    data = np.array([p.read_bytes() for p in good[:4]] + [None, bad[1].read_bytes()], dtype=object)
    labels = np.array([f"label{i}" for i in range(6)], dtype=object)
    out = pred({"path": np.array(paths, dtype=object), "bytes": data, "id": np.arange(6), "label": labels})
    assert isinstance(out, pa.Table)
    assert out.column_names == [*ROW_FIELDS, "id", "label"] and tuple(RESULT_COLUMNS) == ROW_FIELDS == ROW_COLUMNS
    assert out.schema.field("id").type == pa.int64() and out.schema.field("label").type == pa.string()
    for field in arrow_schema():
        assert out.schema.field(field.name).type == field.type, field.name
    rows = out.to_pylist()
    counts = [max(1, len(expected[p])) for p in paths[:5]] + [1]
    assert len(rows) == sum(counts) > len(paths)  # some photos hold several faces: a row each
    assert [r["id"] for r in rows] == [i for i, n in enumerate(counts) for _ in range(n)]
    assert all(r["source"] == paths[r["id"]] and r["label"] == f"label{r['id']}" for r in rows)
    assert_rows_match(rows, {p: expected[p] for p in paths[:5]}, [paths[5]])
    assert "not an accepted image" in rows[-1]["error"]
    with pytest.raises(InvalidInputError, match="needs a 'bytes' or 'path' column"):
        pred({"id": np.arange(2)})
    empty = pred({"path": np.array([], dtype=object), "id": np.arange(0)})
    assert empty.num_rows == 0 and empty.column_names == [*ROW_FIELDS, "id"]
    only_bytes = pred({"bytes": np.array([good[0].read_bytes()], dtype=object)}).to_pylist()
    assert {r["source"] for r in only_bytes} == {"image bytes"}
    assert_same_faces(only_bytes, expected[str(good[0])], "image bytes")


def test_predictor_isolates_a_photo_the_detector_fails_on(photos):
    """A custom detector raising on one photo makes that row an error; the rest of the batch is classified."""
    _, good, _ = photos
    bad_shape = load_image(good[2]).shape[:2]

    def detector(image):
        if image.shape[:2] == bad_shape:
            return [(0, 0, -5, 10)]  # a negative width: normalize_boxes raises InvalidInputError
        return [(0, 0, image.shape[1], image.shape[0])]

    paths = [str(p) for p in good[:4]]
    assert sum(load_image(p).shape[:2] == bad_shape for p in paths) == 1
    out = FerPredictor(MODEL, batch_size=8, detector=detector)({"path": np.array(paths, dtype=object)})
    assert out.column_names == list(ROW_FIELDS)
    rows = out.to_pylist()
    assert [r["source"] for r in rows] == paths  # one face each, and one error row
    errors = [r["error"] for r in rows]
    assert errors[2].startswith(paths[2]) and "detector" in errors[2], errors[2]
    assert [e for i, e in enumerate(errors) if i != 2] == [None, None, None]
    assert [r["face"] for r in rows] == [0, 0, None, 0]
    clf = Classifier(MODEL, detector=detector)
    for i in (0, 1, 3):
        assert rows[i]["detection_score"] is None and all(rows[i][c] is None for c in LANDMARK_COLUMNS)
        assert_same_faces([rows[i]], [f.to_dict() for f in clf.analyze(load_image(paths[i]))], paths[i])


def test_missing_ray_says_what_to_install(tmp_path):
    """Without ray the library and the CLI raise DependencyError naming the extra (CLI exit code 6)."""
    script = (
        "import sys; sys.modules['ray'] = None\n"
        "from fer_sdk.errors import DependencyError\n"
        "from fer_sdk.ray_batch import run_ray_predict\n"
        "try:\n"
        f"    run_ray_predict([{str(tmp_path)!r}], address='local', model={MODEL!r}, output={str(tmp_path / 'o')!r})\n"
        "except DependencyError as exc:\n"
        "    print('LIB', exc)\n"
        "from fer_sdk.cli import main\n"
        f"sys.argv = ['fer-sdk', 'predict', {str(tmp_path)!r}, '--ray', 'local', '--output', 'o']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert 'LIB batch inference on Ray needs Ray Data (ray is missing): pip install "fer-sdk[ray]"' in proc.stdout
    assert proc.returncode == 6, proc.stderr
    assert 'pip install "fer-sdk[ray]"' in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- on Ray
@pytest.mark.slow
def test_local_ray_is_started_and_stopped(photos, expected, tmp_path):
    """With no Ray running, --ray local starts one (num_cpus=2) and shuts it down afterwards."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process (test order changed)")
    from fer_sdk.ray_batch import run_ray_predict

    good = photos[1][:6]
    run = run_ray_predict(good, address="local", local_cpus=2, model=MODEL, output=tmp_path / "o", concurrency=1)
    assert run.errors == [] and run.images == 6 and run.target == str(tmp_path / "o")
    assert run.faces == sum(len(expected[str(p)]) for p in good)
    assert not ray.is_initialized()
    assert_rows_match(read_parquet_rows(tmp_path / "o"), {str(p): expected[str(p)] for p in good}, [])


@pytest.mark.slow
def test_folder_on_ray_matches_single_process(local_ray, photos, expected, tmp_path, capsys):
    from fer_sdk.ray_batch import run_ray_predict

    folder, _, bad = photos
    out = tmp_path / "results"
    run = run_ray_predict([folder], address="local", model=MODEL, batch_size=16, output=out, concurrency=2)
    assert len(run.errors) == len(bad)
    assert sorted(next(str(b) for b in bad if e.startswith(str(b))) for e in run.errors) == sorted(map(str, bad))
    assert run.images == N_PHOTOS + len(bad) and run.faces == sum(len(w) for w in expected.values())
    assert (run.target, run.actors) == (str(out), 2)
    assert_rows_match(read_parquet_rows(out), expected, [str(p) for p in bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # the temporary sibling is gone
    assert local_ray.is_initialized()  # an instance it did not start is left running
    assert "fer-sdk" not in capsys.readouterr().err  # the library prints nothing; the CLI prints the summary


@pytest.mark.slow
def test_parquet_input_and_extra_columns(local_ray, photos, expected, tmp_path):
    """Parquet with bytes (some null: read from path) and a missing path, via run_ray_predict; then an id column
    kept through predict_dataset on the caller's own dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fer_sdk.ray_batch import predict_dataset, run_ray_predict

    _, good, bad = photos
    chosen = good[::6]
    missing = str(tmp_path / "gone.jpg")
    paths = [str(p) for p in chosen] + [str(bad[0]), missing]
    data = [p.read_bytes() if i % 2 else None for i, p in enumerate(chosen)] + [b"", None]
    table = pa.table({"path": paths, "bytes": pa.array(data, pa.binary()), "id": list(range(len(paths)))})
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 20), tmp_path / "in" / "part-0.parquet")
    pq.write_table(table.slice(20), tmp_path / "in" / "part-1.parquet")

    out = tmp_path / "out"
    run = run_ray_predict([tmp_path / "in"], address="local", model=MODEL, output=out, concurrency=1)
    assert len(run.errors) == 2 and run.images == len(paths)
    rows = read_parquet_rows(out)
    assert_rows_match(rows, {str(p): expected[str(p)] for p in chosen}, [str(bad[0]), missing])

    ds = local_ray.data.read_parquet(str(tmp_path / "in" / "part-0.parquet")).select_columns(["id", "bytes"])
    rows = predict_dataset(ds, model=MODEL, batch_size=8).take_all()
    assert sorted({r["id"] for r in rows}) == list(range(20))
    by_id: dict[int, list[dict]] = {}
    for r in rows:
        assert list(r) == [*ROW_FIELDS, "id"]  # no bytes, no path
        by_id.setdefault(r["id"], []).append(r)
    for i, got in sorted(by_id.items()):
        assert {r["source"] for r in got} == {"image bytes"}
        if i % 2:
            assert_same_faces(sorted(got, key=lambda r: r["face"] or 0), expected[paths[i]], paths[i])
        else:  # no bytes and no path
            (row,) = got
            assert row["error"] == "row has neither image bytes nor a path" and row["face"] is None


@pytest.mark.slow
def test_cli_predict_ray_local(local_ray, photos, expected, tmp_path):
    """`fer-sdk predict DIR --ray local --output OUT`: Parquet out; exit 8 when some inputs failed, else 0."""
    import pyarrow.parquet as pq

    folder, good, bad = photos
    runner = CliRunner()
    out = tmp_path / "all"
    result = runner.invoke(app, ["predict", str(folder), "--ray", "local", "--output", str(out), "-m", MODEL])
    assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
    table = pq.read_table(out)
    assert table.column_names == list(ROW_FIELDS)  # a folder of photos: no passthrough columns
    assert table.num_rows == sum(max(1, len(w)) for w in expected.values()) + len(bad) > N_PHOTOS + len(bad)
    assert len(set(table.column("source").to_pylist())) == N_PHOTOS + len(bad)
    assert f"{len(bad)} input(s) could not be processed" in result.stderr
    faces = sum(len(w) for w in expected.values())
    assert f"ray: {N_PHOTOS + len(bad)} image(s), {faces} face(s), {len(bad)} error(s) -> {out}" in result.stderr
    assert sum(
        line.startswith("fer-sdk: error: ") and any(str(b) in line for b in bad) for line in result.stderr.splitlines()
    ) == len(bad)

    clean = tmp_path / "clean"
    clean.mkdir()
    for p in good[:4]:
        (clean / p.name).write_bytes(p.read_bytes())
    result = runner.invoke(app, ["predict", str(clean), "--ray", "local", "-o", str(tmp_path / "ok"), "-m", MODEL])
    assert result.exit_code == 0, result.output
    want = {str(clean / p.name): expected[str(p)] for p in good[:4]}
    assert_rows_match(read_parquet_rows(tmp_path / "ok"), want, [])

    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("nothing to see")
    x = str(tmp_path / "x")
    for args, code, needle in (  # all refused before anything runs on Ray
        ([clean], 2, "pass --output DIR"),
        ([clean, "--output", out], 2, "already exists and is not an empty folder"),
        ([clean, "--output", x, "--json"], 2, "drop --format json"),
        ([clean, "--output", x, "-m", "no-such-model"], 4, "no-such-model"),
        ([tmp_path / "no_images", "--output", x], 2, "no images or Parquet found"),
    ):
        result = runner.invoke(app, ["predict", "--ray", "local", "-m", MODEL, *map(str, args)])
        assert result.exit_code == code, result.output
        assert needle in result.stderr
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


@pytest.mark.slow
def test_local_folders_are_walked_by_the_same_rule_as_without_ray(local_ray, tmp_path):
    """Dot files and dot folders are skipped, "_" names kept: the single-process walk, not Ray's listing."""
    from fer_sdk.photos import collect_inputs
    from fer_sdk.ray_batch import read_images

    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("a.jpg", "_b.jpg", ".c.jpg", "sub/_d.JPG", ".hidden/e.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    got = sorted(Path(r["path"]).name for r in read_images([tmp_path]).take_all())
    assert got == ["_b.jpg", "_d.JPG", "a.jpg"]
    assert got == sorted(p.name for p in collect_inputs([tmp_path])[0])

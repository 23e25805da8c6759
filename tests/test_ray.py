"""Batch inference on Ray Data (``fer_sdk.ray_batch``, ``fer-sdk predict --ray``) on a local 2-CPU Ray.

A few hundred photos are made from the sample photos (crops, mirror images, rescales, some gray) plus three
bad files; every result must equal the single-process path, ``Classifier(MODEL).analyze(load_image(path))``:
same boxes, same emotions, probabilities within 1e-6. One test lets ``--ray local`` start and stop its own
2-CPU Ray; the others share a module-scoped ``ray.init(num_cpus=2)``. They skip when ``ray[data]`` is not
installed; the ``FerPredictor`` and missing-dependency tests need no Ray. About a minute in all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES_DIR
from typer.testing import CliRunner

from fer_sdk import Classifier
from fer_sdk.cli import PARTIAL_FAILURE_EXIT, app
from fer_sdk.errors import InvalidInputError
from fer_sdk.images import load_image
from fer_sdk.ray_batch import RESULT_COLUMNS, FerPredictor

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


def assert_same_faces(got: list[dict], want: list[dict], where: str) -> None:
    assert len(got) == len(want), where
    for g, w in zip(got, want):
        assert g["box"] == w["box"], where
        assert g["emotion"] == w["emotion"], where
        assert list(g["emotions"]) == list(w["emotions"]), where
        assert np.allclose(list(g["emotions"].values()), list(w["emotions"].values()), rtol=0, atol=1e-6), (
            where
        )
        assert np.isclose(g["score"], w["score"], rtol=0, atol=1e-6), where


def assert_rows_match(rows: list[dict], expected: dict[str, list[dict]], bad: list[str]) -> None:
    """Every expected photo and bad file appears once; results equal the single-process ones."""
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows) == len(expected) + len(bad)
    for path, want in expected.items():
        row = by_path[path]
        assert row["error"] == "", row["error"]
        assert row["n_faces"] == len(want), path
        faces = json.loads(row["faces"])
        assert_same_faces(faces, want, path)
        largest = max(want, key=lambda f: f["box"][2] * f["box"][3])["emotion"] if want else ""
        assert row["emotion"] == largest, path
    for path in bad:
        row = by_path[path]
        assert row["error"].startswith(path), row["error"]
        assert (row["n_faces"], row["faces"], row["emotion"]) == (0, "[]", "")


def read_parquet_rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(folder)
    assert set(RESULT_COLUMNS) <= set(table.column_names)
    return table.to_pylist()


# ------------------------------------------------------------------------------------------- no Ray needed
def test_predictor_batch_without_ray(photos, expected):
    """FerPredictor on a plain dict batch: bytes rows, a row read from its path, a bad row, extra columns kept."""
    _, good, bad = photos
    pred = FerPredictor(MODEL, batch_size=8)
    paths = [str(p) for p in (*good[:5], bad[1])]
    data = np.array([p.read_bytes() for p in good[:4]] + [None, bad[1].read_bytes()], dtype=object)
    out = pred({"path": np.array(paths, dtype=object), "bytes": data, "id": np.arange(6)})
    assert set(out) == {*RESULT_COLUMNS, "id"}
    assert out["id"].tolist() == list(range(6))
    rows = [dict(zip(out, values)) for values in zip(*out.values())]
    assert_rows_match(rows, {p: expected[p] for p in paths[:5]}, [paths[5]])
    assert "not an accepted image" in rows[5]["error"]
    with pytest.raises(InvalidInputError, match="needs a 'bytes' or 'path' column"):
        pred({"id": np.arange(2)})


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
    errors = out["error"].tolist()
    assert errors[2].startswith(paths[2]) and "detector" in errors[2], errors[2]
    assert [e for i, e in enumerate(errors) if i != 2] == ["", "", ""]
    assert out["n_faces"].tolist() == [1, 1, 0, 1]
    clf = Classifier(MODEL, detector=detector)
    for i in (0, 1, 3):
        assert_same_faces(json.loads(out["faces"][i]), [f.to_dict() for f in clf.analyze(load_image(paths[i]))], paths[i])


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
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert (
        'LIB batch inference on Ray needs Ray Data (ray is missing): pip install "fer-sdk[ray]"'
        in proc.stdout
    )
    assert proc.returncode == 6, proc.stderr
    assert 'pip install "fer-sdk[ray]"' in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- on Ray
def test_local_ray_is_started_and_stopped(photos, expected, tmp_path):
    """With no Ray running, --ray local starts one (num_cpus=2) and shuts it down afterwards."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process (test order changed)")
    from fer_sdk.ray_batch import run_ray_predict

    good = photos[1][:6]
    failed = run_ray_predict(
        good, address="local", local_cpus=2, model=MODEL, output=tmp_path / "o", concurrency=1
    )
    assert failed == 0
    assert not ray.is_initialized()
    assert_rows_match(read_parquet_rows(tmp_path / "o"), {str(p): expected[str(p)] for p in good}, [])


def test_folder_on_ray_matches_single_process(local_ray, photos, expected, tmp_path, capsys):
    from fer_sdk.ray_batch import run_ray_predict

    folder, _, bad = photos
    out = tmp_path / "results"
    failed = run_ray_predict([folder], address="local", model=MODEL, batch_size=16, output=out, concurrency=2)
    assert failed == len(bad)
    assert_rows_match(read_parquet_rows(out), expected, [str(p) for p in bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # the temporary sibling is gone
    assert local_ray.is_initialized()  # an instance it did not start is left running
    err = capsys.readouterr().err
    assert f"{N_PHOTOS + len(bad)} images" in err and f"{len(bad)} errors" in err


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
    failed = run_ray_predict([tmp_path / "in"], address="local", model=MODEL, output=out, concurrency=1)
    assert failed == 2
    rows = read_parquet_rows(out)
    assert_rows_match(rows, {str(p): expected[str(p)] for p in chosen}, [str(bad[0]), missing])

    ds = local_ray.data.read_parquet(str(tmp_path / "in" / "part-0.parquet")).select_columns(["id", "bytes"])
    rows = predict_dataset(ds, model=MODEL, batch_size=8).take_all()
    assert sorted(r["id"] for r in rows) == list(range(20))
    for r in rows:
        assert "bytes" not in r
        if r["id"] % 2:
            assert_same_faces(json.loads(r["faces"]), expected[paths[r["id"]]], paths[r["id"]])
        else:  # no bytes and no path
            assert r["error"] == "row has neither image bytes nor a path"


def test_cli_predict_ray_local(local_ray, photos, expected, tmp_path):
    """`fer-sdk predict DIR --ray local --output OUT`: Parquet out; exit 8 when some inputs failed, else 0."""
    import pyarrow.parquet as pq

    folder, good, bad = photos
    runner = CliRunner()
    out = tmp_path / "all"
    result = runner.invoke(app, ["predict", str(folder), "--ray", "local", "--output", str(out), "-m", MODEL])
    assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
    assert pq.read_table(out).num_rows == N_PHOTOS + len(bad)
    assert f"{len(bad)} input(s) could not be processed" in result.stderr

    clean = tmp_path / "clean"
    clean.mkdir()
    for p in good[:4]:
        (clean / p.name).write_bytes(p.read_bytes())
    result = runner.invoke(
        app, ["predict", str(clean), "--ray", "local", "-o", str(tmp_path / "ok"), "-m", MODEL]
    )
    assert result.exit_code == 0, result.output
    want = {str(clean / p.name): expected[str(p)] for p in good[:4]}
    assert_rows_match(read_parquet_rows(tmp_path / "ok"), want, [])

    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("nothing to see")
    x = str(tmp_path / "x")
    for args, code, needle in (  # all refused before anything runs on Ray
        ([clean], 2, "pass --output DIR"),
        ([clean, "--output", out], 2, "already exists and is not an empty folder"),
        ([clean, "--output", x, "--json"], 2, "drop --json"),
        ([clean, "--output", x, "-m", "no-such-model"], 4, "no-such-model"),
        ([tmp_path / "no_images", "--output", x], 2, "no images or Parquet found"),
    ):
        result = runner.invoke(app, ["predict", "--ray", "local", "-m", MODEL, *map(str, args)])
        assert result.exit_code == code, result.output
        assert needle in result.stderr
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind

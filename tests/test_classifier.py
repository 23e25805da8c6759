"""Classifier on real exported models and real images: inputs, batching, photos, threads, TTA, loading."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import onnxruntime
import pytest
from conftest import manifest_entry, write_manifest

from fer_sdk import EMOTIONS, Classifier, Face, registry
from fer_sdk.errors import InvalidInputError, ModelError


@pytest.fixture(scope="module")
def clf(tiny_models) -> Classifier:
    return Classifier(tiny_models.fp32)


@pytest.fixture(scope="module")
def faces(fer_faces) -> np.ndarray:
    return fer_faces[0][:30]


@pytest.fixture(scope="module")
def astronaut(samples_dir):
    path = samples_dir / "astronaut.jpg"
    if not path.is_file():
        pytest.fail(f"sample image {path} is missing")
    return path


def _check_probs(probs: np.ndarray, n: int) -> None:
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32 and probs.shape == (n, len(EMOTIONS))
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ face crops


def test_accepted_face_forms(clf, faces, tmp_path):
    ref = clf.predict_proba(faces)
    _check_probs(ref, len(faces))
    assert not np.allclose(ref, ref[0])  # faces differ -> rows differ

    single = clf.predict_proba(faces[3])
    _check_probs(single, 1)
    np.testing.assert_allclose(single[0], ref[3], atol=1e-6)

    np.testing.assert_allclose(clf.predict_proba(faces[..., None]), ref, atol=1e-6)  # (N, 48, 48, 1)
    np.testing.assert_allclose(clf.predict_proba(list(faces)), ref, atol=1e-6)  # list of arrays
    np.testing.assert_allclose(clf.predict_proba(faces.astype(np.float32) / 255), ref, atol=1e-5)  # floats in [0, 1]

    bgr = np.stack([cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in faces[:4]])
    np.testing.assert_allclose(clf.predict_proba(bgr), ref[:4], atol=1e-6)  # (N, 48, 48, 3) BGR
    np.testing.assert_allclose(clf.predict_proba(bgr[0]), ref[:1], atol=1e-6)  # one (48, 48, 3)

    big_gray = cv2.resize(faces[5], (144, 144), interpolation=cv2.INTER_CUBIC)
    big_bgr = cv2.cvtColor(big_gray, cv2.COLOR_GRAY2BGR)
    small = cv2.resize(faces[6], (30, 30), interpolation=cv2.INTER_AREA)
    mixed = clf.predict_proba([big_gray, big_bgr, small])  # any size, gray and BGR, in one list
    _check_probs(mixed, 3)
    np.testing.assert_allclose(mixed[0], mixed[1], atol=1e-6)
    assert np.abs(mixed[0] - ref[5]).max() < 0.1  # 3x up then area-down: nearly the same face

    paths = []
    for i, face in enumerate(faces[:5]):
        path = tmp_path / f"face{i}.png"  # lossless, so the pixels are exact
        cv2.imwrite(str(path), face)
        paths.append(path)
    np.testing.assert_allclose(clf.predict_proba(paths), ref[:5], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba([str(p) for p in paths]), ref[:5], atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(paths[2].read_bytes()), ref[2:3], atol=1e-6)


def test_predict_gives_emotion_names(clf, faces):
    labels = clf.predict(faces)
    assert len(labels) == len(faces) and set(labels) <= set(EMOTIONS)
    assert labels == [EMOTIONS[i] for i in clf.predict_proba(faces).argmax(axis=1)]
    assert clf.labels == EMOTIONS


def test_empty_input(clf):
    for empty in ([], np.zeros((0, 48, 48), np.uint8)):
        probs = clf.predict_proba(empty)
        assert probs.shape == (0, 7) and probs.dtype == np.float32
    assert clf.predict([]) == []
    assert clf.analyze_many([]) == []


class CountingSession:
    """Wraps an InferenceSession and records the batch size of every run."""

    def __init__(self, session):
        self._session = session
        self.batches: list[int] = []

    def run(self, outputs, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self._session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_batching_keeps_order_and_results(tiny_models, fer_faces):
    thirty = fer_faces[0][:30]
    counting = CountingSession(onnxruntime.InferenceSession(str(tiny_models.fp32), providers=["CPUExecutionProvider"]))
    small = Classifier(session=counting, batch_size=7)
    big = Classifier(tiny_models.fp32, batch_size=64)
    p7 = small.predict_proba(thirty)
    assert counting.batches == [7, 7, 7, 7, 2]
    np.testing.assert_allclose(p7, big.predict_proba(thirty), atol=1e-5)
    np.testing.assert_allclose(small.predict_proba(thirty[::-1]), p7[::-1], atol=1e-5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True, None])
def test_bad_batch_size(tiny_models, bad):
    with pytest.raises(InvalidInputError, match=r"batch_size=.*e\.g\. batch_size=64"):
        Classifier(tiny_models.fp32, batch_size=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threads": 0}, "threads="),
        ({"face_margin": -0.1}, "face_margin="),
        ({"flip_tta": "yes"}, "flip_tta="),
    ],
)
def test_bad_options(tiny_models, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        Classifier(tiny_models.fp32, **kwargs)


def test_flip_tta_is_the_average_with_the_mirror(tiny_models, clf, faces):
    tta = Classifier(tiny_models.fp32, flip_tta=True, batch_size=8)
    assert tta.flip_tta
    plain = clf.predict_proba(faces)
    mirrored = clf.predict_proba(np.ascontiguousarray(faces[:, :, ::-1]))
    got = tta.predict_proba(faces)
    _check_probs(got, len(faces))
    assert np.abs(got - plain).max() > 1e-3
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-6)


def test_threads_share_one_classifier(clf, fer_faces):
    chunks = [fer_faces[0][i * 5 : (i + 1) * 5] for i in range(8)]
    expected = [clf.predict_proba(c) for c in chunks]
    mismatches = []
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        for _ in range(200):
            if not np.array_equal(clf.predict_proba(chunks[i]), expected[i]):
                mismatches.append(i)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert mismatches == []


def test_labels_are_mapped_by_name(make_onnx, tmp_path, faces):
    """A model whose metadata lists the labels in another order gets its columns put in EMOTIONS order."""
    weights = np.random.default_rng(1).normal(0, 0.05, (48 * 48, 7)).astype(np.float32)
    normal = Classifier(make_onnx(tmp_path / "a.onnx", weights=weights))
    perm = [6, 2, 0, 5, 1, 3, 4]
    shuffled = Classifier(make_onnx(tmp_path / "b.onnx", weights=weights[:, perm], labels=[EMOTIONS[i] for i in perm]))
    np.testing.assert_allclose(shuffled.predict_proba(faces), normal.predict_proba(faces), atol=1e-6)
    bad_labels = [*list(EMOTIONS[:6]), "contempt"]
    with pytest.raises(ModelError, match="contempt"):
        Classifier(make_onnx(tmp_path / "c.onnx", weights=weights, labels=bad_labels))


def test_int8_model(tiny_models, clf, fer_faces):
    int8 = Classifier(tiny_models.require_int8())
    assert int8.metadata["precision"] == "int8"
    faces = fer_faces[0]
    got = int8.predict_proba(faces)
    _check_probs(got, len(faces))
    agreement = np.mean(got.argmax(1) == clf.predict_proba(faces).argmax(1))
    assert agreement >= 0.9, agreement


# ------------------------------------------------------------------ photos


def test_analyze_astronaut(clf, astronaut):
    image = cv2.imread(str(astronaut))
    found = clf.analyze(astronaut)
    assert len(found) == 1
    face = found[0]
    x, y, w, h = face.box
    assert all(isinstance(v, int) for v in face.box)
    assert w > 20 and h > 20 and x >= 0 and y >= 0
    assert x + w <= image.shape[1] and y + h <= image.shape[0]
    assert list(face.emotions) == list(EMOTIONS)
    assert face.emotion == max(face.emotions, key=face.emotions.get)
    assert face.score == face.emotions[face.emotion]
    assert abs(sum(face.emotions.values()) - 1) < 1e-5
    as_dict = json.loads(json.dumps(face.to_dict()))
    assert as_dict["box"] == list(face.box) and as_dict["emotion"] == face.emotion
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.score = 1.0
    # the same photo as bytes, BGR array and gray array
    for variant in (astronaut.read_bytes(), image):
        again = clf.analyze(variant)
        assert len(again) == 1 and again[0].box == face.box
        np.testing.assert_allclose(list(again[0].emotions.values()), list(face.emotions.values()), atol=1e-6)
    assert len(clf.analyze(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))) == 1


def test_analyze_without_faces(clf):
    assert clf.analyze(np.full((240, 320, 3), 127, np.uint8)) == []


def test_analyze_many_matches_analyze(clf, astronaut):
    image = cv2.imread(str(astronaut))
    pair = np.concatenate([image, cv2.flip(image, 1)], axis=1)  # two faces in one photo
    photos = [
        astronaut,
        np.full((200, 200, 3), 90, np.uint8),
        pair,
        astronaut.read_bytes(),
        cv2.flip(image, 1),
    ]
    many = clf.analyze_many(photos, workers=3)
    assert len(many) == len(photos)
    assert [len(faces) for faces in many] == [1, 0, 2, 1, 1]
    for photo, got in zip(photos, many):
        want = clf.analyze(photo)
        assert [f.box for f in got] == [f.box for f in want]
        for g, w in zip(got, want):
            assert g.emotion == w.emotion
            np.testing.assert_allclose(list(g.emotions.values()), list(w.emotions.values()), atol=1e-5)
    assert clf.analyze_many(iter(photos[:2]), workers=1) == many[:2]
    with pytest.raises(InvalidInputError, match="workers="):
        clf.analyze_many(photos, workers=0)
    with pytest.raises(InvalidInputError, match="analyze_many"):
        clf.analyze_many(astronaut)


def test_analyze_from_threads(clf, astronaut):
    expected = clf.analyze(astronaut)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: clf.analyze(astronaut), range(12)))
    assert all(r == expected for r in results)


def test_custom_detector_object(tiny_models, astronaut):
    class FixedBox:
        def detect(self, image):
            return [(10, 20, 100, 120), (200, 50, 80, 80)]

    found = Classifier(tiny_models.fp32, detector=FixedBox()).analyze(astronaut)
    assert [f.box for f in found] == [(10, 20, 100, 120), (200, 50, 80, 80)]
    with pytest.raises(InvalidInputError, match="detector"):
        Classifier(tiny_models.fp32, detector=42)


# ------------------------------------------------------------------ loading


def test_injected_session(tiny_models, clf, faces):
    session = onnxruntime.InferenceSession(str(tiny_models.fp32), providers=["CPUExecutionProvider"])
    injected = Classifier(session=session)
    assert injected.session is session and injected.providers == ["CPUExecutionProvider"]
    assert injected.spec is None
    np.testing.assert_allclose(injected.predict_proba(faces), clf.predict_proba(faces), atol=1e-6)
    with pytest.raises(InvalidInputError, match="session="):
        Classifier(session=session, providers=["CPUExecutionProvider"])
    with pytest.raises(InvalidInputError, match="InferenceSession"):
        Classifier(session="model.onnx")


def test_properties_and_repr(tiny_models, clf):
    assert clf.model_path == tiny_models.fp32.resolve() and clf.spec is None
    assert clf.providers == ["CPUExecutionProvider"] and clf.batch_size == 64
    meta = clf.metadata
    assert meta["labels"] == list(EMOTIONS) and meta["architecture"] == "shallow"
    meta["labels"] = []  # a copy: the classifier is unaffected
    assert clf.metadata["labels"] == list(EMOTIONS)
    text = repr(clf)
    assert text.startswith("Classifier(") and tiny_models.fp32.name in text and "CPUExecutionProvider" in text


def test_bundled_model_by_name(tiny_models, models_dir, faces, clf):
    folder = models_dir
    shutil.copy(tiny_models.fp32, folder / "tiny.onnx")
    data = (folder / "tiny.onnx").read_bytes()
    write_manifest(folder, {"tiny": manifest_entry("tiny.onnx", data, parameters=1, metrics={}, card=None)})

    by_name = Classifier("tiny")
    assert by_name.spec is not None and by_name.spec.name == "tiny" and by_name.model_path == folder / "tiny.onnx"
    assert "'tiny'" in repr(by_name)
    np.testing.assert_allclose(by_name.predict_proba(faces), clf.predict_proba(faces), atol=1e-6)
    assert Classifier().spec.name == "tiny"  # the manifest default

    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    (folder / "tiny.onnx").write_bytes(bytes(corrupt))
    with pytest.raises(ModelError, match="sha256"):
        Classifier("tiny")
    with pytest.raises(ModelError, match="tiny"):
        Classifier("nonexistent-model")


def test_no_bundled_models(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelError, match="no bundled models are installed"):
        Classifier()


def test_unloadable_models(tiny_models, make_onnx, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 100)
    truncated = tmp_path / "truncated.onnx"
    data = tiny_models.fp32.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    for path in (tmp_path / "missing.onnx", garbage, truncated):
        with pytest.raises(ModelError, match=path.name):
            Classifier(path)
    plain = make_onnx(tmp_path / "plain.onnx", metadata=False)
    with pytest.raises(ModelError, match="has no fer-sdk metadata"):
        Classifier(plain)


def test_face_is_a_plain_value():
    face = Face(box=(1, 2, 3, 4), emotions=dict.fromkeys(EMOTIONS, 1 / 7), emotion="angry", score=1 / 7)
    assert face.to_dict()["box"] == [1, 2, 3, 4]
    assert face == Face(box=(1, 2, 3, 4), emotions=dict.fromkeys(EMOTIONS, 1 / 7), emotion="angry", score=1 / 7)


def test_predict_proba_converts_batch_by_batch_so_memory_follows_the_batch(tiny_models):
    import tracemalloc

    clf = Classifier(tiny_models.fp32, batch_size=64)
    faces = np.random.default_rng(0).integers(0, 256, (20_000, 48, 48), dtype=np.uint8)  # 46 MB of uint8
    expected = np.concatenate([clf.predict_proba(faces[i : i + 64]) for i in range(0, 256, 64)])
    tracemalloc.start()
    probs = clf.predict_proba(faces)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert probs.shape == (20_000, 7)
    np.testing.assert_allclose(probs[:256], expected, atol=1e-6)
    # a whole-input float32 copy alone would be 184 MB; per batch it is 0.6 MB
    assert peak < 24 * 1024 * 1024, peak
    mixed = clf.predict_proba([faces[:3], faces[3], faces[4:70]])
    np.testing.assert_allclose(mixed, probs[:70], atol=1e-6)


def test_masked_arrays_and_matrices_are_read_as_plain_arrays(tiny_models):
    clf = Classifier(tiny_models.fp32)
    face = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    want = clf.predict_proba(face)
    np.testing.assert_allclose(clf.predict_proba(np.ma.masked_array(face, mask=False)), want, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(np.asmatrix(face)), want, atol=1e-6)
    with pytest.raises(InvalidInputError, match="masked pixels.*filled"):
        clf.predict_proba(np.ma.masked_array(face, mask=face > 250))


def test_analyze_many_on_error_keeps_the_other_photos(tiny_models, samples_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    photos = [samples_dir / "two_faces.jpg", bad, samples_dir / "astronaut.jpg"]
    clf = Classifier(tiny_models.fp32)
    with pytest.raises(InvalidInputError, match="bad.jpg"):
        clf.analyze_many(photos)
    skipped = clf.analyze_many(photos, on_error="skip", workers=2)
    assert [len(r) for r in skipped] == [2, 0, 1]
    returned = clf.analyze_many(photos, on_error="return")
    assert isinstance(returned[1], InvalidInputError) and "bad.jpg" in str(returned[1])
    assert [f.box for f in returned[0]] == [f.box for f in clf.analyze(photos[0])]
    with pytest.raises(InvalidInputError, match="on_error"):
        clf.analyze_many(photos, on_error="ignore")


def test_pil_images_are_read_as_rgb_and_photos_given_as_faces_warn(tiny_models, samples_dir, caplog):
    pil = pytest.importorskip("PIL.Image")
    clf = Classifier(tiny_models.fp32)
    bgr = cv2.imread(str(samples_dir / "astronaut.jpg"))
    image = pil.open(samples_dir / "astronaut.jpg")
    assert [f.box for f in clf.analyze(image)] == [f.box for f in clf.analyze(bgr)]
    np.testing.assert_allclose(clf.predict_proba(image), clf.predict_proba(bgr), atol=1e-6)
    with caplog.at_level("WARNING", logger="fer_sdk"):
        clf.predict_proba(bgr)  # a 512x512 photo passed as one face
    assert any("use analyze()" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fer_sdk"):
        clf.predict_proba(np.zeros((48, 48), np.uint8))
        clf.analyze(cv2.resize(bgr, None, fx=6, fy=6))  # its own large crops are no reason to warn
    assert not caplog.records


def test_batchwise_conversion_keeps_whole_input_checks_and_caller_indices(tiny_models):
    clf = Classifier(tiny_models.fp32, batch_size=32)
    faces = [np.zeros((48, 48), np.uint8)] * 40
    faces[34] = np.zeros((48, 48), np.bool_)
    with pytest.raises(InvalidInputError, match=r"faces\[34\]"):
        clf.predict_proba(faces)
    with pytest.raises(InvalidInputError, match=r"\(40, 48, 48, 2\)"):
        clf.predict_proba(np.zeros((40, 48, 48, 2), np.uint8))
    sixteen = np.full((40, 48, 48), 30000, np.uint16)
    sixteen[:32] = 200  # 8-bit-looking values in the first batch only: a 16-bit array as a whole
    assert clf.predict_proba(sixteen).shape == (40, 7)
    with pytest.raises(InvalidInputError):
        clf.predict_proba(np.zeros((0, 48, 48, 2), np.uint8))


def test_channels_rgb_reads_color_arrays_as_rgb(tiny_models, samples_dir):
    bgr = cv2.imread(str(samples_dir / "two_faces.jpg"))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    as_bgr, as_rgb = Classifier(tiny_models.fp32), Classifier(tiny_models.fp32, channels="rgb")
    want = [list(f.emotions.values()) for f in as_bgr.analyze(bgr)]
    np.testing.assert_allclose([list(f.emotions.values()) for f in as_rgb.analyze(rgb)], want, atol=1e-6)
    assert [len(r) for r in as_rgb.analyze_many([rgb, rgb])] == [2, 2]
    np.testing.assert_allclose(as_rgb.predict_proba(rgb), as_bgr.predict_proba(bgr), atol=1e-6)
    np.testing.assert_allclose(as_rgb.predict_proba([rgb]), as_bgr.predict_proba([bgr]), atol=1e-6)
    np.testing.assert_allclose(as_rgb.predict_proba(rgb[None]), as_bgr.predict_proba(bgr[None]), atol=1e-6)
    # the mistake channels= prevents: RGB read as BGR gives other probabilities
    assert not np.allclose(as_bgr.predict_proba(rgb), as_bgr.predict_proba(bgr), atol=1e-4)
    with pytest.raises(InvalidInputError, match="channels="):
        Classifier(tiny_models.fp32, channels="grb")

"""LiteRT (TFLite): export with the metadata inside, read it without TensorFlow, run it through the Classifier."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV, read_fer_rows

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def tflite_pair(tiny_models, tmp_path_factory):
    """The tiny test model's Keras network (rebuilt from its fp32 ONNX) as float32 and INT8 .tflite files."""
    pytest.importorskip("tensorflow")
    if not FER_CSV.is_file():
        pytest.skip("needs ../shared/data/fer2013")
    from fer_sdk.export.litert import export_tflite
    from fer_sdk.export.recover import recover_network

    from fer_sdk import Classifier

    faces, _ = read_fer_rows(1200)
    net, _ = recover_network(tiny_models.fp32, faces[:600])
    reference = Classifier(tiny_models.fp32)
    out = tmp_path_factory.mktemp("litert")
    reports = {}
    for int8 in (False, True):
        path = out / ("tiny-int8.tflite" if int8 else "tiny.tflite")
        reports[int8] = export_tflite(
            net,
            path,
            metadata=reference.model_metadata,
            int8=int8,
            calibration_faces=faces[:500],
            parity_faces=faces[600:],
            reference=reference,
            log=lambda *_: None,
        )
    return out / "tiny.tflite", out / "tiny-int8.tflite", reports, reference, faces[600:]


@pytest.mark.train
def test_float_and_int8_files_match_their_onnx_twin(tflite_pair):
    from fer_sdk import Classifier

    fp32, int8, reports, reference, faces = tflite_pair
    want = reference.predict_proba(faces)
    got32 = Classifier(fp32).predict_proba(faces)
    np.testing.assert_allclose(got32, want, atol=1e-4)  # the same network, float32 both sides
    assert reports[False]["parity"]["argmax_agreement"] == 1.0
    got8 = Classifier(int8).predict_proba(faces)
    np.testing.assert_allclose(got8.sum(1), 1.0, atol=1e-5)  # float softmax over the int8 logits
    agreement = float((got8.argmax(1) == want.argmax(1)).mean())
    assert agreement == pytest.approx(reports[True]["parity"]["argmax_agreement"]) and agreement > 0.9
    assert Classifier(int8).providers == ["LiteRT (XNNPACK)"]


@pytest.mark.train
def test_the_float_head_recipe_keeps_the_last_dense_layer_in_float(tflite_pair, tiny_models):
    """INT8 with a float head: uint8 in, float32 logits out, the recipe named in the metadata, parity kept."""
    from ai_edge_litert.interpreter import Interpreter
    from fer_sdk.export.litert import export_tflite
    from fer_sdk.export.recover import recover_network

    from fer_sdk import Classifier

    _, int8, _, reference, faces = tflite_pair
    path = int8.with_name("tiny-int8-float-head.tflite")
    net, _ = recover_network(tiny_models.fp32, faces[:300])
    report = export_tflite(
        net,
        path,
        metadata=reference.model_metadata,
        int8=True,
        float_head=True,
        calibration_faces=faces[:300],
        parity_faces=faces,
        reference=reference,
        log=lambda *_: None,
    )
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    clf = Classifier(path)
    assert clf.model_metadata.quantization["format"] == "tflite-int8-float-head"
    assert clf.model_metadata.output.kind == "logits"
    p = clf.predict_proba(faces)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    want = reference.predict_proba(faces).argmax(1)
    assert float((p.argmax(1) == want).mean()) == pytest.approx(report["parity"]["argmax_agreement"])
    assert report["parity"]["argmax_agreement"] > 0.9


@pytest.mark.train
def test_metadata_is_inside_the_file_and_read_without_tensorflow(tflite_pair):
    fp32, int8, *_ = tflite_pair
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # any TensorFlow import fails\n"
        "from fer_sdk import Classifier\n"
        "from fer_sdk.litert import read_tflite_metadata\n"
        "from fer_sdk.metadata import ModelMetadata\n"
        "for path in sys.argv[1:]:\n"
        "    meta = ModelMetadata.from_json(read_tflite_metadata(open(path, 'rb').read()))\n"
        "    c = Classifier(path)\n"
        "    print(meta.precision, meta.output.kind, meta.input.name, meta.labels[0], c.model_metadata.precision)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(fp32), str(int8)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["fp32 softmax faces angry fp32", "int8 logits faces angry int8"]
    assert "XNNPACK" not in result.stderr, result.stderr  # LiteRT's start-up INFO line is kept off stderr


@pytest.mark.train
def test_damaged_files_are_model_errors(tflite_pair, tmp_path):
    from fer_sdk import Classifier
    from fer_sdk.errors import ModelError

    fp32, *_ = tflite_pair
    data = fp32.read_bytes()
    cases = {"not-tflite.tflite": b"\x00" * 64, "cut.tflite": data[: len(data) // 3], "empty.tflite": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelError):
            Classifier(tmp_path / name)
    with pytest.raises(Exception, match="LiteRT"):
        Classifier(fp32, providers=["cuda"])
    with pytest.raises(Exception, match="backend="):
        Classifier(fp32, backend="tensorrt")


LITERT_SPECS = [s for s in __import__("fer_sdk.registry", fromlist=["x"]).list_models() if s.backend == "litert"]


@pytest.mark.skipif(not LITERT_SPECS, reason="no bundled LiteRT models")
@pytest.mark.skipif(not FER_CSV.is_file(), reason="needs ../shared/data/fer2013")
@pytest.mark.parametrize("spec", LITERT_SPECS, ids=lambda s: s.name)
def test_bundled_litert_model_keeps_its_twins_numbers(spec):
    """On all of PublicTest: argmax agreement with the fp32 ONNX model >= 98.5 %, accuracy within 0.3 points of
    the ONNX INT8 twin, and the manifest's accuracy reproduces; loaded by name, by backend= and by path."""
    from fer_sdk import Classifier
    from fer_sdk.data import load_split

    x, y = load_split(FER_CSV, "PublicTest")
    onnx_twin = spec.name.removesuffix("-litert")
    lite = Classifier(spec.name)
    assert lite.providers == ["LiteRT (XNNPACK)"] and lite.model_metadata.output.kind == "logits"
    p = lite.predict_proba(x)
    fp32 = Classifier(onnx_twin.removesuffix("-int8")).predict_proba(x)
    twin = Classifier(onnx_twin).predict_proba(x)
    assert (p.argmax(1) == fp32.argmax(1)).mean() >= 0.985
    accuracy = (p.argmax(1) == y).mean()
    assert 100 * ((twin.argmax(1) == y).mean() - accuracy) <= 0.3
    assert accuracy == pytest.approx(spec.metrics["PublicTest"]["accuracy"], abs=1e-9)
    by_backend = Classifier(onnx_twin, backend="litert")
    assert by_backend.model_name == spec.name
    np.testing.assert_array_equal(by_backend.predict_proba(x[:64]), p[:64])
    np.testing.assert_array_equal(Classifier(spec.path).predict_proba(x[:64]), p[:64])


@pytest.mark.skipif(not LITERT_SPECS, reason="no bundled LiteRT models")
@pytest.mark.parametrize("spec", LITERT_SPECS, ids=lambda s: s.name)
def test_bundled_litert_model_analyzes_photos_like_its_onnx_twin(samples_dir, spec):
    from fer_sdk import Classifier, load_image

    photo = load_image(samples_dir / "two_faces.jpg")
    lite, twin = Classifier(spec.name).analyze(photo), Classifier(spec.name.removesuffix("-litert")).analyze(photo)
    assert [f.box for f in lite] == [f.box for f in twin] and [f.emotion for f in lite] == [f.emotion for f in twin]


def _crafted_metadata_table(entries: int, name_bytes: int) -> bytes:
    """A hand-built TFLite flatbuffer whose ``entries`` metadata entries all point at one ``name_bytes`` name
    (not "fer_sdk"): the worst case for a reader that decodes every name."""
    import struct

    K, L = entries, name_bytes
    # header: root offset + "TFL3"
    buf = bytearray(8)
    # vtable for model: size, tablesize, 7 fields (0..6)
    vt_model = len(buf)
    nfields = 7
    vt = struct.pack("<HH", 4 + 2 * nfields, 12) + struct.pack("<" + "H" * nfields, 0, 0, 0, 0, 4, 0, 8)
    buf += vt
    while len(buf) % 4:
        buf += b"\0"
    model = len(buf)
    buf += struct.pack("<i", model - vt_model)  # soffset: vtable = table - soffset
    buf += b"\0" * 8  # field 4 at +4, field 6 at +8 (filled later)
    # buffers vector: empty
    bufvec = len(buf)
    buf += struct.pack("<I", 0)
    # metadata vector
    mvec = len(buf)
    buf += struct.pack("<I", K)
    elems = len(buf)
    buf += b"\0" * (4 * K)
    # entry vtable and table
    vt_e = len(buf)
    buf += struct.pack("<HHHH", 8, 8, 4, 0)
    entry = len(buf)
    buf += struct.pack("<i", entry - vt_e)
    buf += b"\0" * 4
    s = len(buf)
    buf += struct.pack("<I", L) + b"x" * L
    struct.pack_into("<I", buf, entry + 4, s - (entry + 4))
    for i in range(K):
        p = elems + 4 * i
        struct.pack_into("<I", buf, p, entry - p)
    struct.pack_into("<I", buf, model + 4, bufvec - (model + 4))
    struct.pack_into("<I", buf, model + 8, mvec - (model + 8))
    struct.pack_into("<I", buf, 0, model)
    buf[4:8] = b"TFL3"
    return bytes(buf)


def test_a_crafted_metadata_table_is_read_in_bounded_work(monkeypatch):
    """4,000 entries naming one 400 kB string: the reader compares lengths (never decodes a name) and looks at
    MAX_METADATA_ENTRIES entries at most (it used to decode every name: work grew with the file's square)."""
    from fer_sdk import litert

    data = _crafted_metadata_table(4000, 400_000)
    visited = []
    real_target = litert._Reader.target
    monkeypatch.setattr(litert._Reader, "string", lambda *a: pytest.fail("a metadata name was decoded"))
    monkeypatch.setattr(litert._Reader, "target", lambda self, pos: visited.append(pos) or real_target(self, pos))
    assert litert.read_tflite_metadata(data) is None  # no fer_sdk entry among the entries looked at
    assert len(visited) <= 2 * litert.MAX_METADATA_ENTRIES + 5  # an entry and its name per entry looked at


def test_backend_choices_that_cannot_work_are_refused():
    from fer_sdk import Classifier
    from fer_sdk.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="no bundled LiteRT twin"):
        Classifier("shallow", backend="litert")
    with pytest.raises(InvalidInputError, match="LiteRT cannot run"):
        Classifier(Classifier("deep-int8").model_path, backend="litert")


@pytest.mark.train
@pytest.mark.skipif(not FER_CSV.is_file(), reason="needs ../shared/data/fer2013")
def test_ship_litert_gates_then_replaces_and_records_its_accuracy(tiny_models, models_dir, tmp_path, monkeypatch):
    """A failed gate leaves the previous .tflite, the manifest and no staged file; a passing one writes the file
    (its metadata holding its own accuracy), its card and a manifest entry with backend litert."""
    import json
    import shutil

    from conftest import manifest_entry, write_manifest, write_small_fer_csv
    from fer_sdk.export import ship

    from fer_sdk.errors import ModelError
    from fer_sdk.litert import read_tflite_metadata
    from fer_sdk.metadata import ModelMetadata

    data = write_small_fer_csv(tmp_path / "small.csv", 600, 300)
    shutil.copy(tiny_models.fp32, models_dir / "shallow.onnx")
    shutil.copy(tiny_models.fp32, models_dir / "shallow-int8.onnx")  # stands in for the ONNX INT8 twin
    (models_dir / "cards").mkdir()
    bundled_card = Path(__file__).resolve().parents[1] / "fer_sdk" / "models" / "cards" / "shallow.json"
    training = json.loads(bundled_card.read_text())["training"]  # a real card's training record
    (models_dir / "cards" / "tiny.json").write_text(
        json.dumps({"architecture": "shallow", "parameters": 1234, "training": training})
    )
    fp32 = (models_dir / "shallow.onnx").read_bytes()
    write_manifest(
        models_dir,
        {
            "shallow": manifest_entry("shallow.onnx", fp32),
            "shallow-int8": manifest_entry("shallow-int8.onnx", fp32, precision="int8"),
        },
    )
    (models_dir / "shallow-int8.tflite").write_bytes(b"previous release")
    before = (models_dir / "manifest.json").read_text()

    monkeypatch.setattr(ship, "LITERT_MIN_AGREEMENT", 1.01)  # no file can pass
    with pytest.raises(ModelError, match="not shipped") as refused:  # both recipes were tried
        ship.ship_litert(["shallow"], data, models_dir=models_dir, log=lambda *_: None)
    assert "full integer: agreement" in str(refused.value) and "int8 with a float head: agreement" in str(refused.value)
    assert (models_dir / "shallow-int8.tflite").read_bytes() == b"previous release"
    assert (models_dir / "manifest.json").read_text() == before
    assert not list(models_dir.glob(".*staged*"))

    monkeypatch.setattr(ship, "LITERT_MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(ship, "LITERT_MAX_ACCURACY_DROP", 100.0)
    manifest = ship.ship_litert(["shallow"], data, models_dir=models_dir, log=lambda *_: None)
    entry = manifest["models"]["shallow-int8-litert"]
    assert entry["backend"] == "litert" and entry["file"] == "shallow-int8.tflite"
    meta = ModelMetadata.from_json(read_tflite_metadata((models_dir / "shallow-int8.tflite").read_bytes()))
    assert meta.metrics["PublicTest"]["accuracy"] == pytest.approx(entry["metrics"]["PublicTest"]["accuracy"])
    card = json.loads((models_dir / "cards" / "shallow-int8-litert.json").read_text())
    assert card["litert"]["command"].startswith("fer-sdk models ship --into fer_sdk/models --litert shallow")
    assert card["litert"]["recipe"] == "full integer" and card["litert"]["refused_recipes"] == []
    assert not list(models_dir.glob(".*staged*"))

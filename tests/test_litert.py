"""LiteRT (TFLite): export with the metadata inside, read it without TensorFlow, run it through the Classifier."""

from __future__ import annotations

import subprocess
import sys

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
def test_bundled_litert_model_analyzes_photos_like_its_onnx_twin(samples_dir):
    from fer_sdk import Classifier, load_image

    spec = LITERT_SPECS[0]
    photo = load_image(samples_dir / "two_faces.jpg")
    lite, twin = Classifier(spec.name).analyze(photo), Classifier(spec.name.removesuffix("-litert")).analyze(photo)
    assert [f.box for f in lite] == [f.box for f in twin] and [f.emotion for f in lite] == [f.emotion for f in twin]

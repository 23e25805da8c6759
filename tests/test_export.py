"""Export pipeline on a real (briefly trained) shallow network: Keras -> ONNX -> static INT8.

One module-scoped run trains the real ``shallow`` architecture for one epoch on 600 FER2013 faces with
``export.train.train`` (so the run folder is the real one), exports it once and quantizes it once; the
tests then check the files, the metadata, parity and the failure paths. Needs the train extra and the
FER2013 CSV (``FER_SDK_FER2013`` or the shared data folder beside the checkout); skipped cleanly otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV

pytestmark = pytest.mark.train

CSV = FER_CSV
N_TRAIN, N_VAL, N_PARITY, N_CAL, N_EVAL = 600, 200, 300, 600, 400


def read_fer_rows(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of a FER2013 CSV as uint8 (n, 48, 48) faces and int labels."""
    faces, labels = [], []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        next(fh)  # header
        for line, _ in zip(fh, range(n)):
            emotion, pixels, _usage = line.rstrip("\n").split(",")
            faces.append(np.array(pixels.split(), np.uint8).reshape(48, 48))
            labels.append(int(emotion))
    return np.stack(faces), np.array(labels, np.int64)


@pytest.fixture(scope="module")
def data():
    if not CSV.is_file():
        pytest.skip(f"FER2013 CSV not found at {CSV} (set FER_SDK_FER2013)")
    x, y = read_fer_rows(CSV, N_TRAIN + N_VAL + N_PARITY + N_CAL + N_EVAL)
    parts, start = {}, 0
    for name, n in (
        ("train", N_TRAIN),
        ("val", N_VAL),
        ("parity", N_PARITY),
        ("cal", N_CAL),
        ("eval", N_EVAL),
    ):
        parts[name] = (x[start : start + n], y[start : start + n])
        start += n
    return parts


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A real training run folder (best.keras, metrics.json, config.json) of the shallow network."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from fer_sdk.export.train import Splits, TrainConfig, train

    out = tmp_path_factory.mktemp("run_shallow")
    # Small SGD batches: 75 steps move batch-norm statistics enough that predictions spread over several
    # classes (bigger batches collapse to one class after one epoch, which would make agreement trivial).
    cfg = TrainConfig(arch="shallow", epochs=1, batch_size=8, warmup_epochs=0, augment=False, command="pytest")
    train(cfg, Splits(*data["train"], *data["val"]), out, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def exported(run, data, tmp_path_factory):
    from fer_sdk.export.convert import export_onnx

    lines: list[str] = []
    out = tmp_path_factory.mktemp("onnx") / "shallow.onnx"
    report = export_onnx(run, out, parity_faces=data["parity"][0], log=lines.append)
    return {"path": out, "report": report, "log": lines}


@pytest.fixture(scope="module")
def quantized(exported, data, tmp_path_factory):
    pytest.importorskip("onnxruntime.quantization")
    from fer_sdk.export.quantize import quantize_int8

    lines: list[str] = []
    out = tmp_path_factory.mktemp("int8") / "shallow-int8.onnx"
    report = quantize_int8(
        exported["path"],
        out,
        calibration_faces=data["cal"][0],
        eval_faces=data["eval"][0],
        eval_labels=data["eval"][1],
        log=lines.append,
    )
    return {"path": out, "report": report, "log": lines}


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _x(faces: np.ndarray) -> np.ndarray:
    return (faces.astype(np.float32) / 255.0)[..., None]


def _keras_model(run):
    import keras

    return keras.models.load_model(run / "best.keras", compile=False)


# ------------------------------------------------------------------------------------------------ fp32


def test_metadata_matches_contract(exported, run):
    import onnx
    from fer_sdk.export.convert import onnx_metadata

    from fer_sdk.constants import EMOTIONS

    model = onnx.load(str(exported["path"]))
    meta = onnx_metadata(model).to_dict()
    run_metrics = json.loads((run / "metrics.json").read_text())
    public = run_metrics["splits"]["PublicTest"]
    assert meta["format"] == 1
    assert meta["labels"] == list(EMOTIONS)
    assert meta["input"] == {
        "name": "faces", "height": 48, "width": 48, "channels": 1, "layout": "NHWC", "dtype": "float32",
        "color": "gray", "scale": 1 / 255, "offset": 0.0, "resize": "area",
    }  # fmt: skip
    assert meta["output"] == {"name": "probabilities", "kind": "softmax"}
    assert meta["architecture"] == "shallow" and meta["precision"] == "fp32"
    assert meta["parameters"] == run_metrics["parameters"] == 4_741_895
    assert meta["source_sha256"] == hashlib.sha256((run / "best.keras").read_bytes()).hexdigest()
    assert meta["metrics"]["PublicTest"]["accuracy"] == public["accuracy"]
    assert meta["metrics"]["PublicTest"]["macro_f1"] == public["macro_f1"]
    assert set(meta["metrics"]["PublicTest"]["per_class_recall"]) == set(EMOTIONS)
    assert {"fer_sdk", "tf2onnx", "tensorflow", "keras", "onnxruntime"} <= set(meta["producer"])
    assert all(meta["producer"].values())
    assert model.producer_name == "fer-sdk" and "shallow" in model.doc_string
    onnx.checker.check_model(model, full_check=True)
    assert exported["report"]["sha256"] == hashlib.sha256(exported["path"].read_bytes()).hexdigest()


def test_graph_io_names_and_dynamic_batch(exported, run, data):
    session = _session(exported["path"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("faces", "tensor(float)", ["N", 48, 48, 1])
    assert (out.name, out.type, out.shape) == ("probabilities", "tensor(float)", ["N", 7])
    keras_model = _keras_model(run)
    for n in (1, 33):
        x = _x(data["eval"][0][:n])
        got = session.run(["probabilities"], {"faces": x})[0]
        expected = np.asarray(keras_model(x, training=False))
        assert got.shape == (n, 7) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_parity_is_checked_and_logged(exported):
    parity = exported["report"]["parity"]
    assert parity["faces"] == N_PARITY
    assert parity["max_abs_diff"] <= 1e-4 and parity["argmax_agreement"] == 1.0
    assert any(line.startswith(f"parity on {N_PARITY} faces: max |onnx - keras|") for line in exported["log"])


def test_broken_parity_writes_nothing_and_keeps_previous_file(run, data, tmp_path, monkeypatch):
    from fer_sdk.export import convert

    from fer_sdk.errors import ModelError

    real = convert.ort_predict
    monkeypatch.setattr(convert, "ort_predict", lambda session, x: real(session, x)[:, ::-1].copy())
    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"previous export")
    with pytest.raises(ModelError, match="parity failed"):
        convert.export_onnx(run, previous, parity_faces=data["parity"][0], log=lambda *_: None)
    assert previous.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_in_memory_model_export_to_new_path_is_atomic(run, data, tmp_path, monkeypatch):
    """An in-memory model hashes its weights; a failure on a fresh path leaves no file at all."""
    from fer_sdk.export import convert

    from fer_sdk.errors import ModelError

    model = _keras_model(run)
    report = convert.export_onnx(model, tmp_path / "mem.onnx", parity_faces=data["parity"][0], log=lambda *_: None)
    meta = report["metadata"]
    assert meta["source_sha256"] == convert.weights_sha256(model) == convert.weights_sha256(_keras_model(run))
    assert meta["metrics"] == {} and meta["architecture"] == "shallow"

    monkeypatch.setattr(convert, "ort_predict", lambda session, x: np.full((len(x), 7), 1 / 7, np.float32))
    with pytest.raises(ModelError, match="not written"):
        convert.export_onnx(model, tmp_path / "fresh.onnx", parity_faces=data["parity"][0], log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem.onnx"]


def test_too_few_parity_faces(run, data, tmp_path):
    from fer_sdk.export.convert import export_onnx

    from fer_sdk.errors import FerSdkError

    with pytest.raises(FerSdkError, match=r"255 faces.*at least 256"):
        export_onnx(run, tmp_path / "m.onnx", parity_faces=data["parity"][0][:255])
    with pytest.raises(FerSdkError, match="uint8"):
        export_onnx(run, tmp_path / "m.onnx", parity_faces=data["parity"][0].astype(np.float32))
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------ int8


def test_int8_graph_is_qdq_with_float_head(quantized):
    import onnx

    model = onnx.load(str(quantized["path"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    producer = {out: n for n in model.graph.node for out in n.output}
    # Both convolutions and the 4.7M-weight fc1 MatMul read int8 weights through DequantizeLinear.
    initializers = {t.name: t for t in model.graph.initializer}
    int8_weights = [
        n for n in model.graph.node
        if n.op_type == "DequantizeLinear" and initializers.get(n.input[0]) is not None
        and initializers[n.input[0]].data_type == onnx.TensorProto.INT8
    ]  # fmt: skip
    assert len(int8_weights) >= 3
    assert sum(initializers[n.input[0]].dims[0] == 9216 for n in int8_weights) == 1  # fc1: 9216 x 512
    # The head stays float: Softmax, and the last MatMul/Add, read no dequantized tensors.
    softmax = producer["probabilities"]
    assert softmax.op_type == "Softmax"
    head = [softmax, producer[softmax.input[0]]]
    head += [producer[t] for t in head[1].input if t in producer and producer[t].op_type == "MatMul"]
    # quant_pre_process fuses the last MatMul + Add into one Gemm
    assert [n.op_type for n in head] in (["Softmax", "Gemm"], ["Softmax", "Add", "MatMul"])
    # Logits and probabilities are never requantized; the head's weights and bias are float initializers
    # (its activation input is fc1's ReLU output, dequantized from uint8).
    for node in head[:-1]:
        assert producer[node.input[0]].op_type != "DequantizeLinear", node.name
    for tensor in head[-1].input[1:]:
        assert initializers[tensor].data_type == onnx.TensorProto.FLOAT, tensor
    if head[1].op_type == "Add":
        assert all(initializers[t].data_type == onnx.TensorProto.FLOAT for t in head[1].input if t in initializers)
    assert not [
        n
        for n in model.graph.node
        if set(n.input) & {"probabilities", softmax.input[0]} - {""} and n.op_type == "QuantizeLinear"
    ]
    excluded = quantized["report"]["quantization"]["excluded_nodes"]
    assert sorted(excluded) == sorted(n.name for n in head)


def test_int8_probabilities_and_agreement(quantized, exported, data):
    x = _x(data["eval"][0])
    p32 = _session(exported["path"]).run(None, {"faces": x})[0]
    p8 = _session(quantized["path"]).run(None, {"faces": x})[0]
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
    assert len(np.unique(p8)) > 100  # not 1/255 steps
    assert len(np.unique(p32.argmax(1))) >= 2  # agreement on a one-class model would prove nothing
    agreement = float((p32.argmax(1) == p8.argmax(1)).mean())
    assert agreement >= 0.90
    assert float(np.abs(p8 - p32).mean()) <= 0.01
    ev = quantized["report"]["evaluation"]
    assert ev["faces"] == N_EVAL and ev["argmax_agreement"] == pytest.approx(agreement)
    assert abs(ev["accuracy_change_points"]) <= 5
    assert ev["int8_size_bytes"] < ev["fp32_size_bytes"] / 3
    assert any(line.startswith(f"accuracy on {N_EVAL} faces") for line in quantized["log"])


def test_int8_metadata(quantized, exported):
    from fer_sdk.export.convert import onnx_metadata

    meta8, meta32 = onnx_metadata(quantized["path"]).to_dict(), onnx_metadata(exported["path"]).to_dict()
    q = meta8.pop("quantization")
    assert meta8.pop("precision") == "int8" and meta32.pop("precision") == "fp32"
    # each file records its own accuracy: the INT8 one as measured on the evaluation faces (not the fp32 model's)
    evaluation = quantized["report"]["evaluation"]
    assert meta8.pop("metrics") == {"PublicTest": {"accuracy": evaluation["int8_accuracy"], "n": evaluation["faces"]}}
    meta32.pop("metrics")  # the fp32 file keeps its Keras evaluation
    assert meta8 == meta32
    assert q["format"] == "QDQ" and q["per_channel"] is True
    assert (q["activation_type"], q["weight_type"], q["calibration_method"]) == ("uint8", "int8", "minmax")
    assert q["calibration_faces"] == N_CAL and len(q["excluded_nodes"]) in (2, 3)
    assert q["quantize_linear_nodes"] > 0 and q["dequantize_linear_nodes"] > 0


def test_too_few_calibration_faces(exported, data, tmp_path):
    from fer_sdk.export.quantize import quantize_int8

    from fer_sdk.errors import FerSdkError

    with pytest.raises(FerSdkError, match=r"499 faces.*at least 500"):
        quantize_int8(exported["path"], tmp_path / "q.onnx", calibration_faces=data["cal"][0][:499])
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_failure_keeps_previous_file(exported, data, tmp_path, monkeypatch):
    from fer_sdk.export import quantize

    from fer_sdk.errors import ModelError

    real = quantize.ort_predict
    monkeypatch.setattr(quantize, "ort_predict", lambda session, x: real(session, x) * 0.99)
    previous = tmp_path / "q.onnx"
    previous.write_bytes(b"previous int8")
    with pytest.raises(ModelError, match="not written"):
        quantize.quantize_int8(exported["path"], previous, calibration_faces=data["cal"][0], log=lambda *_: None)
    assert previous.read_bytes() == b"previous int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]


def test_bad_sources_raise_model_error(run, data, tmp_path):
    from fer_sdk.export.convert import export_onnx

    from fer_sdk.errors import ModelError

    faces = data["parity"][0]
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "model.h5").write_bytes(b"not keras")
    for source, message in (
        (tmp_path / "missing.keras", "no such model"),
        (tmp_path / "empty_run", "no best.keras"),
        (tmp_path / "model.h5", "not a .keras file"),
    ):
        with pytest.raises(ModelError, match=message):
            export_onnx(source, tmp_path / "out.onnx", parity_faces=faces, log=lambda *_: None)
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------------------------- recover


def test_recover_rebuilds_the_keras_network_from_the_onnx_export(exported, run, data, quantized, tmp_path):
    from fer_sdk.export.recover import recover_network

    from fer_sdk.errors import ModelError

    faces = data["cal"][0]
    net, diff = recover_network(exported["path"], faces)
    assert diff < 1e-4
    original = _keras_model(run)
    for name in ("block1_conv", "block2_conv", "fc1_dense", "probabilities"):
        for a, b in zip(net.get_layer(name).get_weights(), original.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # same function as the trained network, on faces the statistics were not measured on
    x = _x(data["eval"][0])
    np.testing.assert_allclose(net.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-4)
    with pytest.raises(ModelError, match="fp32"):
        recover_network(quantized["path"], faces)
    with pytest.raises(ModelError, match="differs"):
        recover_network(exported["path"], faces, max_diff=0.0)
    out = tmp_path / "recovered.keras"
    csv = tmp_path / "train.csv"
    rows = ["emotion,pixels,Usage"] + [
        f"{y},{' '.join(map(str, f.ravel()))},Training" for f, y in zip(faces, data["cal"][1])
    ]
    csv.write_text("\n".join(rows) + "\n")
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    result = CliRunner().invoke(
        app, ["models", "recover", str(exported["path"]), "--data", str(csv), "--out", str(out), "--faces", "300"]
    )
    assert result.exit_code == 0 and "wrote" in result.stderr, result.output
    import keras

    again = keras.models.load_model(out, compile=False)
    np.testing.assert_allclose(again.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-4)
    # a missing file or an unknown bundled name is one line, not a FileNotFoundError traceback
    for missing in (str(tmp_path / "gone.onnx"), "no-such-model"):  # the module entry point is the same command
        proc = subprocess.run(
            [sys.executable, "-m", "fer_sdk.export.recover", missing, "--data", str(csv), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 4 and "fer-sdk: error:" in proc.stderr, proc.stderr[-2000:]
    result = CliRunner().invoke(app, ["models", "recover", "no-such-model", "--data", str(csv), "--out", str(out)])
    assert result.exit_code == 4 and re.search(r"fer-sdk: error: .*unknown model", result.stderr), result.output


def test_int8_export_reads_its_calibration_data_before_converting(run, data, tmp_path):
    from fer_sdk.export.pipeline import export_model

    from fer_sdk.errors import DatasetError, InvalidInputError

    faces, labels = data["eval"]
    public_only = tmp_path / "public_only.csv"  # no Training rows: nothing to calibrate on
    public_only.write_text(
        "emotion,pixels,Usage\n"
        + "".join(f"{label},{' '.join(map(str, face.ravel()))},PublicTest\n" for face, label in zip(faces, labels))
    )
    with pytest.raises(DatasetError, match="Training"):
        export_model(run, tmp_path / "m.onnx", data=public_only, int8=True, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public_only.csv"]  # no fp32 file left behind

    (tmp_path / "taken").mkdir()
    with pytest.raises(InvalidInputError, match=r"--out .*taken is a folder"):
        export_model(run, tmp_path / "taken", data=public_only, log=lambda *_: None)
    (tmp_path / "m2-int8.onnx").mkdir()  # where the INT8 twin of m2.onnx would go
    with pytest.raises(InvalidInputError, match=r"INT8 twin.*m2-int8.onnx is a folder"):
        export_model(run, tmp_path / "m2.onnx", data=public_only, int8=True, log=lambda *_: None)
    assert not (tmp_path / "m2.onnx").exists()


def test_a_bfloat16_network_exports_as_float32(run, data, tmp_path):
    """A network whose layers compute in bfloat16 (mixed-precision training) exports as a float32 graph."""
    import onnx
    from fer_sdk.export import convert
    from fer_sdk.export.architectures import with_dtype_policy

    net = _keras_model(run)
    bf16 = with_dtype_policy(net, "mixed_bfloat16")
    assert bf16.output.dtype == "bfloat16"
    report = convert.export_onnx(bf16, tmp_path / "bf16.onnx", parity_faces=data["parity"][0], log=lambda *_: None)
    graph = onnx.load(tmp_path / "bf16.onnx").graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert report["parity"]["max_abs_diff"] <= 1e-4
    plain = _session(tmp_path / "bf16.onnx").run(None, {graph.input[0].name: _x(data["parity"][0])})[0]
    np.testing.assert_allclose(plain, net.predict(_x(data["parity"][0]), verbose=0), atol=1e-4)


def test_export_format_tflite_writes_float32_and_int8_litert_files(run, tmp_path):
    """`fer-sdk export --format tflite --int8`: float32 (agreeing with Keras) and INT8 .tflite files with the
    metadata inside, the INT8 one from the same calibration faces as the ONNX INT8 model."""
    pytest.importorskip("ai_edge_litert")
    from conftest import write_small_fer_csv
    from typer.testing import CliRunner

    from fer_sdk import Classifier
    from fer_sdk.cli import app

    data = write_small_fer_csv(tmp_path / "small.csv", 600, 300)
    out = tmp_path / "shallow.tflite"
    args = ["export", str(run), "--out", str(out), "--data", str(data), "--format", "tflite", "--int8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(out), str(tmp_path / "shallow-int8.tflite")]
    fp32, int8 = Classifier(out), Classifier(tmp_path / "shallow-int8.tflite")
    assert fp32.model_metadata.precision == "fp32" and fp32.model_metadata.architecture == "shallow"
    assert int8.model_metadata.precision == "int8"
    assert int8.model_metadata.quantization["calibration_faces"] == 600  # all Training rows of the small file
    faces = read_fer_rows(CSV, 64)[0]
    assert fp32.predict_proba(faces).shape == int8.predict_proba(faces).shape == (64, 7)
    result = CliRunner().invoke(
        app, ["export", str(run), "--out", str(tmp_path / "x.onnx"), "--data", str(data), "--format", "tflite"]
    )
    assert result.exit_code == 2 and "a tflite export is written to a .tflite file" in result.stderr

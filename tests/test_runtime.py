"""ONNX Runtime layer: lazy imports, provider selection, session creation and fer-sdk metadata checks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnxruntime
import pytest

from fer_sdk import runtime
from fer_sdk.constants import EMOTIONS, INPUT_NAME, OUTPUT_NAME
from fer_sdk.errors import DependencyError, InvalidInputError, ModelError

CPU, CUDA, TRT = runtime.CPU, runtime.CUDA, runtime.TENSORRT


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ import hygiene


def test_import_fer_sdk_loads_no_ml_framework():
    proc = _run_python(
        """
        import sys
        import fer_sdk
        fer_sdk.EMOTIONS, fer_sdk.list_models(), fer_sdk.FerSdkError, fer_sdk.__version__
        heavy = [m for m in ("tensorflow", "keras", "onnxruntime", "torch", "jax") if m in sys.modules]
        assert not heavy, heavy
        print("ok", fer_sdk.__version__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")


def test_missing_onnxruntime_gives_the_pip_command():
    proc = _run_python(
        """
        import sys
        sys.modules["onnxruntime"] = None  # import onnxruntime -> ImportError
        import fer_sdk
        try:
            fer_sdk.Classifier("whatever.onnx")
        except fer_sdk.DependencyError as err:
            assert isinstance(err, ImportError)
            print(err)
        else:
            raise SystemExit("no DependencyError")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fer-sdk[cpu]"' in proc.stdout and "[gpu]" in proc.stdout


def test_import_onnxruntime_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyError, match=r"fer-sdk\[cpu\]"):
        runtime.import_onnxruntime()


# ------------------------------------------------------------------ providers


@pytest.fixture
def available(monkeypatch):
    """Set what onnxruntime.get_available_providers() reports."""

    def set_available(names):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(names))

    return set_available


def test_default_is_cpu(available):
    available([TRT, CUDA, CPU])
    assert runtime.resolve_providers(None) == [CPU]


def test_auto_picks_cuda_when_listed(available):
    available([TRT, CUDA, CPU])
    assert runtime.resolve_providers("auto") == [CUDA, CPU]  # TensorRT only when asked for
    available(["AzureExecutionProvider", CPU])
    assert runtime.resolve_providers("auto") == [CPU]


def test_explicit_providers_are_checked(available):
    available([TRT, CUDA, CPU])
    assert runtime.resolve_providers([TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert runtime.resolve_providers(["cuda", "cpu"]) == [CUDA, CPU]
    assert runtime.resolve_providers("cpu") == [CPU]
    assert runtime.resolve_providers([(CUDA, {"device_id": 0}), CPU]) == [(CUDA, {"device_id": 0}), CPU]
    assert runtime.resolve_providers((CUDA, {"device_id": 1})) == [(CUDA, {"device_id": 1})]
    available([CPU])
    with pytest.raises(InvalidInputError) as info:
        runtime.resolve_providers([CUDA, CPU])
    assert CUDA in str(info.value) and "available: CPUExecutionProvider" in str(info.value)
    assert "fer-sdk[gpu]" in str(info.value)
    with pytest.raises(InvalidInputError, match="NoSuchExecutionProvider"):
        runtime.resolve_providers(["NoSuchExecutionProvider"])


@pytest.mark.parametrize("bad", [[], [42], 3, [("CPUExecutionProvider", "options")]])
def test_malformed_providers(bad):
    with pytest.raises(InvalidInputError):
        runtime.resolve_providers(bad)


# ------------------------------------------------------------------ sessions


def test_create_session_runs_and_logs_provider(tiny_models, caplog):
    with caplog.at_level(logging.INFO, logger="fer_sdk"):
        session = runtime.create_session(tiny_models.fp32, threads=1)
    assert session.get_providers() == [CPU]
    info = [r for r in caplog.records if r.name == "fer_sdk" and r.levelno == logging.INFO]
    assert len(info) == 1 and CPU in info[0].getMessage() and str(tiny_models.fp32) in info[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (probs,) = session.run(None, {"faces": np.zeros((3, 48, 48, 1), np.float32)})
    assert probs.shape == (3, 7) and probs.dtype == np.float32


def test_run_batches_is_one_run_cut_into_ordered_float32_chunks(make_onnx, tmp_path):
    """runtime.run_batches (the export checks' and the BN recovery's batched run): chunks of batch_size rows in
    order, each fed as float32 C-contiguous; together the same as one run over all rows."""
    session = runtime.create_session(make_onnx(tmp_path / "linear.onnx"))
    faces = np.random.default_rng(0).integers(0, 256, (10, 48, 48, 1), dtype=np.uint8)
    (whole,) = session.run(None, {INPUT_NAME: faces.astype(np.float32)})
    fed = []

    class Recording:
        def get_inputs(self):
            return session.get_inputs()

        def run(self, outputs, feed):
            fed.append((outputs, feed[INPUT_NAME].dtype, feed[INPUT_NAME].flags.c_contiguous, len(feed[INPUT_NAME])))
            return session.run(outputs, feed)

    strided = faces[:, ::-1]  # not C-contiguous, and uint8
    chunks = list(runtime.run_batches(Recording(), strided, 4, outputs=[OUTPUT_NAME]))
    assert [rows for *_, rows in fed] == [4, 4, 2]
    assert all(outputs == [OUTPUT_NAME] and dtype == np.float32 and contiguous for outputs, dtype, contiguous, _ in fed)
    (reference,) = session.run(None, {INPUT_NAME: np.ascontiguousarray(strided, dtype=np.float32)})
    np.testing.assert_allclose(np.concatenate([c[0] for c in chunks]), reference, rtol=1e-6, atol=1e-7)
    everything = list(runtime.run_batches(session, faces, 256))  # outputs=None: every graph output, one chunk
    assert len(everything) == 1 and len(everything[0]) == 1
    np.testing.assert_allclose(everything[0][0], whole, rtol=1e-6, atol=1e-7)
    assert list(runtime.run_batches(session, faces[:0])) == []
    with pytest.raises(InvalidInputError, match="batch_size=0 must be a positive integer"):
        list(runtime.run_batches(session, faces, 0))


def test_session_from_bytes(tiny_models):
    session = runtime.create_session(tiny_models.fp32.read_bytes())
    assert runtime.read_metadata(session, "bytes").labels == EMOTIONS


def test_cuda_fallback_is_reported(tiny_models, available, caplog):
    """A build that lists CUDA but cannot run it (onnxruntime-gpu without a GPU) falls back to CPU: warn."""
    available([CUDA, CPU])
    with caplog.at_level(logging.INFO, logger="fer_sdk"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ORT's own UserWarning about the unavailable provider
        session = runtime.create_session(tiny_models.fp32, "auto")
    assert session.get_providers() == [CPU]
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fer_sdk"]
    assert len(warnings_logged) == 1 and CUDA in warnings_logged[0] and "fell back" in warnings_logged[0]
    # asked for by name, not with 'auto': an error instead of a silent CPU run
    with warnings.catch_warnings(), pytest.raises(DependencyError, match=r"CUDAExecutionProvider was requested.*auto"):
        warnings.simplefilter("ignore")
        runtime.create_session(tiny_models.fp32, "cuda")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True])
def test_bad_threads(tiny_models, bad):
    with pytest.raises(InvalidInputError, match="threads="):
        runtime.create_session(tiny_models.fp32, threads=bad)


def test_numpy_integer_options_are_accepted_like_ints(tiny_models):
    """batch_size, threads and max_pixels share one check: a NumPy integer is as good as an int."""
    from fer_sdk import Classifier

    clf = Classifier(tiny_models.fp32, batch_size=np.int64(8), threads=np.int32(1), max_pixels=np.int64(10**6))
    assert clf.predict_proba(np.zeros((2, 48, 48), np.uint8)).shape == (2, len(EMOTIONS))
    session = runtime.create_session(tiny_models.fp32, threads=np.int64(2))
    assert session.get_session_options().intra_op_num_threads == 2


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="nope.onnx"):
        runtime.create_session(tmp_path / "nope.onnx")


def test_garbage_and_truncated_files(tiny_models, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.onnx"
    data = tiny_models.fp32.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (garbage, truncated, empty):
        with pytest.raises(ModelError) as info:
            runtime.create_session(path)
        assert str(path) in str(info.value) and "re-export" in str(info.value)


# ------------------------------------------------------------------ metadata


def test_read_metadata_of_an_export(tiny_models):
    meta = runtime.read_metadata(runtime.create_session(tiny_models.fp32))
    assert meta.format == 1 and meta.labels == EMOTIONS
    assert meta.input.name == "faces" and meta.output.name == "probabilities"
    assert meta.precision == "fp32" and meta.architecture == "shallow"


def test_model_without_metadata(make_onnx, tmp_path):
    path = make_onnx(tmp_path / "plain.onnx", metadata=False)
    session = runtime.create_session(path)
    with pytest.raises(ModelError) as info:
        runtime.read_metadata(session)
    assert str(path) in str(info.value) and "has no fer-sdk metadata" in str(info.value)
    assert "fer-sdk export" in str(info.value)


def _session_with_meta(make_onnx, tmp_path, edit):
    import onnx

    path = make_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    prop = next(p for p in model.metadata_props if p.key == "fer_sdk")
    meta = json.loads(prop.value)
    edit(meta)
    prop.value = json.dumps(meta)
    return runtime.create_session(model.SerializeToString())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(labels=m["labels"][:6]), "labels"),
        (lambda m: m.update(format=99), "format 99"),
        (lambda m: m["input"].update(name="images"), "'images'"),
        (lambda m: m["input"].update(height=64), r"\[N, 64, 48, 1\]"),
        (lambda m: m["output"].update(name="logits"), "'logits'"),
        (lambda m: m.pop("input"), "'input'"),
    ],
)
def test_inconsistent_metadata(make_onnx, tmp_path, edit, match):
    session = _session_with_meta(make_onnx, tmp_path, edit)
    with pytest.raises(ModelError, match=match):
        runtime.read_metadata(session, "edited.onnx")


def test_unparseable_metadata(make_onnx, tmp_path):
    import onnx

    path = make_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    next(p for p in model.metadata_props if p.key == "fer_sdk").value = "{broken"
    with pytest.raises(ModelError, match="unreadable fer-sdk metadata"):
        runtime.read_metadata(runtime.create_session(model.SerializeToString()), "x.onnx")


def test_ctrl_c_during_the_onnxruntime_import_stays_ctrl_c(monkeypatch):
    import builtins
    import sys

    from fer_sdk.runtime import import_onnxruntime

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "onnxruntime":
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError("partially initialized module 'onnxruntime'") from None
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_onnxruntime()

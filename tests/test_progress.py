"""Progress bars and quiet logs, through the real console script: bars appear on a terminal's stderr (a pty
here), never on a pipe or with ``--quiet``; ONNX Runtime's and Ray's own log lines stay hidden unless ``--debug``."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV, write_small_fer_csv

FER_SDK = Path(sys.executable).with_name("fer-sdk")
SAMPLES = Path(__file__).resolve().parents[1] / "fer_sdk" / "samples"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(*args, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``fer-sdk ARGS`` with stderr on a pseudo-terminal; return (exit code, stdout, stderr as text with the
    terminal's escape codes removed)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [str(FER_SDK), *map(str, args)], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=timeout)
    reader.join(timeout)
    return code, out[0].decode(), ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def run_on_pipe(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FER_SDK), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_predict_shows_a_bar_on_a_terminal_only_and_not_when_quiet():
    code, out, err = run_on_terminal("predict", SAMPLES, "--format", "csv")
    assert code == 0, err
    assert re.search(r"photos .*\d/3", err), err  # the bar: description and done/total
    assert "3 photo(s), 4 face(s)" in err  # then the summary line
    assert len(out.splitlines()) == 1 + 4  # stdout: the CSV only

    code, out_quiet, err_quiet = run_on_terminal("predict", SAMPLES, "--format", "csv", "--quiet")
    assert code == 0 and err_quiet.strip() == "", err_quiet
    assert out_quiet.splitlines()[0] == out.splitlines()[0] and len(out_quiet.splitlines()) == 5

    piped = run_on_pipe("predict", SAMPLES, "--format", "csv")
    assert piped.returncode == 0 and piped.stderr.startswith("fer-sdk: deep-int8") and "photos" not in piped.stderr


def test_video_frames_bar(tmp_path):
    import cv2

    from fer_sdk.video import make_test_video

    clip = make_test_video(tmp_path / "clip.mp4", [cv2.imread(str(SAMPLES / "two_faces.jpg"))], frames_per_image=4)
    code, out, err = run_on_terminal("predict", clip, "--format", "jsonl")
    assert code == 0, err
    assert re.search(r"frames of clip\.mp4 .*\d/4", err), err
    assert len(out.splitlines()) == 8  # two faces in each of 4 frames


@pytest.mark.skipif(not FER_CSV.is_file(), reason="needs ../shared/data/fer2013")
def test_eval_shows_a_bar_over_the_faces(tmp_path):
    data = write_small_fer_csv(tmp_path / "small.csv", 0, 200)
    code, out, err = run_on_terminal("eval", "--data", data, "--batch-size", "32")
    assert code == 0, err
    assert re.search(r"classifying PublicTest .*\d+/200", err), err
    assert "accuracy" in out and re.search(r"calibration: ECE 0\.\d{4} \(15 bins\)   NLL \d+\.\d{4}", out), out
    code, out, err = run_on_terminal("-q", "eval", "--data", data, "--batch-size", "32")
    assert code == 0 and "classifying" not in err, err


def test_predict_proba_reports_each_batch(samples_dir):
    from fer_sdk import Classifier

    faces = np.random.default_rng(0).integers(0, 256, (70, 48, 48), dtype=np.uint8)
    done: list[int] = []
    probs = Classifier(batch_size=32).predict_proba(faces, progress=done.append)
    assert done == [32, 32, 6] and probs.shape == (70, 7)


def test_calibration_reader_reports_faces_handed_out():
    pytest.importorskip("onnxruntime.quantization")
    from fer_sdk.export.quantize import FaceCalibrationReader

    done: list[int] = []
    reader = FaceCalibrationReader(np.zeros((130, 48, 48), np.uint8), batch_size=64, progress=done.append)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    assert done == [64, 64, 2] and len(batches) == 3


UNUSED_INITIALIZER_SCRIPT = """
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from fer_sdk import progress
from fer_sdk.runtime import create_session

graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "unused")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
if sys.argv[1] == "debug":
    progress.set_debug(True)
create_session(model.SerializeToString())
"""


@pytest.mark.parametrize("mode", ["default", "debug"])
def test_onnxruntime_warnings_hidden_unless_debug(mode):
    """ONNX Runtime writes its own warnings (here: an unused initializer; on the GPU build without CUDA:
    provider-library errors) straight to stderr; the SDK keeps them off unless asked."""
    pytest.importorskip("onnx")
    result = subprocess.run(
        [sys.executable, "-c", UNUSED_INITIALIZER_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert ("Removing initializer 'unused'" in result.stderr) == (mode == "debug"), result.stderr


@pytest.mark.slow
def test_ray_run_prints_only_its_summary(tmp_path):
    """A ``--ray local`` run used to print ~30 lines of Ray's logs (and a C++ error-level actor warning)."""
    pytest.importorskip("ray.data")
    result = run_on_pipe("predict", SAMPLES, "--ray", "local", "--output", tmp_path / "out", timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fer-sdk: ray: 3 image(s), 4 face(s), 0 error(s)"), lines


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.skipif(not FER_CSV.is_file(), reason="needs ../shared/data/fer2013")
def test_train_shows_batches_eta_loss_and_accuracy_within_an_epoch(tmp_path):
    pytest.importorskip("tensorflow")
    data = write_small_fer_csv(tmp_path / "small.csv", 256, 64)
    code, out, err = run_on_terminal(
        "train",
        "--arch",
        "shallow",
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--no-augment",
    )
    assert code == 0, err
    assert re.search(r"epoch 1/1 .*\d/2 +loss \d+\.\d{4} +acc \d\.\d{4} .*eta", err), err  # the bar (2 batches)
    assert re.search(r"epoch 1/1  lr [\d.]+  loss", err), err  # then the epoch's line
    assert out.strip().endswith("metrics.json")

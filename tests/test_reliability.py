"""Reliability: one Classifier shared by threads, atomic output files, hostile models at the CLI, memory.

- Threads: 8 threads, 5,000 ``predict_proba`` calls of 1-8 real faces each, results bit-identical to serial.
- Atomic files: failures injected in the middle of every writer the SDK uses (``fer_sdk.files`` itself, ONNX
  export after conversion, ``predict --output`` / ``--annotate``) leave the destination as it was (old
  content, or absent) and no partial file under its name; a SIGKILLed writer leaves a complete file.
- Hostile models through the CLI (the library-level cases live in test_classifier / test_runtime /
  test_registry): exit code 4 and one line on stderr naming the file and the fix.
- Memory (``slow``): RSS stays flat over 100,000 predictions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_sdk import Classifier, registry
from fer_sdk.cli import app
from fer_sdk.errors import ModelError
from fer_sdk.files import atomic_write_json

# ----------------------------------------------------------------------------------------------- threads

N_THREADS, N_CALLS = 8, 5_000


def test_one_classifier_shared_by_8_threads_matches_serial(tiny_models, fer_faces):
    faces = fer_faces[0]
    clf = Classifier(tiny_models.fp32)
    rng = np.random.default_rng(0)
    # 500 distinct jobs (start, size, as-list) cycled through by 5,000 calls
    jobs = [
        (int(rng.integers(0, len(faces) - 8)), int(rng.integers(1, 9)), bool(rng.integers(0, 2))) for _ in range(500)
    ]

    def run(job):
        start, size, as_list = job
        batch = faces[start : start + size]
        return clf.predict_proba(list(batch) if as_list else batch)

    expected = [run(job) for job in jobs]
    assert all(e.shape == (job[1], 7) for e, job in zip(expected, jobs))
    mismatches: list[int] = []
    barrier = threading.Barrier(N_THREADS)
    per_thread = N_CALLS // N_THREADS

    def worker(t: int) -> int:
        barrier.wait()
        for i in range(per_thread):
            k = (t * per_thread + i * 7) % len(jobs)
            if not np.array_equal(run(jobs[k]), expected[k]):
                mismatches.append(k)
        return per_thread

    with ThreadPoolExecutor(N_THREADS) as pool:
        done = sum(pool.map(worker, range(N_THREADS)))
    assert done == N_CALLS and mismatches == []


# ----------------------------------------------------------------------------------------- atomic files


def _half_write_then(exc: BaseException):
    """A ``Path.write_bytes`` that writes half the data to SDK temporaries and then raises ``exc``."""
    real = Path.write_bytes

    def write_bytes(self: Path, data) -> int:
        if self.name.startswith(".") and ".tmp" in self.name:
            real(self, bytes(data)[: max(1, len(data) // 2)])
            raise exc
        return real(self, data)

    return write_bytes


def _raiser(exc: BaseException):
    def fail(*_args, **_kwargs):
        raise exc

    return fail


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (injected)")


FAILURES = {
    "mid-write": lambda mp: mp.setattr(Path, "write_bytes", _half_write_then(_disk_full())),
    "interrupt": lambda mp: mp.setattr(Path, "write_bytes", _half_write_then(KeyboardInterrupt())),
    "fsync": lambda mp: mp.setattr(os, "fsync", _raiser(_disk_full())),
    "rename": lambda mp: mp.setattr(os, "replace", _raiser(_disk_full())),
}


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_atomic_write_json_failure_keeps_old_content(failure, tmp_path, monkeypatch):
    old = tmp_path / "state.json"
    old.write_text('{"epochs_done": 1}\n')
    FAILURES[failure](monkeypatch)
    big = {"epochs_done": 2, "history": list(range(50_000))}
    for target in (old, tmp_path / "fresh.json"):
        with pytest.raises((OSError, KeyboardInterrupt)):
            atomic_write_json(target, big)
    monkeypatch.undo()
    assert json.loads(old.read_text()) == {"epochs_done": 1}
    assert names(tmp_path) == ["state.json"]  # no fresh.json, no temporary left behind
    atomic_write_json(old, big)
    assert json.loads(old.read_text()) == big and names(tmp_path) == ["state.json"]


_KILLED_WRITER = r"""
import sys
from fer_sdk.files import atomic_write_json
target, i = sys.argv[1], 0
while True:
    i += 1
    atomic_write_json(target, {"i": i, "blob": "x" * 3_000_000, "end": True})
"""


def test_sigkilled_writer_leaves_a_whole_file(tmp_path):
    target = tmp_path / "out.json"
    for delay in (0.05, 0.13, 0.31):
        child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)])
        try:
            deadline = time.monotonic() + 30
            while not target.exists():
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        data = json.loads(target.read_text())
        assert data["i"] >= 1 and len(data["blob"]) == 3_000_000 and data["end"] is True
        leftovers = [n for n in names(tmp_path) if n != "out.json"]
        assert all(n.startswith(".out.json.") and ".tmp" in n for n in leftovers), leftovers
        for name in leftovers:
            (tmp_path / name).unlink()


@pytest.fixture(scope="module")
def shallow_net():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    from fer_sdk.export.architectures import build

    keras.utils.set_random_seed(0)
    return build("shallow")


@pytest.mark.train
def test_export_failure_after_conversion_keeps_previous_file(shallow_net, fer_faces, tmp_path, monkeypatch):
    import onnx
    from fer_sdk.export import convert

    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"previous export")
    faces = fer_faces[0][:256]

    # (1) the converted graph fails onnx.checker
    monkeypatch.setattr(onnx.checker, "check_model", _raiser(onnx.checker.ValidationError("injected checker failure")))
    with pytest.raises(ModelError, match="onnx.checker"):
        convert.export_onnx(shallow_net, previous, parity_faces=faces, log=lambda *_: None)
    with pytest.raises(ModelError, match="onnx.checker"):
        convert.export_onnx(shallow_net, tmp_path / "fresh.onnx", parity_faces=faces, log=lambda *_: None)
    monkeypatch.undo()
    assert previous.read_bytes() == b"previous export" and names(tmp_path) == ["model.onnx"]

    # (2) parity passed, the disk fills up half-way through writing the file
    monkeypatch.setattr(Path, "write_bytes", _half_write_then(_disk_full()))
    with pytest.raises(OSError, match="No space left"):
        convert.export_onnx(shallow_net, previous, parity_faces=faces, log=lambda *_: None)
    monkeypatch.undo()
    assert previous.read_bytes() == b"previous export" and names(tmp_path) == ["model.onnx"]


def check_failed(result, failure: str) -> None:
    """The CLI run failed because of the injected failure (Ctrl-C: exit 130; disk full: the OSError, reported
    as one line with exit code 1, no traceback)."""
    if failure == "interrupt":
        assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    else:
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("fer-sdk: error: ") and "injected" in lines[-1], result.output
        assert "Traceback" not in result.output


def _fail_on_second_row(exc: BaseException):
    """Patch the streaming JSON writer: the first row is written, the second raises ``exc`` (a disk filling up
    while the results stream out, or Ctrl-C)."""
    from fer_sdk import rows

    real = rows._JsonWriter.write
    seen = []

    def write(self, row):
        seen.append(row)
        if len(seen) == 2:
            raise exc
        real(self, row)

    return lambda mp: mp.setattr(rows._JsonWriter, "write", write)


STREAM_FAILURES = {
    "mid-write": lambda mp: _fail_on_second_row(_disk_full())(mp),
    "interrupt": lambda mp: _fail_on_second_row(KeyboardInterrupt())(mp),
    "rename": FAILURES["rename"],
}


@pytest.mark.parametrize("failure", ["mid-write", "interrupt", "rename"])
def test_predict_output_failure_keeps_previous_results(failure, tiny_models, samples_dir, tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text("previous results\n")
    STREAM_FAILURES[failure](monkeypatch)
    result = CliRunner().invoke(
        app, ["predict", "--model", str(tiny_models.fp32), "--json", "--output", str(results), str(samples_dir)]
    )
    monkeypatch.undo()
    check_failed(result, failure)
    assert results.read_text() == "previous results\n" and names(tmp_path) == ["results.json"]

    ok = CliRunner().invoke(
        app, ["predict", "--model", str(tiny_models.fp32), "--json", "--output", str(results), str(samples_dir)]
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "" and len(json.loads(results.read_text())) == 4  # a row per face: two_faces has two


@pytest.mark.parametrize("failure", ["mid-write", "interrupt", "rename"])
def test_predict_annotate_failure_leaves_no_partial_image(failure, tiny_models, samples_dir, tmp_path, monkeypatch):
    out = tmp_path / "annotated"
    out.mkdir()
    (out / "astronaut.jpg").write_bytes(b"previous annotated copy")
    FAILURES[failure](monkeypatch)
    result = CliRunner().invoke(
        app, ["predict", "--model", str(tiny_models.fp32), "--annotate", str(out), str(samples_dir)]
    )
    monkeypatch.undo()
    check_failed(result, failure)
    assert (out / "astronaut.jpg").read_bytes() == b"previous annotated copy"
    assert names(out) == ["astronaut.jpg"]  # the failed copy is not there, not even half of it


# ------------------------------------------------------------------------------------------ hostile models


def _cli_model_error(model: str | Path, samples_dir: Path):
    result = CliRunner().invoke(app, ["predict", "--model", str(model), str(samples_dir / "astronaut.jpg")])
    assert result.exit_code == 4, result.output  # ModelError
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fer-sdk: error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]


def test_hostile_model_files_at_the_cli(tiny_models, make_onnx, samples_dir, tmp_path):
    missing = tmp_path / "missing.onnx"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    truncated = tmp_path / "truncated.onnx"
    data = tiny_models.fp32.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    plain = make_onnx(tmp_path / "plain.onnx", metadata=False)
    for path, fix in (
        (missing, "pass an existing .onnx file"),
        (garbage, "re-export"),
        (truncated, "re-export"),
        (plain, "fer-sdk export"),
    ):
        message = _cli_model_error(path, samples_dir)
        assert path.name in message and fix in message, message


def test_bundled_model_with_wrong_sha256_at_the_cli(tiny_models, samples_dir, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_models.fp32, folder / "tiny.onnx")
    good = hashlib.sha256((folder / "tiny.onnx").read_bytes()).hexdigest()
    entry = {
        "file": "tiny.onnx",
        "sha256": good,
        "architecture": "shallow",
        "precision": "fp32",
        "parameters": 1,
        "size_bytes": 1,
        "metrics": {},
    }
    (folder / "manifest.json").write_text(json.dumps({"default": "tiny", "models": {"tiny": entry}}))
    monkeypatch.setattr(registry, "MODELS_DIR", folder)
    ok = CliRunner().invoke(app, ["predict", "--model", "tiny", "--json", str(samples_dir / "astronaut.jpg")])
    assert ok.exit_code == 0, ok.output

    with open(folder / "tiny.onnx", "r+b") as fh:  # one flipped byte
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    message = _cli_model_error("tiny", samples_dir)
    assert "sha256 mismatch" in message and str(folder / "tiny.onnx") in message
    assert good in message and "reinstall" in message
    (folder / "tiny.onnx").unlink()
    message = _cli_model_error("tiny", samples_dir)
    assert "tiny.onnx" in message and "missing" in message and "reinstall" in message


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.slow
def test_memory_is_flat_over_100k_predictions(tiny_models, fer_faces):
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    clf = Classifier(tiny_models.fp32)
    batch = np.concatenate([fer_faces[0]] * 2)[:500]  # 500 real faces per call

    def predict(n: int) -> None:
        for _ in range(n // len(batch)):
            clf.predict_proba(batch)
            clf.predict_proba(list(batch[:8]))

    predict(20_000)  # warm-up: arenas, thread pools, caches
    before = process.memory_info().rss
    predict(100_000)
    after = process.memory_info().rss
    assert after <= before * 1.05, f"RSS grew from {before / 2**20:.1f} MiB to {after / 2**20:.1f} MiB"

"""The benchmark harness, run for real on the tiny exported models (quick mode). No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV  # as conftest.py
from fer_sdk.benchmarks.readme import render_readme_table
from fer_sdk.benchmarks.report import fmt
from fer_sdk.benchmarks.targets import TARGETS, compute_ratios
from fer_sdk.benchmarks.timing import calls_per_round, summarize

from fer_sdk.errors import ModelError

TF_INSTALLED = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))
TOP_KEYS = {
    "schema_version",
    "quick",
    "wall_s",
    "machine",
    "models",
    "runtimes",
    "ratios",
    "gpu",
    "photos",
    "accuracy",
    "notes",
    "files",
}
ROW_KEYS = {
    "id",
    "runtime",
    "api",
    "model",
    "architecture",
    "precision",
    "device",
    "provider",
    "threads",
    "batch_size",
    "samples",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "faces_per_s",
    "load_s",
    "first_call_ms",
    "peak_rss_bytes",
    "weights",
}


def _valid_png(path: Path) -> bool:
    """PNG signature, an IHDR with non-zero size, and every chunk's CRC correct up to IEND."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    pos, seen = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            return False
        seen.append(kind)
        pos += 12 + length
    width, height = struct.unpack(">II", data[16:24])
    return seen[0] == b"IHDR" and seen[-1] == b"IEND" and width > 0 and height > 0


@pytest.fixture(scope="module")
def bench_models(tiny_models) -> list[str]:
    return [str(tiny_models.fp32)] + ([str(tiny_models.int8)] if tiny_models.int8 else [])


@pytest.fixture(scope="module")
def quick_run(bench_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    messages: list[str] = []
    paths = run_quick(out, bench_models, messages)
    return out, paths, json.loads((out / "bench.json").read_text("utf-8")), messages


def run_quick(out: Path, models: list[str], messages: list[str]) -> list[Path]:
    from fer_sdk.benchmarks.run import run_benchmarks

    data = FER_CSV if FER_CSV.is_file() else None
    return run_benchmarks(out, quick=True, models=models, data=data, log=messages.append)


@pytest.mark.train
def test_quick_run_writes_json_report_and_plots(quick_run):
    out, paths, _, messages = quick_run
    names = {p.name for p in paths}
    assert {"bench.json", "REPORT.md", "latency_vs_batch.png", "throughput_vs_batch.png"} <= names
    assert all(p.is_file() and p.parent == out for p in paths)
    for png in (p for p in paths if p.suffix == ".png"):
        assert _valid_png(png), png
    assert not list(out.glob(".*tmp*")), "atomic writes left temporary files"
    report = (out / "REPORT.md").read_text("utf-8")
    for heading in ("## Targets", "## Runtime comparison", "## Photos end to end", "## Accuracy"):
        assert heading in report
    assert any("done" in m for m in messages)


@pytest.mark.train
def test_bench_json_schema(quick_run, bench_models):
    _, _, bench, _ = quick_run
    assert set(bench) >= TOP_KEYS
    assert bench["quick"] is True and bench["schema_version"] == 1
    machine = bench["machine"]
    for key in (
        "cpu",
        "logical_cores",
        "usable_cores",
        "ram_bytes",
        "os",
        "python",
        "versions",
        "command",
        "date",
    ):
        assert machine[key], key
    for lib in ("onnxruntime", "numpy", "opencv"):
        assert machine["versions"][lib], lib
    assert [m["path"] for m in bench["models"]] == [str(Path(p).resolve()) for p in bench_models]

    rows = bench["runtimes"]["configurations"]
    assert rows, bench["runtimes"]["skipped"]
    for row in rows:
        assert set(row) >= ROW_KEYS, row["id"]
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row["id"]
        assert row["faces_per_s"] > 0 and row["samples"] >= 1 and row["load_s"] >= 0, row["id"]
        assert row["peak_rss_bytes"] is None or row["peak_rss_bytes"] > 0
    assert len({r["id"] for r in rows}) == len(rows)
    ort = [r for r in rows if r["runtime"] == "onnxruntime"]
    assert {r["model"] for r in ort} == {Path(p).stem for p in bench_models}
    assert {r["batch_size"] for r in ort} == set(bench["runtimes"]["settings"]["batch_sizes"])
    assert all(r["provider"] == "CPUExecutionProvider" for r in ort if r["device"] == "cpu")
    if TF_INSTALLED:
        keras = [r for r in rows if r["runtime"] == "keras"]
        assert {r["api"] for r in keras} == {"model.predict", "model(x)"}

    gpu = bench["gpu"]
    assert isinstance(gpu["cuda_offered"], bool) and isinstance(gpu["cuda_used"], bool)
    assert gpu["cuda_used"] or gpu["note"]
    assert all(r["device"] == "cuda" for r in rows if r["provider"] == "CUDAExecutionProvider")

    ratios = bench["ratios"]
    assert {r["id"] for r in ratios} == {t["id"] for t in TARGETS}
    for r in ratios:
        assert r["status"] in ("PASS", "MISS", "N/A")
        assert (r["value"] is None) == (r["status"] == "N/A")
    if TF_INSTALLED and len(bench_models) == 2:
        assert all(r["value"] is not None and r["value"] > 0 for r in ratios)


@pytest.mark.train
def test_photo_section(quick_run):
    photos = quick_run[2]["photos"]
    assert photos["skipped"] is None, photos["skipped"]
    sizes = {(p["width"], p["height"]) for p in photos["items"]}
    assert (1920, 1080) in sizes
    for p in photos["items"]:
        assert p["faces"] >= 0 and p["photos_per_s"] > 0
        for stage in ("decode_ms", "detect_ms", "classify_ms", "analyze_ms"):
            assert p[stage] >= 0, stage
    assert not any("1080" in f.name for f in (Path(__file__).resolve().parents[1] / "fer_sdk" / "samples").iterdir())


@pytest.mark.train
def test_accuracy_section(quick_run):
    bench = quick_run[2]
    acc = bench["accuracy"]
    if not FER_CSV.is_file():
        assert acc["skipped"]
        return
    assert acc["split"] == "PublicTest" and 0 < acc["n"] <= 300
    for m in acc["models"]:
        for report in (m["report"], m["flip_tta"]["report"]):
            assert 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
            assert int(np.sum(report["confusion_matrix"])) == acc["n"]
            assert set(report["per_class"]) == set(report["labels"])
        assert m["flip_tta"]["cost_x"] > 0
        assert bench["files"][f"confusion:{m['model']}"].endswith(".png")


@pytest.mark.train
def test_readme_table(quick_run):
    out, _, bench, _ = quick_run
    text = render_readme_table(out / "bench.json")
    assert text == render_readme_table(bench)
    assert "| model | runtime |" in text and bench["machine"]["command"] in text
    assert "ONNX Runtime fp32" in text
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    result = CliRunner().invoke(app, ["bench", "--table-from", str(out / "bench.json")])
    assert result.exit_code == 0 and result.stdout == text
    result = CliRunner().invoke(app, ["bench", "--table-from", str(out / "missing.json")])
    assert result.exit_code == 2 and "pass a bench.json written by `fer-sdk bench`" in result.stderr


def test_cli_bench_quick(bench_models, tmp_path):
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    result = CliRunner().invoke(
        app, ["bench", "--quick", "--out", str(tmp_path), "--models", ",".join(bench_models), "--no-keras"]
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "bench.json") in result.output
    bench = json.loads((tmp_path / "bench.json").read_text("utf-8"))
    assert not any(r["runtime"] == "keras" for r in bench["runtimes"]["configurations"])
    assert any("not timed" in n for n in bench["runtimes"]["notes"])
    assert bench["accuracy"]["skipped"]


def test_no_models_raises_model_error(tmp_path, monkeypatch):
    from fer_sdk.benchmarks.run import run_benchmarks

    from fer_sdk import registry

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(ModelError, match=r"models=\["):
        run_benchmarks(tmp_path / "out", quick=True)
    with pytest.raises(ModelError, match="does not exist"):
        run_benchmarks(tmp_path / "out", quick=True, models=[str(tmp_path / "nope.onnx")])
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_before_timing(bench_models, tmp_path):
    from fer_sdk.benchmarks.run import run_benchmarks

    from fer_sdk.errors import DatasetError

    with pytest.raises(DatasetError, match="missing.csv"):
        run_benchmarks(tmp_path / "out", quick=True, models=bench_models[:1], data=tmp_path / "missing.csv")
    assert not (tmp_path / "out").exists()


def test_summarize_and_rounds():
    s = summarize([0.004, 0.001, 0.002, 0.003, 0.010], batch_size=8)
    assert s["samples"] == 5 and s["p50_ms"] == pytest.approx(3.0)
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"] == pytest.approx(10.0)
    assert s["faces_per_s"] == pytest.approx(8 / 0.003)
    assert calls_per_round(0.001, round_seconds=0.1, max_calls=50) == 50
    assert calls_per_round(2.0, round_seconds=0.1, max_calls=50) == 1
    assert calls_per_round(0.01, round_seconds=0.1, max_calls=50) == 10


def _row(runtime, api, precision, batch, p50, threads=2, arch="deep"):
    return {
        "id": f"{runtime}/{api}/{precision}/b{batch}/t{threads}",
        "runtime": runtime,
        "api": api,
        "precision": precision,
        "batch_size": batch,
        "p50_ms": p50,
        "faces_per_s": batch * 1e3 / p50,
        "threads": threads,
        "device": "cpu",
        "architecture": arch,
    }


def test_ratios_pass_miss_and_missing_rows():
    rows = [
        _row("onnxruntime", "session.run", "int8", 64, 10.0),
        _row("onnxruntime", "session.run", "int8", 1, 0.5),
        _row("onnxruntime", "session.run", "int8", 1, 0.1, threads=1),  # all-cores row wins
        _row("onnxruntime", "session.run", "fp32", 1, 1.0),
        _row("keras", "model.predict", "fp32", 64, 20.0),
        _row("keras", "model(x)", "fp32", 1, 9.0),
    ]
    got = {r["id"]: r for r in compute_ratios(rows)}
    assert got["int8_vs_tf_predict_b64"]["value"] == pytest.approx(2.0)
    assert got["int8_vs_tf_predict_b64"]["status"] == "MISS"
    assert got["keras_call_vs_ort_fp32_b1"]["value"] == pytest.approx(9.0)
    assert got["keras_call_vs_ort_fp32_b1"]["status"] == "PASS"
    assert got["int8_b1_p50_ms"]["value"] == pytest.approx(0.5) and got["int8_b1_p50_ms"]["status"] == "PASS"
    assert all(r["applies"] for r in got.values())
    partial = compute_ratios([r for r in rows if r["runtime"] == "onnxruntime"])
    assert {r["id"]: r["status"] for r in partial}["int8_vs_tf_predict_b64"] == "N/A"


def test_fmt():
    assert fmt(None) == "-" and fmt(1234.5) == "1,234" and fmt(0.01234) == "0.0123" and fmt(12) == "12"


def test_every_architecture_the_benchmark_times_has_a_builder():
    pytest.importorskip("keras")
    from fer_sdk.benchmarks.runtimes import ARCHITECTURES
    from fer_sdk.export.architectures import BUILDERS

    assert set(ARCHITECTURES) == set(BUILDERS)  # the import-light names vs the Keras builders


def test_an_out_that_is_a_file_fails_before_timing(bench_models, tmp_path):
    from fer_sdk.benchmarks.run import run_benchmarks

    from fer_sdk.errors import InvalidInputError

    (tmp_path / "report").write_text("not a folder")
    with pytest.raises(InvalidInputError, match=r"--out .*report is a file, not a folder"):
        run_benchmarks(
            tmp_path / "report", quick=True, models=bench_models[:1], log=lambda *_: pytest.fail("timing started")
        )
    assert (tmp_path / "report").read_text() == "not a folder"

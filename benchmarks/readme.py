"""The README performance table, rendered from a bench.json.

fer-sdk bench --table-from reports/bench/bench.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .report import fmt, machine_line, mb, table, versions_line

#: (label, row filter) in table order; all-cores CPU rows unless the device says otherwise.
_LINES = (
    ("ONNX Runtime INT8", {"runtime": "onnxruntime", "precision": "int8", "device": "cpu"}),
    ("ONNX Runtime fp32", {"runtime": "onnxruntime", "precision": "fp32", "device": "cpu"}),
    ("LiteRT INT8 (XNNPACK)", {"runtime": "litert", "precision": "int8", "device": "cpu"}),
    ("ONNX Runtime INT8, CUDA", {"runtime": "onnxruntime", "precision": "int8", "device": "cuda"}),
    ("ONNX Runtime fp32, CUDA", {"runtime": "onnxruntime", "precision": "fp32", "device": "cuda"}),
    ("Keras `model(x)`", {"runtime": "keras", "api": "model(x)"}),
    ("Keras `model.predict`", {"runtime": "keras", "api": "model.predict"}),
)


def _row(rows: list[dict], batch: int, **want) -> dict | None:
    found = [r for r in rows if r["batch_size"] == batch and all(r.get(k) == v for k, v in want.items())]
    return max(found, key=lambda r: r["threads"] or 0) if found else None


def render_readme_table(bench_json: dict | str | os.PathLike) -> str:
    """Markdown: per architecture, single-face p50 and batch-64 throughput per runtime, the targets, and the
    command and machine they were measured with."""
    bench = bench_json if isinstance(bench_json, dict) else json.loads(Path(bench_json).read_text("utf-8"))
    rows = bench["runtimes"]["configurations"]
    machine = bench["machine"]
    archs = sorted(dict.fromkeys(r["architecture"] for r in rows), key=lambda a: a != "deep")
    body = []
    for arch in archs:
        for label, want in _LINES:
            b1, b64 = _row(rows, 1, architecture=arch, **want), _row(rows, 64, architecture=arch, **want)
            if b1 is None and b64 is None:
                continue
            ref = b1 or b64
            threads = "default" if ref["threads"] is None else ref["threads"]
            body.append(
                [
                    arch,
                    label,
                    threads,
                    fmt(b1 and b1["p50_ms"]),
                    fmt(b1 and b1["p99_ms"]),
                    fmt(b64 and b64["faces_per_s"]),
                    fmt(ref["load_s"]),
                    mb(ref["peak_rss_bytes"]),
                ]
            )
    lines = [
        table(
            [
                "model",
                "runtime",
                "threads",
                "1 face p50 ms",
                "1 face p99 ms",
                "batch 64 faces/s",
                "load s",
                "peak RSS MiB",
            ],
            body,
        ),
        "",
    ]
    ratios = [r for r in bench.get("ratios", []) if r["applies"] or not any(x["applies"] for x in bench["ratios"])]
    if ratios:
        lines += [
            table(
                ["target", "measured", "goal", ""],
                [
                    [
                        f"{r['description']} ({r['architecture']})",
                        "-"
                        if r["value"] is None
                        else (f"{fmt(r['value'])} ms" if r["unit"] == "ms" else f"{fmt(r['value'])}x"),
                        f"{r['op']} {fmt(r['target'])}{' ms' if r['unit'] == 'ms' else 'x'}",
                        r["status"],
                    ]
                    for r in ratios
                ],
            ),
            "",
        ]
    keras_note = ""
    if any(r["runtime"] == "keras" and r["weights"].startswith("fresh") for r in rows):
        keras_note = " Keras rows time the same architecture with untrained weights (latency does not depend on them)."
    quick = " Quick smoke run: indicative only." if bench.get("quick") else ""
    lines.append(
        f"Measured with `{machine['command']}` on {machine_line(machine)}, {machine['date'][:10]}; "
        f"{versions_line(machine)}. Largest thread count measured per runtime; p50 over interleaved rounds."
        f"{keras_note}{quick}"
    )
    return "\n".join(lines) + "\n"


def read_readme_table(path: str | os.PathLike) -> str:
    """``render_readme_table`` of a bench.json file; a missing or foreign file is an ``InvalidInputError``."""
    from ..errors import InvalidInputError

    try:
        return render_readme_table(path)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InvalidInputError(
            f"--table-from {path}: cannot render it ({type(err).__name__}: {err}); pass a bench.json written by "
            "`fer-sdk bench`"
        ) from None


if __name__ == "__main__":  # ``python -m fer_sdk.benchmarks.readme FILE`` is ``fer-sdk bench --table-from FILE``
    from fer_sdk.cli import run_as

    run_as(["bench", "--table-from"])

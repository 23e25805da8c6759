"""The project's performance targets, computed from the rows of one run (never from separate runs).

All three compare CPU rows at the largest thread count measured for both runtimes ("all cores"). They are
computed for every architecture present; the targets are stated for ``deep``, the product model.
"""

from __future__ import annotations

TARGETS = (
    {
        "id": "int8_vs_tf_predict_b64",
        "description": "ONNX Runtime INT8 throughput / TensorFlow model.predict throughput, batch 64",
        "unit": "x",
        "op": ">=",
        "target": 3.0,
    },
    {
        "id": "keras_call_vs_ort_fp32_b1",
        "description": "Keras direct-call latency / ONNX Runtime fp32 latency, one face (p50)",
        "unit": "x",
        "op": ">=",
        "target": 8.0,
    },
    {
        "id": "int8_b1_p50_ms",
        "description": "ONNX Runtime INT8 single-face p50 latency",
        "unit": "ms",
        "op": "<=",
        "target": 0.6,
    },
)


def _pick(rows: list[dict], **want) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in want.items())]
    if not found:
        return None
    return max(found, key=lambda r: r["threads"] or 0)  # all cores: the largest thread count measured


def _status(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "N/A"
    ok = value >= target if op == ">=" else value <= target
    return "PASS" if ok else "MISS"


def compute_ratios(rows: list[dict]) -> list[dict]:
    """One entry per (target, architecture): value, target, PASS / MISS / N/A and the row ids it came from."""
    cpu = [r for r in rows if r["device"] == "cpu"]
    archs = list(dict.fromkeys(r["architecture"] for r in cpu))
    archs.sort(key=lambda a: a != "deep")  # deep first
    out = []
    for arch in archs:
        ort = {
            p: _pick(cpu, runtime="onnxruntime", architecture=arch, precision=p, batch_size=b)
            for p, b in (("int8", 64), ("fp32", 1))
        }
        int8_b1 = _pick(cpu, runtime="onnxruntime", architecture=arch, precision="int8", batch_size=1)
        predict = _pick(cpu, runtime="keras", architecture=arch, api="model.predict", batch_size=64)
        call = _pick(cpu, runtime="keras", architecture=arch, api="model(x)", batch_size=1)
        pairs = {
            "int8_vs_tf_predict_b64": (
                ort["int8"],
                predict,
                lambda a, b: a["faces_per_s"] / b["faces_per_s"],
            ),
            "keras_call_vs_ort_fp32_b1": (call, ort["fp32"], lambda a, b: a["p50_ms"] / b["p50_ms"]),
            "int8_b1_p50_ms": (int8_b1, int8_b1, lambda a, _: a["p50_ms"]),
        }
        for t in TARGETS:
            num, den, fn = pairs[t["id"]]
            value = fn(num, den) if num is not None and den is not None else None
            missing = [name for name, row in (("numerator", num), ("denominator", den)) if row is None]
            out.append(
                {
                    **t,
                    "architecture": arch,
                    "applies": arch == "deep",
                    "value": value,
                    "status": _status(value, t["op"], t["target"]),
                    "from": sorted({r["id"] for r in (num, den) if r is not None}),
                    "threads": {r["runtime"]: r["threads"] for r in (num, den) if r is not None},
                    "note": None if value is not None else f"no matching {' / '.join(missing)} row in this run",
                }
            )
    return out

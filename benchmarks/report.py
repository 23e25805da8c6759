"""REPORT.md from a bench.json: runtime comparison, targets, photo pipeline, accuracy (Markdown tables)."""

from __future__ import annotations


def fmt(value, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits (no scientific notation for ordinary sizes); None -> "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    from math import floor, log10

    decimals = max(0, digits - 1 - floor(log10(abs(value))))
    return f"{value:.{decimals}f}"


def mb(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    ram = machine.get("ram_bytes")
    cores = machine.get("usable_cores") or machine.get("logical_cores")
    phys = machine.get("physical_cores")
    parts = [
        machine.get("cpu") or "unknown CPU",
        f"{cores} usable logical cores" + (f" ({phys} physical)" if phys else ""),
        f"{ram / 2**30:.0f} GiB RAM" if ram else None,
        machine.get("os"),
        f"Python {machine.get('python')}",
    ]
    return ", ".join(p for p in parts if p)


def versions_line(machine: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items() if v)


def _ratio_value(r: dict) -> str:
    if r["value"] is None:
        return "-"
    return f"{fmt(r['value'])} {r['unit']}" if r["unit"] == "ms" else f"{fmt(r['value'])}x"


def ratios_table(ratios: list[dict]) -> str:
    rows = [
        [
            r["description"],
            r["architecture"] + ("" if r["applies"] else " (target is for deep)"),
            _ratio_value(r),
            f"{r['op']} {fmt(r['target'])}{' ms' if r['unit'] == 'ms' else 'x'}",
            f"**{r['status']}**",
            r["note"] or ", ".join(f"`{i}`" for i in r["from"]),
        ]
        for r in ratios
    ]
    return table(["measure", "architecture", "measured", "target", "status", "from rows"], rows)


def runtime_table(rows: list[dict]) -> str:
    body = [
        [
            r["runtime"],
            f"`{r['api']}`",
            r["model"],
            r["precision"],
            r["device"],
            "default" if r["threads"] is None else r["threads"],
            r["batch_size"],
            fmt(r["p50_ms"]),
            fmt(r["p95_ms"]),
            fmt(r["p99_ms"]),
            fmt(r["faces_per_s"]),
            fmt(r["load_s"]),
            fmt(r["first_call_ms"]),
            mb(r["peak_rss_bytes"]),
            r["samples"],
        ]
        for r in sorted(
            rows,
            key=lambda r: (
                r["architecture"],
                r["device"],
                r["runtime"] != "onnxruntime",
                r["api"],
                r["precision"],
                r["threads"] or 0,
                r["batch_size"],
            ),
        )
    ]
    return table(
        [
            "runtime",
            "API",
            "model",
            "precision",
            "device",
            "threads",
            "batch",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "faces/s",
            "load s",
            "first call ms",
            "peak RSS MiB",
            "samples",
        ],
        body,
    )


def photos_section(photos: dict) -> list[str]:
    if not photos or photos.get("skipped"):
        return [f"Skipped: {(photos or {}).get('skipped', 'not measured')}."]
    rows = [
        [
            p["photo"],
            f"{p['width']}x{p['height']}",
            p["faces"],
            fmt(p["decode_ms"]),
            fmt(p["detect_ms"]),
            fmt(p["classify_ms"]),
            fmt(p["analyze_ms"]),
            fmt(p["photos_per_s"]),
            fmt(p.get("many_photos_per_s")),
            fmt(p.get("peer_photos_per_s")),
            "-" if p.get("peer_faces") is None else p["peer_faces"],
            fmt(p.get("speedup_vs_peer")),
            fmt(p.get("many_speedup_vs_peer")),
            p["repetitions"],
        ]
        for p in photos["items"]
    ]
    peer = photos.get("peer") or "the fer package: not installed, not measured"
    return [
        (
            f"Model `{photos['model']}` on {', '.join(photos['providers'])}, detector {photos['detector']}; "
            f"peer: {peer}. {photos['note']}"
        ),
        "",
        table(
            [
                "photo",
                "size",
                "faces",
                "decode ms",
                "detect ms",
                "classify ms",
                "analyze() ms",
                "analyze() photos/s",
                "analyze_many photos/s",
                "peer photos/s",
                "peer faces",
                "x peer (analyze)",
                "x peer (analyze_many)",
                "reps",
            ],
            rows,
        ),
    ]


def accuracy_section(acc: dict, files: dict) -> list[str]:
    if not acc or acc.get("skipped"):
        return [f"Skipped: {(acc or {}).get('skipped', 'not measured')}."]
    out = [f"`{acc['data']}`, {acc['split']}: {acc['note']}.", ""]
    rows = []
    for m in acc["models"]:
        rep, tta = m["report"], m["flip_tta"]
        rows.append(
            [
                m["model"],
                m["precision"],
                rep["n"],
                f"{rep['accuracy']:.2%}",
                f"{rep['macro_f1']:.4f}",
                f"{tta['report']['accuracy']:.2%}",
                f"{tta['report']['macro_f1']:.4f}",
                f"{tta['accuracy_delta'] * 100:+.2f} pt",
                f"{fmt(tta['cost_x'])}x",
                fmt(m["faces_per_s"]),
            ]
        )
    out.append(
        table(
            [
                "model",
                "precision",
                "faces",
                "accuracy",
                "macro-F1",
                "flip-TTA accuracy",
                "flip-TTA macro-F1",
                "TTA gain",
                "TTA time cost",
                "faces/s",
            ],
            rows,
        )
    )
    for m in acc["models"]:
        rep = m["report"]
        out += ["", f"### {m['model']}: per class", ""]
        out.append(
            table(
                ["class", "precision", "recall", "F1", "support"],
                [
                    [name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", c["support"]]
                    for name, c in rep["per_class"].items()
                ],
            )
        )
        image = files.get(f"confusion:{m['model']}")
        if image:
            out += ["", f"![confusion matrix of {m['model']}]({image})"]
    return out


def render_report(bench: dict) -> str:
    machine = bench["machine"]
    rt = bench["runtimes"]
    files = bench.get("files", {})
    lines = [
        "# fer-sdk benchmark report",
        "",
        f"- Command: `{machine['command']}`"
        + (" (quick smoke run: numbers are indicative only)" if bench["quick"] else ""),
        f"- Date: {machine['date']}; wall time {fmt(bench.get('wall_s'))} s",
        (
            f"- Machine: {machine_line(machine)}; CPU flags: {', '.join(machine.get('cpu_flags') or []) or '-'}; "
            f"load average at start: {machine.get('load_average_at_start')}"
        ),
        f"- Versions: {versions_line(machine)}",
        f"- GPU: {rt['gpu']['note'] or 'CUDA rows included'}",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in [*bench.get("notes", []), *rt["notes"]]],
        f"- Protocol: {rt['protocol']} {rt['rounds']} rounds in {fmt(rt['timing_s'])} s.",
        "",
        "## Targets (computed from this run)",
        "",
        ratios_table(bench["ratios"]) if bench["ratios"] else "No rows to compute the targets from.",
        "",
        "## Runtime comparison",
        "",
        (
            "Latency is per call (one batch); faces/s = batch / p50. Keras `model.predict` includes its per-call "
            "overhead (data adapter, step function); `model(x)` is the direct eager call."
        ),
        "",
    ]
    for arch in dict.fromkeys(r["architecture"] for r in rt["configurations"]):
        lines += [
            f"### {arch}",
            "",
            runtime_table([r for r in rt["configurations"] if r["architecture"] == arch]),
            "",
        ]
    for key, alt in (
        ("latency_vs_batch", "latency vs batch size"),
        ("throughput_vs_batch", "throughput vs batch size"),
    ):
        if key in files:
            lines += [f"![{alt}]({files[key]})", ""]
    if rt["skipped"]:
        lines += [
            "Skipped configurations:",
            "",
            *[f"- `{s['id']}`: {s['reason']}" for s in rt["skipped"]],
            "",
        ]
    lines += ["## Photos end to end", "", *photos_section(bench.get("photos")), ""]
    lines += ["## Accuracy", "", *accuracy_section(bench.get("accuracy"), files), ""]
    return "\n".join(lines)

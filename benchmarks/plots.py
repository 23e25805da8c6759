"""PNG plots of a bench.json (matplotlib, Agg backend): latency and throughput vs batch size, confusion matrices."""

from __future__ import annotations

import re
from pathlib import Path

from fer_sdk.files import atomic_path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from fer_sdk.errors import DependencyError

        raise DependencyError('the benchmark plots need matplotlib: pip install "fer-sdk[bench]"') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def series_label(row: dict) -> str:
    threads = "default threads" if row["threads"] is None else f"{row['threads']} thr"
    device = "" if row["device"] == "cpu" else f" {row['device'].upper()}"
    return f"{row['runtime']} {row['api']} {row['model']}{device} ({threads})"


def _series(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(series_label(r), []).append(r)
    return {k: sorted(v, key=lambda r: r["batch_size"]) for k, v in groups.items()}


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_vs_batch(rows: list[dict], path: Path, *, metric: str, title: str, ylabel: str) -> Path | None:
    """One panel per architecture; log-log; ``metric`` is a row key (``p50_ms`` or ``faces_per_s``)."""
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    archs = list(dict.fromkeys(r["architecture"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(7.5 * len(archs), 5.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for label, series in _series([r for r in rows if r["architecture"] == arch]).items():
            style = "--" if series[0]["runtime"] == "keras" else "-"
            ax.plot([r["batch_size"] for r in series], [r[metric] for r in series], style, marker="o", label=label)
            if metric == "p50_ms":  # p95 as a shaded band above the median
                ax.fill_between(
                    [r["batch_size"] for r in series],
                    [r["p50_ms"] for r in series],
                    [r["p95_ms"] for r in series],
                    alpha=0.15,
                )
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch_size"] for r in rows})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("batch size (faces per call)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {arch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_confusion(report: dict, path: Path, *, title: str) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with the counts in each cell."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    labels = report["labels"]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def write_plots(bench: dict, out: Path) -> dict[str, str]:
    """Every plot of ``bench`` into ``out``; returns {plot name: file name}."""
    files: dict[str, str] = {}
    rows = bench["runtimes"]["configurations"]
    for key, metric, title, ylabel in (
        ("latency_vs_batch", "p50_ms", "Latency per call (p50, band to p95)", "ms per call"),
        ("throughput_vs_batch", "faces_per_s", "Throughput", "faces per second"),
    ):
        if plot_vs_batch(rows, out / f"{key}.png", metric=metric, title=title, ylabel=ylabel):
            files[key] = f"{key}.png"
    accuracy = bench.get("accuracy") or {}
    for entry in accuracy.get("models", []):
        name = f"confusion_{slug(entry['model'])}.png"
        n = entry["report"]["n"]
        plot_confusion(
            entry["report"],
            out / name,
            title=f"{entry['model']} on {accuracy['split']} ({n} faces), acc {entry['report']['accuracy']:.1%}",
        )
        files[f"confusion:{entry['model']}"] = name
    return files

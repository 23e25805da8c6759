"""Accuracy of each model on a FER2013 split, with and without flip test-time augmentation (and its cost)."""

from __future__ import annotations

import os
import time

import numpy as np

from .catalog import BenchModel


def _timed_proba(clf, x):
    start = time.perf_counter()
    proba = clf.predict_proba(x)
    return proba, time.perf_counter() - start


def measure_accuracy(
    models: list[BenchModel],
    data: str | os.PathLike,
    *,
    split: str = "PublicTest",
    limit: int | None = None,
    batch_size: int = 256,
    faces: tuple[np.ndarray, np.ndarray] | None = None,
    progress=None,
) -> dict:
    """The ``accuracy`` section of bench.json: ``fer_sdk.metrics.classification_report`` per model, plain
    and with flip-TTA (``Classifier(flip_tta=True)`` on the same session), plus the time each took.

    ``faces``: the split already loaded with ``fer_sdk.data.load_split(data, split)`` (read here otherwise).
    """
    from fer_sdk.classifier import Classifier
    from fer_sdk.data import canonical_split, load_split
    from fer_sdk.metrics import classification_report

    split = canonical_split(split)
    x, y = load_split(data, split) if faces is None else faces
    total = len(x)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    task = progress.add_task(f"accuracy on {split}", total=len(models)) if progress else None
    results = []
    for m in models:
        clf = Classifier(m.path, batch_size=batch_size)
        tta = Classifier(m.path, session=clf.session, batch_size=batch_size, flip_tta=True)
        clf.predict_proba(x[:batch_size])  # warm-up (arena allocation)
        proba, seconds = _timed_proba(clf, x)
        proba_tta, seconds_tta = _timed_proba(tta, x)
        plain_report = classification_report(y, proba.argmax(axis=1))
        tta_report = classification_report(y, proba_tta.argmax(axis=1))
        results.append(
            {
                "model": m.name,
                "architecture": m.architecture,
                "precision": m.precision,
                "providers": clf.providers,
                "seconds": seconds,
                "faces_per_s": len(x) / seconds if seconds > 0 else None,
                "report": plain_report,
                "flip_tta": {
                    "seconds": seconds_tta,
                    "faces_per_s": len(x) / seconds_tta if seconds_tta > 0 else None,
                    "cost_x": seconds_tta / seconds if seconds > 0 else None,
                    "accuracy_delta": tta_report["accuracy"] - plain_report["accuracy"],
                    "macro_f1_delta": tta_report["macro_f1"] - plain_report["macro_f1"],
                    "report": tta_report,
                },
            }
        )
        if progress is not None:
            progress.advance(task)
    return {
        "skipped": None,
        "data": str(data),
        "split": split,
        "n": len(x),
        "split_size": int(total),
        "batch_size": batch_size,
        "note": (
            f"first {len(x)} of {total} {split} faces (quick run)" if len(x) < total else f"all {total} {split} faces"
        ),
        "models": results,
    }

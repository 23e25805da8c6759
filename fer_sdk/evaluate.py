"""Evaluate a model on a FER2013 split: accuracy, macro-F1, per-class report, confusion matrix, calibration."""

from __future__ import annotations

import os
import time
from typing import Any

from .metrics import calibration_report, classification_report


def evaluate(
    data: str | os.PathLike,
    *,
    split: str = "PublicTest",
    model: str | os.PathLike | None = None,
    providers=None,
    batch_size: int = 256,
    flip_tta: bool = False,
    classifier=None,
    faces: tuple | None = None,
    progress: bool = True,
) -> dict:
    """Classify every face of ``split`` in ``data`` (Kaggle CSV/.gz or image folders) and report metrics.

    Pass ``classifier`` to reuse a loaded :class:`fer_sdk.Classifier`; otherwise one is built from
    ``model`` / ``providers`` / ``batch_size`` / ``flip_tta``. Pass ``faces=(x, y)`` when the split is
    already loaded (``data`` then only labels the report). ``progress``: show a bar on stderr (a terminal only,
    and never after ``fer_sdk.progress.set_quiet(True)``).
    """
    from .classifier import Classifier
    from .data import canonical_split, load_split

    x, y = faces if faces is not None else load_split(data, split)
    if classifier is None:
        kwargs: dict[str, Any] = {} if model is None else {"model": model}  # None: the default model
        classifier = Classifier(**kwargs, providers=providers, batch_size=batch_size, flip_tta=flip_tta)
    from .progress import counter

    start = time.perf_counter()
    with counter(f"classifying {canonical_split(split)}", len(x), enabled=progress) as advance:
        proba = classifier.predict_proba(x, progress=advance)
    seconds = time.perf_counter() - start
    report = classification_report(y, proba.argmax(axis=1), labels=tuple(classifier.labels))
    report["calibration"] = calibration_report(y, proba)
    report.update(
        {
            "model": classifier.spec.name if classifier.spec is not None else str(classifier.model_path),
            "data": str(data),
            "split": canonical_split(split),
            "flip_tta": bool(getattr(classifier, "flip_tta", flip_tta)),
            "providers": list(classifier.providers),
            "seconds": round(seconds, 3),
            "faces_per_second": round(len(x) / seconds, 1) if seconds > 0 else None,
        }
    )
    return report


def render_report(report: dict) -> str:
    """Human-readable text of :func:`evaluate`'s report."""
    labels = report["labels"]
    lines = [
        f"model {report['model']} on {report['split']} ({report['n']} faces, {report['data']})",
        f"accuracy {100 * report['accuracy']:.2f} %   macro-F1 {report['macro_f1']:.4f}"
        + ("   (flip TTA)" if report.get("flip_tta") else ""),
        *_calibration_line(report.get("calibration")),
        "",
        f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name in labels:
        c = report["per_class"][name]
        lines.append(f"{name:<10}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}{c['support']:>10d}")
    lines += [
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * 10 + "".join(f"{n[:7]:>8}" for n in labels),
    ]
    for name, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"{name:<10}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def _calibration_line(calibration: dict | None) -> list[str]:
    if not calibration or calibration.get("ece") is None:
        return []
    return [f"calibration: ECE {calibration['ece']:.4f} ({calibration['bins']} bins)   NLL {calibration['nll']:.4f}"]

"""Classification metrics for FER2013 evaluations, in numpy (no scikit-learn at run time).

The definitions are scikit-learn's with ``labels=range(7)`` and ``zero_division=0`` (the tests check them
against it): a prediction outside the labels (e.g. -1 for "no face found") is wrong for accuracy and a false
negative for its true class, and is left out of the confusion matrix.
"""

from __future__ import annotations

import numpy as np

from .constants import EMOTIONS


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(len(num), np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(y_true, y_pred, labels: tuple[str, ...] = EMOTIONS) -> dict:
    """Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix.

    ``y_true`` and ``y_pred`` are integer class indices. The confusion matrix is ``[true][predicted]``.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries, y_pred {y_pred.size}")
    k = len(labels)
    true_in = (y_true >= 0) & (y_true < k)
    pred_in = (y_pred >= 0) & (y_pred < k)
    support = np.bincount(y_true[true_in], minlength=k)
    predicted = np.bincount(y_pred[pred_in], minlength=k)
    hits = np.bincount(y_true[true_in & (y_true == y_pred)], minlength=k)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * hits, predicted + support)
    both = true_in & pred_in
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (y_true[both], y_pred[both]), 1)
    return {
        "n": len(y_true),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
    }


#: Confidence bins of the expected calibration error (the usual 15, equal width).
ECE_BINS = 15


def calibration_report(y_true, proba, bins: int = ECE_BINS) -> dict:
    """How far the top probability is from the accuracy it promises.

    ``ece``: expected calibration error over ``bins`` equal-width confidence bins (Guo et al. 2017): the
    face-weighted mean of |accuracy - mean confidence| per bin. ``nll``: mean negative log-likelihood of the true
    class. ``reliability``: per non-empty bin, its range, faces, accuracy and mean confidence (a reliability
    diagram's points).
    """
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"proba must be (N, classes) for N={len(y)} labels; got shape {p.shape}")
    if len(y) == 0:
        return {"bins": bins, "ece": None, "nll": None, "reliability": []}
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi]; 0 in bin 0
    ece, reliability = 0.0, []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if not n:
            continue
        acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
        ece += n / len(y) * abs(acc - conf)
        reliability.append(
            {"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "accuracy": acc, "confidence": conf}
        )
    true_p = np.clip(p[np.arange(len(y)), np.clip(y, 0, p.shape[1] - 1)], 1e-12, 1.0)
    return {"bins": bins, "ece": float(ece), "nll": float(-np.log(true_p).mean()), "reliability": reliability}

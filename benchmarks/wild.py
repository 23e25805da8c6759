"""Faces in the wild: the whole photo pipeline (decode, detect, crop, classify) on crowd-labelled photos.

    python -m fer_sdk.benchmarks.wild --data ../shared/data/wild [--model deep-int8] [--peer] [--json FILE]

The folder holds ``labels.csv`` (``image,emotion``) and ``images/``. Each photo shows one person; the face
the pipeline reports for it is the largest one it finds. A photo with no face counts as a miss: it is wrong
for accuracy and a false negative for macro-F1 (so these are whole-pipeline numbers, detector included).
Every crop rule of ``fer_sdk.framing`` is measured in one run, with the same model, beside the whole photo
used as the face crop and, with ``--peer``, the ``fer`` package (``fer.FER().detect_emotions``: Haar cascade,
its own CNN), when it is installed.

The labels are noisy (one volunteer a photo): compare rows of one run, do not read the numbers as FER2013's.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_sdk.constants import EMOTIONS

#: Crop rules compared (Classifier keyword arguments); the last is the SDK's default.
RULES: dict[str, dict] = {
    "haar, box + 10 % margin (fer-sdk 0.1 default)": {"detector": "haar", "align": False, "face_margin": 0.1},
    "haar, FER2013 box framing": {"detector": "haar", "align": False},
    "yunet, box + 10 % margin": {"detector": "yunet", "align": False, "face_margin": 0.1},
    "yunet, FER2013 box framing": {"detector": "yunet", "align": False},
    "yunet, aligned to FER2013 (default)": {"detector": "yunet", "align": True},
}
CHUNK = 64


def read_labels(folder: Path) -> list[tuple[Path, int]]:
    """``(photo path, emotion index)`` for every row of ``labels.csv`` whose photo exists."""
    rows = []
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = folder / "images" / row["image"]
            if row["emotion"] in EMOTIONS and path.is_file():
                rows.append((path, EMOTIONS.index(row["emotion"])))
    return rows


def score(y_true: list[int], y_pred: list[int]) -> dict:
    """Found rate, accuracy and macro-F1 over all photos (a miss, -1, is wrong), accuracy over found ones."""
    from fer_sdk.metrics import classification_report

    t, p = np.asarray(y_true), np.asarray(y_pred)
    found = p >= 0
    report = classification_report(t, p)
    return {
        "photos": len(t),
        "found_rate": float(found.mean()) if len(t) else 0.0,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "accuracy_on_found": float((t[found] == p[found]).mean()) if found.any() else 0.0,
    }


def _largest(faces) -> int:
    if not faces:
        return -1
    best = max(faces, key=lambda f: f.box[2] * f.box[3])
    return EMOTIONS.index(best.emotion)


def run_rule(
    model: str, options: dict, photos: list[Path], progress: Callable[[int], None] | None = None
) -> tuple[list[int], float]:
    """Predicted index per photo (-1: no face) with one Classifier, and the seconds it took."""
    from fer_sdk.classifier import Classifier

    preds: list[int] = []
    with Classifier(model, **options) as clf:
        clf.analyze_many(photos[:4])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(photos), CHUNK):
            preds.extend(_largest(faces) for faces in clf.analyze_many(photos[i : i + CHUNK]))
            if progress is not None:
                progress(len(photos[i : i + CHUNK]))
        return preds, time.perf_counter() - start


def run_whole_photo(model: str, photos: list[Path]) -> list[int]:
    from fer_sdk.classifier import Classifier

    clf = Classifier(model)
    return [int(i) for i in clf.predict_proba(photos).argmax(axis=1)]


def run_peer(photos: list[Path]) -> tuple[list[int], float, str] | None:
    """The ``fer`` package's whole pipeline (Haar + its CNN), or None when it is not installed."""
    try:
        import cv2
        from fer import __version__ as fer_version
        from fer.fer import FER
    except ImportError:
        return None
    detector = FER()
    preds = []
    start = time.perf_counter()
    for path in photos:
        found = detector.detect_emotions(cv2.imread(str(path)))
        if not found:
            preds.append(-1)
            continue
        best = max(found, key=lambda f: f["box"][2] * f["box"][3])
        preds.append(EMOTIONS.index(max(best["emotions"], key=best["emotions"].get)))
    return preds, time.perf_counter() - start, fer_version


def measure_wild(
    folder: str | Path,
    *,
    model: str | None = None,
    peer: bool = False,
    limit: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Every crop rule (and the whole photo, and the peer) on the labelled photos of ``folder``."""
    from fer_sdk.registry import default_model_name

    model = model or default_model_name()
    rows = read_labels(Path(folder))
    if limit is not None:
        rows = rows[:limit]
    photos, truth = [p for p, _ in rows], [y for _, y in rows]
    results = []
    for name, options in RULES.items():
        preds, seconds = run_rule(model, options, photos)
        results.append({"rule": name, "options": options, **score(truth, preds), "seconds": seconds})
        log(f"{name}: {results[-1]}")
    results.append(
        {
            "rule": "whole photo as the face crop (no detector)",
            "options": None,
            **score(truth, run_whole_photo(model, photos)),
            "seconds": None,
        }
    )
    log(f"whole photo: {results[-1]}")
    peer_row = None
    if peer:
        got = run_peer(photos)
        if got is None:
            peer_row = {"rule": "fer package", "skipped": "not installed (see benchmarks/README or the README)"}
        else:
            preds, seconds, version = got
            peer_row = {
                "rule": f"fer package {version} (Haar, its own CNN)",
                "options": None,
                **score(truth, preds),
                "seconds": seconds,
            }
        log(f"peer: {peer_row}")
    return {"model": model, "folder": str(folder), "photos": len(photos), "rules": results, "peer": peer_row}


def markdown(report: dict) -> str:
    lines = [
        f"Model `{report['model']}`, {report['photos']} photos. A photo with no face found counts as wrong.",
        "",
        "| crop rule | faces found | accuracy | macro-F1 | accuracy where found |",
        "|---|---|---|---|---|",
    ]
    rows = list(report["rules"]) + ([report["peer"]] if report.get("peer") and "photos" in report["peer"] else [])
    for r in rows:
        lines.append(
            f"| {r['rule']} | {_pct(r['found_rate'])} | {_pct(r['accuracy'])} | {r['macro_f1']:.3f} | "
            f"{_pct(r['accuracy_on_found'])} |"
        )
    return "\n".join(lines) + "\n"


def update_cards(
    folder: str | Path, *, limit: int | None = None, log: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Measure every bundled model and write its rows into its card (``photos_in_the_wild``), Markdown too."""
    from fer_sdk.export.ship import card_markdown

    from fer_sdk.cards import ModelCard
    from fer_sdk.files import atomic_write_json, atomic_write_text
    from fer_sdk.framing import Framing
    from fer_sdk.registry import list_models, models_dir

    done = []
    for spec in list_models():
        if spec.card is None:
            continue
        report = measure_wild(folder, model=spec.name, limit=limit, log=log)
        card_path = models_dir() / spec.card
        card = ModelCard.read(card_path)
        if card.sha256 != spec.sha256:
            raise RuntimeError(f"{card_path} describes another file than {spec.file}; re-ship it first")
        from fer_sdk.classifier import Classifier

        framing = Framing.from_metadata(Classifier(spec.name).metadata).name
        wild = {
            "data": Path(folder).name,
            "photos": report["photos"],
            "command": f"python -m fer_sdk.benchmarks.wild --data {Path(folder).name} --model {spec.name}",
            "rules": [
                {k: r[k] for k in ("rule", "options", "found_rate", "accuracy", "macro_f1")} for r in report["rules"]
            ],
        }
        card = card.replace(framing=framing, photos_in_the_wild=wild)
        atomic_write_json(card_path, card.to_dict())
        atomic_write_text(card_path.with_suffix(".md"), card_markdown(card.to_dict()))
        done.append(spec.name)
        log(f"{spec.name}: card updated")
    return done


def _pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_sdk.benchmarks.wild", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with labels.csv and images/")
    parser.add_argument("--model", default=None, help="bundled name or .onnx path (default: the default model)")
    parser.add_argument("--peer", action="store_true", help="also run the fer package, when installed")
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    parser.add_argument(
        "--cards",
        action="store_true",
        help="measure every bundled model and write the rows into its model card (fer_sdk/models/cards)",
    )
    args = parser.parse_args(argv)
    if args.cards:
        update_cards(args.data, limit=args.limit, log=lambda m: print(m, file=sys.stderr))
        return 0
    report = measure_wild(
        args.data, model=args.model, peer=args.peer, limit=args.limit, log=lambda m: print(m, file=sys.stderr)
    )
    if args.json:
        from fer_sdk.files import atomic_write_json

        atomic_write_json(args.json, report)
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure FER2013's framing: where YuNet puts the landmarks and the box (and Haar the box) on Training faces.

    python -m fer_sdk.benchmarks.framing --data fer2013.csv.gz [--faces 3000] [--seed 0]

Each face is upscaled 4x (INTER_CUBIC) and framed in a replicated border of half its size (a face that fills
its frame is bigger than what the detectors learnt), then the best detection's landmarks and box are taken
back to units of the 48x48 frame. The medians are ``fer_sdk.framing.FER2013``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

UPSCALE = 4
PAD = 0.5


def measure_framing(data: str, *, faces: int = 3000, seed: int = 0) -> dict:
    import cv2

    from fer_sdk.data import load_split
    from fer_sdk.detect import HaarDetector, get_detector

    x, _ = load_split(data, "Training")
    pick = np.random.default_rng(seed).choice(len(x), min(faces, len(x)), replace=False)
    yunet, haar = get_detector("yunet", min_score=0.5), HaarDetector(min_size=(40, 40))
    side = 48 * UPSCALE
    pad = round(PAD * side)
    points, yboxes, hboxes = [], [], []
    for i in pick:
        face = cv2.resize(x[i], (side, side), interpolation=cv2.INTER_CUBIC)
        framed = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        found = yunet.detect_faces(framed)
        if found:
            best = max(found, key=lambda d: d.score)
            points.append((np.asarray(best.landmarks) - pad) / side)
            yboxes.append((np.asarray(best.box, float) - [pad, pad, 0, 0]) / side)
        boxes = haar.detect(framed)
        if boxes:
            hboxes.append((np.asarray(max(boxes, key=lambda b: b[2]), float) - [pad, pad, 0, 0]) / side)
    return {
        "faces": len(pick),
        "yunet_found": len(points) / len(pick),
        "haar_found": len(hboxes) / len(pick),
        "landmarks": np.round(np.median(points, axis=0), 4).tolist(),
        "yunet_box": np.round(np.median(yboxes, axis=0), 4).tolist(),
        "haar_box": np.round(np.median(hboxes, axis=0), 4).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_sdk.benchmarks.framing", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="FER2013 CSV (.csv.gz) with Training")
    parser.add_argument("--faces", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(measure_framing(args.data, faces=args.faces, seed=args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

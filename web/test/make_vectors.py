"""Test vectors for the preprocessing contract, made by Python's own code (fer_sdk, OpenCV).

``web/test/vectors.json`` is checked on both sides: ``npm --prefix web test`` runs web/fer.js on the inputs,
tests/test_web.py runs fer_sdk again, and both must match the outputs (uint8 pixels within 1 level, floats
within 1e-6 relative). Rewrite it after a deliberate change to the contract:

    .venv/bin/python web/test/make_vectors.py
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from fer_sdk.framing import FER2013, aligned_crop, similarity
from fer_sdk.preprocess import Preprocessing, prepare_faces, resize_image, to_gray
from fer_sdk.yunet import YuNetDetector

OUT = Path(__file__).with_name("vectors.json")


def _img(array: np.ndarray) -> dict:
    h, w = array.shape[:2]
    c = 1 if array.ndim == 2 else array.shape[2]
    data = base64.b64encode(np.ascontiguousarray(array, np.uint8).tobytes()).decode("ascii")
    return {"width": w, "height": h, "channels": c, "base64": data}


def _smooth(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A photo-like image (smooth gradients plus noise), so interpolation is exercised on real structure."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = [127 + 100 * np.sin(xx / (5 + 3 * k) + yy / (7 + k)) for k in range(c)]
    img = np.stack(base, axis=-1) + rng.normal(0, 12, (h, w, c))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if c == 1 else img


def make() -> dict:
    rng = np.random.default_rng(2026)
    vectors: dict = {"opencv": cv2.__version__, "gray": [], "resize": [], "similarity": [], "aligned": []}

    for h, w in ((5, 7), (13, 4)):
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        vectors["gray"].append({"input": _img(bgr), "output": _img(to_gray(bgr))})

    for (h, w, c), (dh, dw) in (
        ((101, 67, 1), (48, 48)),  # fractional INTER_AREA
        ((96, 96, 1), (48, 48)),  # whole-number INTER_AREA (2x2 blocks)
        ((40, 60, 3), (20, 30)),  # the detector's canvas of a photo twice its size
        ((45, 75, 3), (27, 45)),  # a fractional detector canvas (0.6x)
        ((50, 49, 1), (48, 48)),  # barely shrinking
        ((20, 30, 1), (48, 48)),  # enlarging: INTER_LINEAR
        ((47, 60, 1), (48, 48)),  # one side grows: INTER_LINEAR
    ):
        img = _smooth(rng, h, w, c)
        out = resize_image(img, dh, dw, "area")
        vectors["resize"].append({"input": _img(img), "width": dw, "height": dh, "method": "area", "output": _img(out)})

    for _ in range(3):
        src = rng.uniform(0, 200, (5, 2))
        dst = np.asarray(FER2013.landmarks)
        vectors["similarity"].append(
            {"src": src.tolist(), "dst": dst.tolist(), "matrix": similarity(src, dst).tolist()}
        )

    prep = Preprocessing(height=48, width=48, scale=1 / 255, offset=0.0, color="gray", resize="area")
    template = np.asarray(FER2013.landmarks)
    for side, angle, (cx, cy), margin in (
        (40, 12.0, (40, 35), 0.0),
        (24, -25.0, (8, 14), 0.0),
        (56, 3.0, (45, 35), 0.1),
    ):
        image = _smooth(rng, 70, 90, 3)
        theta = np.deg2rad(angle)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        landmarks = ((template - 0.5) * side) @ rot.T + (cx, cy) + rng.normal(0, 0.8, (5, 2))
        crop = aligned_crop(image, landmarks, FER2013, margin)
        faces = prepare_faces([crop], prep)[0, :, :, 0]
        vectors["aligned"].append(
            {
                "input": _img(image),
                "landmarks": landmarks.tolist(),
                "margin": margin,
                "crop": _img(crop),
                "face_float32_base64": base64.b64encode(faces.astype("<f4").tobytes()).decode("ascii"),
                "spec": {"height": 48, "width": 48, "scale": 1 / 255, "offset": 0.0, "resize": "area"},
            }
        )

    # YuNet decoding on synthetic heads: a 96x64 padded canvas (3 faces planted, overlaps to suppress)
    ph, pw = 64, 96
    heads = {}
    for s in (8, 16, 32):
        n = (ph // s) * (pw // s)
        heads[f"cls_{s}"] = rng.uniform(0, 0.3, (1, n, 1)).astype(np.float32)
        heads[f"obj_{s}"] = rng.uniform(0, 0.3, (1, n, 1)).astype(np.float32)
        heads[f"bbox_{s}"] = rng.normal(0, 0.5, (1, n, 4)).astype(np.float32)
        heads[f"kps_{s}"] = rng.normal(0.5, 0.5, (1, n, 10)).astype(np.float32)
    for s, cell in ((8, 20), (8, 21), (16, 7), (32, 4)):
        heads[f"cls_{s}"][0, cell] = 0.95
        heads[f"obj_{s}"][0, cell] = 0.9
        heads[f"bbox_{s}"][0, cell, 2:] = (1.2, 1.4) if s == 8 else (0.3, 0.2)
    options = {"min_score": 0.6, "nms_threshold": 0.3, "top_k": 750, "min_face": 0}
    fake = SimpleNamespace(**options, name="vectors")
    raw = YuNetDetector._decode(fake, heads, 0, ph, pw)  # type: ignore[arg-type]
    cases = []
    for scale in (1.0, 0.5):
        photo = (int(ph / scale) - 5, int(pw / scale) - 3)
        found = YuNetDetector._finish(fake, raw, scale, photo)  # type: ignore[arg-type]
        detections = [
            {"box": list(d.box), "score": d.score, "landmarks": [list(p) for p in d.landmarks]} for d in found
        ]
        cases.append({"scale": scale, "photo": [photo[1], photo[0]], "detections": detections})
    vectors["yunet"] = {
        "heads": {k: v.reshape(-1).tolist() for k, v in heads.items()},
        "padded_width": pw,
        "options": options,
        "cases": cases,
    }
    return vectors


def main() -> int:
    OUT.write_text(json.dumps(make(), separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

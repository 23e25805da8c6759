"""Video frames per second, bundled YuNet against the Haar cascade, in one run.

    python -m fer_sdk.benchmarks.video [--model deep-int8] [--size 1280x720] [--repeats 3]

A clip of the three sample photos (40 frames each, 25 fps) is written to a temporary folder at ``--size``;
every frame is analyzed (``--fps`` unset) with ``iter_video_faces``, best of ``--repeats`` after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

FRAMES_PER_PHOTO = 40
DETECTORS = {
    "yunet (default)": {"detector": "yunet"},
    "haar, box + 10 % (0.1 default)": {"detector": "haar", "align": False, "face_margin": 0.1},
}


def measure_video(model: str = "deep-int8", size: tuple[int, int] = (1280, 720), repeats: int = 3) -> list[dict]:
    from fer_sdk.classifier import Classifier
    from fer_sdk.images import load_image
    from fer_sdk.video import iter_video_faces, make_test_video

    from .photos import sample_photos

    rows = []
    with tempfile.TemporaryDirectory(prefix="fer_bench_video_") as tmp:
        clip = make_test_video(
            Path(tmp) / "clip.mp4",
            [load_image(p) for p in sample_photos()],
            frames_per_image=FRAMES_PER_PHOTO,
            fps=25,
            size=size,
        )
        frames = FRAMES_PER_PHOTO * len(sample_photos())
        for name, options in DETECTORS.items():
            with Classifier(model, **options) as clf:
                list(iter_video_faces(clf, clip))
                best, faces = float("inf"), 0
                for _ in range(repeats):
                    start = time.perf_counter()
                    faces = len(list(iter_video_faces(clf, clip)))
                    best = min(best, time.perf_counter() - start)
            rows.append({"detector": name, "frames": frames, "face_rows": faces, "frames_per_s": frames / best})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_sdk.benchmarks.video", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="deep-int8")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    width, _, height = args.size.partition("x")
    rows = measure_video(args.model, (int(width), int(height)), args.repeats)
    print("| detector | frames | face rows | frames/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['frames']} | {r['face_rows']} | {r['frames_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

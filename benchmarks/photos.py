"""Photos end to end: decode, detect faces, classify; per-stage times and photos per second.

Stages are timed with the SDK's public pieces, as ``Classifier.analyze`` chains them: ``images.load_image``
(read + decode), the default face detector (``detect.get_detector()``, OpenCV Haar), then ``crop_face`` +
``Classifier.predict_proba`` on all faces of the photo in one batch. ``analyze_ms`` times ``analyze(path)``
itself; photos/s comes from it. Besides the bundled samples, a 1920x1080 photo is made in a temporary folder
by upscaling a sample and padding it (never written into the package).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

#: ``Classifier``'s default margin around detected faces (its ``face_margin`` argument).
FACE_MARGIN = 0.1
HD = (1920, 1080)


def sample_photos() -> list[Path]:
    """The photos bundled in ``fer_sdk/samples`` (sorted)."""
    import fer_sdk.samples

    folder = Path(fer_sdk.samples.__file__).resolve().parent
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_hd_photo(source: Path, folder: Path) -> Path:
    """``source`` scaled up (INTER_LINEAR) to fit 1920x1080 and padded with gray to exactly that size."""
    import cv2

    from fer_sdk.images import load_image

    image = load_image(source)
    h, w = image.shape[:2]
    scale = min(HD[0] / w, HD[1] / h)
    nw, nh = min(HD[0], round(w * scale)), min(HD[1], round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    left, top = (HD[0] - nw) // 2, (HD[1] - nh) // 2
    value = 128 if resized.ndim == 2 else (128, 128, 128)
    padded = cv2.copyMakeBorder(
        resized, top, HD[1] - nh - top, left, HD[0] - nw - left, cv2.BORDER_CONSTANT, value=value
    )
    ok, data = cv2.imencode(".jpg", padded, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode the 1080p test photo")
    out = folder / f"{source.stem}_1080p.jpg"
    out.write_bytes(data.tobytes())  # a throwaway file in a temporary folder, not an SDK output
    return out


def _stages(clf, detector, path: Path) -> tuple[dict[str, float], int]:
    from fer_sdk.images import load_image
    from fer_sdk.preprocess import crop_face

    clock = time.perf_counter
    t0 = clock()
    image = load_image(path)
    t1 = clock()
    boxes = detector.detect(image)
    t2 = clock()
    if boxes:
        clf.predict_proba([crop_face(image, box, FACE_MARGIN) for box in boxes])
    t3 = clock()
    return {"decode": t1 - t0, "detect": t2 - t1, "classify": t3 - t2}, len(boxes)


def measure_photos(
    model: str | os.PathLike,
    *,
    photos: list[Path] | None = None,
    quick: bool = False,
    time_budget_s: float = 20.0,
    progress=None,
) -> dict:
    """The ``photos`` section of bench.json for ``model`` (bundled name or path)."""
    from fer_sdk.classifier import Classifier
    from fer_sdk.detect import get_detector

    photos = sample_photos() if photos is None else [Path(p) for p in photos]
    if not photos:
        return {"skipped": "no photos: fer_sdk/samples holds no .jpg/.png and none were passed", "items": []}
    min_reps, max_reps = (1, 1) if quick else (5, 50)
    clf = Classifier(model)
    detector = get_detector(None)
    with tempfile.TemporaryDirectory(prefix="fer_bench_photos_") as tmp:
        items = [(p.name, p) for p in (photos[:1] if quick else photos)]
        items.append((f"{photos[0].stem} padded to 1920x1080", make_hd_photo(photos[0], Path(tmp))))
        task = progress.add_task("photos", total=min_reps * len(items)) if progress else None
        for _, path in items:  # warm-up: load the detector cascade, ORT arenas, file cache
            _stages(clf, detector, path)
            if not quick:
                clf.analyze(path)
        stage_times: dict[str, dict[str, list[float]]] = {
            n: {"decode": [], "detect": [], "classify": []} for n, _ in items
        }
        analyze_times: dict[str, list[float]] = {n: [] for n, _ in items}
        faces: dict[str, int] = {}
        sizes: dict[str, tuple[int, int, int]] = {}
        start, reps = time.perf_counter(), 0
        while reps < max_reps and (reps < min_reps or time.perf_counter() - start < time_budget_s):
            if progress is not None and reps >= min_reps:
                progress.update(task, total=(reps + 1) * len(items))
            for name, path in items:  # interleaved, like the runtime rounds
                st, faces[name] = _stages(clf, detector, path)
                for k, v in st.items():
                    stage_times[name][k].append(v)
                t0 = time.perf_counter()
                clf.analyze(path)
                analyze_times[name].append(time.perf_counter() - t0)
                if progress is not None:
                    progress.advance(task)
            reps += 1
        for name, path in items:
            import cv2

            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            sizes[name] = (int(img.shape[1]), int(img.shape[0]), path.stat().st_size)
    rows = []
    for name, _ in items:
        med = {k: float(np.median(v)) * 1e3 for k, v in stage_times[name].items()}
        analyze_ms = float(np.median(analyze_times[name])) * 1e3
        rows.append(
            {
                "photo": name,
                "width": sizes[name][0],
                "height": sizes[name][1],
                "file_bytes": sizes[name][2],
                "faces": faces[name],
                "decode_ms": med["decode"],
                "detect_ms": med["detect"],
                "classify_ms": med["classify"],
                "stages_total_ms": sum(med.values()),
                "analyze_ms": analyze_ms,
                "analyze_p95_ms": float(np.percentile(analyze_times[name], 95)) * 1e3,
                "photos_per_s": 1e3 / analyze_ms if analyze_ms > 0 else None,
                "repetitions": len(analyze_times[name]),
            }
        )
    samples = [r for r in rows if "1920x1080" not in r["photo"]]
    total = sum(r["analyze_ms"] for r in samples)
    return {
        "skipped": None,
        "model": str(model),
        "providers": clf.providers,
        "detector": repr(detector),
        "threads": "ONNX Runtime default",
        "items": rows,
        "samples_photos_per_s": len(samples) * 1e3 / total if total > 0 else None,
        "quick": quick,
        "note": (
            ("Quick run: the first sample and the 1080p photo only, one repetition. " if quick else "")
            + "Single thread of photos, one analyze() call at a time; stage times are medians over repetitions "
            "(decode includes reading the file from the page cache; classify includes cropping and preprocessing)."
        ),
    }

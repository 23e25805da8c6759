"""Photos end to end: decode, detect, crop, classify; stage times, photos per second, and the ``fer`` package.

Three photos are made in a temporary folder from the astronaut sample (one face): 512x512, 1920x1080 and
3840x2160 (scaled with INTER_LINEAR and padded with gray; never written into the package). For each, in one
run and interleaved round by round:

- ``analyze_ms``: ``Classifier.analyze(path)``, one call at a time (decode + detect + crop + classify);
- stage times with the same public pieces ``analyze`` chains: ``images.load_image``, ``Classifier.detect``
  (the default detector, the bundled YuNet), ``Classifier.crop`` + ``predict_proba``;
- ``many_photos_per_s``: ``analyze_many`` on ``MANY`` copies of the photo (decoding and detection on all cores);
- ``peer_ms``: the ``fer`` package, ``FER().detect_emotions(cv2.imread(path))`` (its defaults: Haar cascade,
  its TFLite CNN), when it is installed (``pip install --no-deps fer==25.10.3 pandas tqdm requests pillow`` into an
  environment with the train extra; it is no dependency of fer-sdk). Ratios compare photos per second.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"512x512": (512, 512), "1080p": (1920, 1080), "4K": (3840, 2160)}
MANY = 8


def sample_photos() -> list[Path]:
    """The photos bundled in ``fer_sdk/samples`` (sorted)."""
    import fer_sdk.samples

    folder = Path(fer_sdk.samples.__file__).resolve().parent
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_photo(source: Path, folder: Path, size: tuple[int, int], label: str) -> Path:
    """``source`` scaled to fit ``size`` (width, height) and padded with gray to exactly that size, as JPEG."""
    import cv2

    from fer_sdk.images import load_image

    image = load_image(source)
    h, w = image.shape[:2]
    scale = min(size[0] / w, size[1] / h)
    nw, nh = min(size[0], round(w * scale)), min(size[1], round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    left, top = (size[0] - nw) // 2, (size[1] - nh) // 2
    value = 128 if resized.ndim == 2 else (128, 128, 128)
    padded = cv2.copyMakeBorder(
        resized, top, size[1] - nh - top, left, size[0] - nw - left, cv2.BORDER_CONSTANT, value=value
    )
    ok, data = cv2.imencode(".jpg", padded, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the {label} test photo")
    out = folder / f"{source.stem}_{label}.jpg"
    out.write_bytes(data.tobytes())  # a throwaway file in a temporary folder, not an SDK output
    return out


def _stages(clf, path: Path) -> tuple[dict[str, float], int]:
    from fer_sdk.images import load_image

    clock = time.perf_counter
    t0 = clock()
    image = load_image(path)
    t1 = clock()
    found = clf.detect(image)
    t2 = clock()
    if found:
        clf.predict_proba([clf.crop(image, d) for d in found])
    t3 = clock()
    return {"decode": t1 - t0, "detect": t2 - t1, "classify": t3 - t2}, len(found)


def load_peer():
    """``(detect_emotions callable, version)`` of the ``fer`` package, or ``None`` when it cannot be imported."""
    try:
        import cv2
        from fer import __version__ as version
        from fer.fer import FER
    except Exception:  # noqa: BLE001  (an optional peer: any import failure means "not measured")
        return None
    detector = FER()
    return (lambda path: detector.detect_emotions(cv2.imread(str(path)))), version


def measure_photos(
    model: str | os.PathLike,
    *,
    photos: list[Path] | None = None,
    quick: bool = False,
    time_budget_s: float = 30.0,
    peer: bool = True,
    progress=None,
) -> dict:
    """The ``photos`` section of bench.json for ``model`` (bundled name or path).

    ``photos``: the source photo(s); the first is scaled to each of ``SIZES`` (default: the astronaut sample).
    """
    from fer_sdk.classifier import Classifier

    sources = sample_photos() if photos is None else [Path(p) for p in photos]
    sources = [p for p in sources if p.stem == "astronaut"] or sources
    if not sources:
        return {"skipped": "no photos: fer_sdk/samples holds no .jpg/.png and none were passed", "items": []}
    min_reps, max_reps = (1, 1) if quick else (5, 40)
    clf = Classifier(model)
    peer_fn = load_peer() if peer else None
    with tempfile.TemporaryDirectory(prefix="fer_bench_photos_") as tmp:
        sizes = dict(list(SIZES.items())[:2]) if quick else SIZES
        items = [(label, make_photo(sources[0], Path(tmp), size, label)) for label, size in sizes.items()]
        task = progress.add_task("photos", total=min_reps * len(items)) if progress else None
        for _, path in items:  # warm-up: ORT arenas, file cache, the peer's TensorFlow
            _stages(clf, path)
            clf.analyze_many([path] * 2)
            if peer_fn is not None:
                peer_fn[0](path)
        times: dict[str, dict[str, list[float]]] = {
            n: {"decode": [], "detect": [], "classify": [], "analyze": [], "many": [], "peer": []} for n, _ in items
        }
        faces: dict[str, int] = {}
        peer_faces: dict[str, int] = {}
        start, reps = time.perf_counter(), 0
        while reps < max_reps and (reps < min_reps or time.perf_counter() - start < time_budget_s):
            if progress is not None and reps >= min_reps:
                progress.update(task, total=(reps + 1) * len(items))
            for name, path in items:  # interleaved, so machine noise hits every row alike
                st, faces[name] = _stages(clf, path)
                for k, v in st.items():
                    times[name][k].append(v)
                t0 = time.perf_counter()
                clf.analyze(path)
                times[name]["analyze"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                clf.analyze_many([path] * MANY)
                times[name]["many"].append((time.perf_counter() - t0) / MANY)
                if peer_fn is not None:
                    t0 = time.perf_counter()
                    peer_faces[name] = len(peer_fn[0](path))
                    times[name]["peer"].append(time.perf_counter() - t0)
                if progress is not None:
                    progress.advance(task)
            reps += 1
        file_bytes = {name: path.stat().st_size for name, path in items}
    clf.close()
    rows = []
    for name, _ in items:
        med = {k: float(np.median(v)) * 1e3 if v else None for k, v in times[name].items()}
        width, height = sizes[name]
        analyze_ms, peer_ms, many_ms = med["analyze"], med["peer"], med["many"]
        rows.append(
            {
                "photo": name,
                "width": width,
                "height": height,
                "file_bytes": file_bytes[name],
                "faces": faces[name],
                "decode_ms": med["decode"],
                "detect_ms": med["detect"],
                "classify_ms": med["classify"],
                "stages_total_ms": med["decode"] + med["detect"] + med["classify"],
                "analyze_ms": analyze_ms,
                "analyze_p95_ms": float(np.percentile(times[name]["analyze"], 95)) * 1e3,
                "photos_per_s": 1e3 / analyze_ms if analyze_ms else None,
                "many_photos_per_s": 1e3 / many_ms if many_ms else None,
                "peer_ms": peer_ms,
                "peer_faces": peer_faces.get(name),
                "peer_photos_per_s": 1e3 / peer_ms if peer_ms else None,
                "speedup_vs_peer": peer_ms / analyze_ms if peer_ms and analyze_ms else None,
                "many_speedup_vs_peer": peer_ms / many_ms if peer_ms and many_ms else None,
                "repetitions": len(times[name]["analyze"]),
            }
        )
    return {
        "skipped": None,
        "model": str(model),
        "providers": clf.providers,
        "detector": repr(clf.detector),
        "peer": None if peer_fn is None else f"fer {peer_fn[1]} (FER().detect_emotions, Haar + TFLite CNN)",
        "threads": "ONNX Runtime default (classifier), 1 per detecting thread (YuNet)",
        "items": rows,
        "quick": quick,
        "note": (
            ("Quick run: two sizes, one repetition. " if quick else "")
            + "analyze() is one call at a time; analyze_many decodes and detects on all cores; stage times are "
            "medians over repetitions (decode includes reading the file from the page cache; classify includes "
            "cropping and preprocessing). The peer, when installed, runs on the same photo in the same round."
        ),
    }

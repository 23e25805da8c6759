"""The browser page measured in a real headless Chromium: what it finds, how fast, and what it downloads.

    fer-sdk web --measure reports/web [--repeats 10] [--model deep-int8] [PHOTO ...]

Serves the page (``fer_sdk.webapp``) on a free localhost port, opens it in the system's Chromium (Debian's
``chromium`` package; ``FER_SDK_CHROMIUM`` or ``--chromium`` names another executable; nothing downloads a
browser) through Playwright, feeds the photos (default: the bundled samples) to the page's file input, and
reads the page's own results and timings (``window.fer``). Then re-runs the photos ``--repeats`` times warm.
Writes ``browser.json`` (faces per photo, timings, download sizes, machine) and ``screenshot.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import DependencyError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FIX = (
    "install Debian's chromium (apt-get install chromium) or set FER_SDK_CHROMIUM to a Chromium/Chrome executable"
)


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium executable: ``explicit``, ``$FER_SDK_CHROMIUM``, or the first of ``BROWSERS`` on PATH."""
    candidate = explicit or os.environ.get("FER_SDK_CHROMIUM")
    if candidate:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found is None:
            raise DependencyError(f"Chromium executable {candidate!r} not found; {CHROMIUM_FIX}")
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise DependencyError(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); {CHROMIUM_FIX}")


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise DependencyError(
            "the browser run needs Playwright's Python package (no browser download): pip install playwright"
        ) from None
    return sync_playwright


def run_page(
    photos: list[Path],
    *,
    model: str | None = None,
    repeats: int = 0,
    screenshot: Path | None = None,
    chromium: str | None = None,
    webcam: bool = False,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Load the page in headless Chromium, analyze ``photos`` through its file input, return ``window.fer``'s
    results (faces as ``Face.to_dict()``), stats, and with ``repeats`` a warm re-run of the same photos.
    ``webcam=True`` also starts the page's webcam on Chromium's fake camera and counts the frames it analyzed."""
    from ..webapp import serve

    executable = find_chromium(chromium)
    sync_playwright = _playwright()
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with serve(model, port=0) as server, sync_playwright() as pw:
        server.start()
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            console: list[str] = []
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            page.goto(server.url)
            timeout_ms = timeout_s * 1000
            page.wait_for_function("window.fer && ['ready', 'error'].includes(window.fer.state)", timeout=timeout_ms)
            if page.evaluate("window.fer.state") == "error":
                raise RuntimeError(f"the page failed to start: {page.evaluate('window.fer.error')}; console: {console}")
            page.set_input_files("#photos", [str(p) for p in photos])
            page.wait_for_function(
                f"window.fer.state === 'ready' && window.fer.results.length === {len(photos)}", timeout=timeout_ms
            )
            results = page.evaluate(
                "window.fer.results.map(({bgr, canvas, ...rest}) => rest)"  # drop the pixels and the canvas
            )
            stats = page.evaluate("window.fer.stats")
            out: dict[str, Any] = {
                "url": server.url,
                "browser": browser.version,
                "results": results,
                "stats": stats,
                "console": console,
            }
            if repeats:
                out["benchmark"] = page.evaluate(f"window.fer.benchmark({int(repeats)})")
            if webcam:
                page.click("#webcam")
                page.wait_for_function("window.fer.live && window.fer.live.frames >= 3", timeout=timeout_ms)
                out["webcam"] = page.evaluate("window.fer.live")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
                out["screenshot"] = str(screenshot)
            return out
        finally:
            browser.close()


def measure(
    out: Path,
    photos: list[Path] | None = None,
    *,
    repeats: int = 10,
    model: str | None = None,
    chromium: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """``run_page`` on ``photos`` (default: the bundled samples) with ``repeats`` warm re-runs; writes
    ``out/browser.json`` (with the machine described) and ``out/screenshot.png``. Returns the report and the path."""
    from ..benchmarks.machine import describe_machine
    from ..errors import InvalidInputError
    from ..files import atomic_write_json
    from ..samples import sample_names, sample_path

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"--repeats {repeats!r} must be an int >= 1 (e.g. 10)")
    photos = list(photos) if photos else [sample_path(n) for n in sample_names()]
    missing = [str(p) for p in photos if not Path(p).is_file()]
    if missing:
        raise InvalidInputError(f"photos not found: {', '.join(missing)}; pass existing image files")
    report = run_page(photos, model=model, repeats=repeats, screenshot=out / "screenshot.png", chromium=chromium)
    report["python"] = _python_side(photos, repeats, model)
    report["machine"] = describe_machine()
    report["command"] = f"fer-sdk web --measure {out} --repeats {repeats}" + (f" -m {model}" if model else "")
    return report, atomic_write_json(out / "browser.json", report)


def _python_side(photos: list[Path], repeats: int, model: str | None) -> dict[str, Any]:
    """The same photos through Python's ``Classifier.analyze`` (decode included), warm, in the same run."""
    import time

    from .. import Classifier

    with Classifier(model) as clf:
        for p in photos:
            clf.analyze(p)  # warm-up, as the page's first pass
        start = time.perf_counter()
        faces = sum(len(clf.analyze(p)) for _ in range(repeats) for p in photos)
        elapsed = time.perf_counter() - start
    return {"photos": repeats * len(photos), "faces": faces, "ms_per_photo": 1000 * elapsed / (repeats * len(photos))}


def summary_line(report: dict[str, Any]) -> str:
    bench, dl, stats = report["benchmark"], report["stats"]["download"], report["stats"]
    per_face = "-" if bench["ms_per_face"] is None else f"{bench['ms_per_face']:.1f}"
    photos = bench["photos"] // bench["repeats"]
    return (
        f"Chromium {report['browser']}, {stats['threads']} threads: {bench['ms_per_photo']:.1f} ms per photo, "
        f"{per_face} ms per face (warm, {bench['repeats']} x {photos} photos); "
        f"download {dl['transferred_bytes'] / 1e6:.1f} MB ({dl['decoded_bytes'] / 1e6:.1f} MB unpacked); "
        f"Python's Classifier.analyze on the same photos: {report['python']['ms_per_photo']:.1f} ms per photo"
    )


if __name__ == "__main__":
    from fer_sdk.cli import run_as

    run_as(["web", "--measure", "reports/web"])

"""The browser page: what `fer-sdk web` serves, the JavaScript preprocessing against the contract's vectors, and
(slow) the whole page in a real headless Chromium compared with Python's ``Classifier().analyze``."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_sdk import Classifier
from fer_sdk.cli import app
from fer_sdk.errors import InvalidInputError
from fer_sdk.registry import get_spec
from fer_sdk.samples import sample_names, sample_path
from fer_sdk.webapp import PAGE_FILES, SECURITY_HEADERS, WebServer, build_site, export_site, page_dir, serve

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "web" / "test" / "vectors.json"


@pytest.fixture(scope="module")
def site():
    return build_site()


@pytest.fixture(scope="module")
def server(site):
    with WebServer(site, port=0).start() as srv:
        yield srv


def _get(url: str, **headers: str):
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# ------------------------------------------------------------------ what is served


def test_page_and_vendored_runtime_are_installed_with_their_sha256():
    root = page_dir()
    for name in PAGE_FILES:
        assert (root / name).is_file(), name
    manifest = json.loads((root / "vendor" / "manifest.json").read_text())
    assert manifest["package"] == "onnxruntime-web"
    for name, entry in manifest["files"].items():
        data = (root / "vendor" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["size_bytes"]
    assert (root / "vendor" / "LICENSE-onnxruntime-web.txt").is_file()
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == manifest["version"]


def test_models_json_is_the_python_contract(site):
    index = site.index
    with Classifier() as clf:
        assert index["classifier"]["name"] == clf.model_name
        assert index["classifier"]["metadata"] == clf.model_metadata.to_dict()
        det = clf.detector
        assert index["detector"]["options"] == {
            "min_score": det.min_score,
            "nms_threshold": det.nms_threshold,
            "top_k": det.top_k,
            "max_side": det.max_side,
            "min_face": det.min_face,
        }
        assert hashlib.sha256(site.files[index["detector"]["url"]]).hexdigest() == det.sha256
    spec = get_spec(index["classifier"]["name"])
    body = site.files[index["classifier"]["url"]]
    assert hashlib.sha256(body).hexdigest() == index["classifier"]["sha256"] == spec.sha256
    assert len(body) == index["classifier"]["size_bytes"]
    assert json.loads(site.files["models.json"]) == index


def test_server_serves_the_page_with_isolation_headers(server, site):
    status, headers, body = _get(server.url)
    assert status == 200 and body == site.files["index.html"]
    assert headers["Content-Type"].startswith("text/html")
    for key, value in SECURITY_HEADERS.items():
        assert headers[key] == value
    status, headers, body = _get(server.url + "models.json")
    assert status == 200 and json.loads(body) == site.index
    status, headers, body = _get(server.url + "vendor/ort-wasm-simd-threaded.wasm", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == site.files["vendor/ort-wasm-simd-threaded.wasm"]
    assert len(body) < len(site.files["vendor/ort-wasm-simd-threaded.wasm"]) / 2
    status, headers, body = _get(server.url + site.index["classifier"]["url"] + "?v=1")
    assert status == 200 and body == site.files[site.index["classifier"]["url"]]
    assert "Content-Encoding" not in headers  # ONNX weights barely compress: sent as they are


@pytest.mark.parametrize(
    "path", ["../fer_sdk/registry.py", "%2e%2e/pyproject.toml", "vendor/", "models/deep.onnx", "web/app.js", "x"]
)
def test_server_serves_nothing_but_the_site(server, path):
    status, _, body = _get(server.url + path)
    assert status == 404, path
    assert b"not part of the fer-sdk page" in body


def test_server_refuses_writes_and_answers_head(server):
    request = urllib.request.Request(server.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 405 and err.value.headers["Allow"] == "GET, HEAD"
    request = urllib.request.Request(server.url + "app.js", method="HEAD")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 1000


def test_a_busy_port_is_a_clear_error(server, site):
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(InvalidInputError, match=r"--port \(0 picks a free one\)"):
        WebServer(site, port=port)
    with pytest.raises(InvalidInputError, match="port=-1"):
        WebServer(site, port=-1)


def test_litert_and_unknown_models_are_refused_with_the_fix():
    with pytest.raises(InvalidInputError, match="browser runs ONNX models"):
        build_site("deep-int8-litert")
    with pytest.raises(Exception, match="nope"):
        build_site("nope")


def test_a_user_onnx_file_is_served_by_its_own_name(tmp_path):
    path = tmp_path / "mine.onnx"
    shutil.copyfile(get_spec("shallow-int8").path, path)
    site = build_site(path)
    assert site.index["classifier"]["name"] == "mine"
    assert site.index["classifier"]["url"] == "models/mine.onnx"
    assert site.files["models/mine.onnx"] == path.read_bytes()


def test_export_writes_a_complete_static_site_and_never_overwrites(tmp_path, site):
    dest = export_site(tmp_path / "site")
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert written == {*site.files, "_headers"}
    for rel, data in site.files.items():
        assert (dest / rel).read_bytes() == data
    assert "Cross-Origin-Embedder-Policy: require-corp" in (dest / "_headers").read_text()
    before = (dest / "index.html").read_bytes()
    with pytest.raises(InvalidInputError, match="not empty"):
        export_site(dest)
    assert (dest / "index.html").read_bytes() == before
    (tmp_path / "file").write_text("keep")
    with pytest.raises(InvalidInputError, match="is a file"):
        export_site(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_site(empty) / "models.json").is_file()
    with pytest.raises(InvalidInputError):
        export_site(tmp_path / "bad", "deep-int8-litert")
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_cli_web_export_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["web", "--export", str(tmp_path / "out"), "-m", "shallow-int8"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "models.json").read_text())["classifier"]["name"] == "shallow-int8"
    result = runner.invoke(app, ["web", "--export", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nothing is overwritten" in result.output
    result = runner.invoke(app, ["web", "--port", "70000"])
    assert result.exit_code == 2 and "port=70000" in result.output


# ------------------------------------------------------------------ one contract, two languages


def _vectors_module():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS.parent / "make_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pixels(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["base64"]), np.uint8)


def test_python_still_produces_the_committed_contract_vectors():
    fresh = _vectors_module().make()
    committed = json.loads(VECTORS.read_text())
    for section in ("gray", "resize", "aligned"):
        assert len(fresh[section]) == len(committed[section])
        for new, old in zip(fresh[section], committed[section]):
            for key in ("output", "crop"):
                if key in old:
                    diff = np.abs(_pixels(new[key]).astype(int) - _pixels(old[key]))
                    assert new[key]["width"] == old[key]["width"] and diff.max() <= 1, (section, key)
            if "face_float32_base64" in old:
                a = np.frombuffer(base64.b64decode(new["face_float32_base64"]), "<f4")
                b = np.frombuffer(base64.b64decode(old["face_float32_base64"]), "<f4")
                assert np.abs(a - b).max() <= 1.5 / 255
    for new, old in zip(fresh["similarity"], committed["similarity"]):
        np.testing.assert_allclose(new["matrix"], old["matrix"], atol=1e-9)
    assert fresh["yunet"]["cases"] == committed["yunet"]["cases"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (CI installs it)")
def test_javascript_matches_the_contract_vectors():
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=ROOT / "web", capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 6" in result.stdout


# ------------------------------------------------------------------ the page in a real browser


def _chromium_or_skip() -> str:
    from fer_sdk.benchmarks.web import find_chromium

    from fer_sdk.errors import DependencyError

    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("FER_SDK_REQUIRE_BROWSER"):
            raise
        pytest.skip("playwright is not installed")
    try:
        return find_chromium()
    except DependencyError:
        if os.environ.get("FER_SDK_REQUIRE_BROWSER"):  # .ci/run sets it: there the browser test must run
            raise
        pytest.skip("no Chromium on this machine (apt-get install chromium)")


@pytest.mark.slow
def test_the_page_in_chromium_finds_and_classifies_like_python(tmp_path):
    from fer_sdk.benchmarks.web import run_page

    chromium = _chromium_or_skip()
    bogus = tmp_path / "not-a-photo.jpg"
    bogus.write_bytes(b"this is text, not a JPEG")
    photos = [sample_path(n) for n in sample_names()] + [bogus]
    screenshot = ROOT / "reports" / "web" / "test-screenshot.png"
    report = run_page(photos, repeats=1, screenshot=screenshot, chromium=chromium, webcam=True)

    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {p.name for p in photos}
    assert "error" in by_name[bogus.name] and by_name[bogus.name]["error"]
    faces_seen = 0
    with Classifier() as clf:
        for name in sample_names():
            got = by_name[name]
            assert "error" not in got, got
            want = clf.analyze(sample_path(name))
            assert len(got["faces"]) == len(want) > 0, name
            for js, py in zip(got["faces"], want):
                assert np.abs(np.subtract(js["box"], py.box)).max() <= 1, (name, js["box"], py.box)
                assert js["emotion"] == py.emotion, name
                diff = max(abs(js["emotions"][k] - p) for k, p in py.emotions.items())
                assert diff <= 0.02, (name, diff)
                assert abs(sum(js["emotions"].values()) - 1) < 1e-3
                assert abs(js["detection_score"] - py.detection_score) < 0.01
                faces_seen += 1
    stats = report["stats"]
    assert stats["cross_origin_isolated"] is True and stats["model"] == "deep-int8"
    sizes = stats["download"]["files"]
    assert sizes["deep-int8.onnx"]["decoded_bytes"] == get_spec("deep-int8").path.stat().st_size
    assert (
        sizes["ort-wasm-simd-threaded.wasm"]["transferred_bytes"]
        < sizes["ort-wasm-simd-threaded.wasm"]["decoded_bytes"]
    )
    assert report["benchmark"]["faces"] == faces_seen and report["benchmark"]["ms_per_photo"] > 0
    assert report["webcam"]["frames"] >= 3  # Chromium's fake camera, through getUserMedia and the same pipeline
    assert not [line for line in report["console"] if line.startswith("pageerror")], report["console"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {screenshot}")  # part of the test output (pytest -s / -rA)


@pytest.mark.slow
def test_fer_sdk_web_serves_a_page_chromium_can_load(tmp_path):
    """The CLI's own server (not the test fixture) starts, and the page reaches 'ready' in Chromium."""
    chromium = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with serve(port=0) as srv, sync_playwright() as pw:
        srv.start()
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(srv.url)
            page.wait_for_function("window.fer && window.fer.state === 'ready'", timeout=120_000)
            assert "deep-int8" in page.inner_text("#about")
        finally:
            browser.close()

"""``fer-sdk web``: the browser page (the repository's ``web/``, installed as ``fer_sdk.web``) with the runtime and
models it needs, served on localhost or written out as a static site.

The page runs everything in the browser (``web/fer.js`` on onnxruntime-web's WebAssembly backend): the server
only hands out files, all of them known up front and held in memory (about 20 MB): the page, the vendored
onnxruntime-web files (sha256 in ``web/vendor/manifest.json``), the bundled YuNet detector, one classifier, and
``models.json``, which tells the page the files' sha256 (checked in the browser too), the classifier's metadata
(``fer_sdk.metadata.ModelMetadata``) and the detector's settings, so both sides follow one contract.

Responses carry ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``:
with them the page is cross-origin isolated and onnxruntime-web may use threads. Text and WebAssembly go out
gzip-compressed to browsers that accept it (the 14.8 MB runtime travels as 3.8 MB).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import InvalidInputError, ModelError
from .registry import REINSTALL, read_verified_file

log = logging.getLogger(__name__)

PAGE_FILES = ("index.html", "app.js", "fer.js", "style.css")
DEFAULT_PORT = 8765
#: Every response (the page, the runtime, the models) carries these: cross-origin isolation enables threads.
SECURITY_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}
_COMPRESS = (".html", ".js", ".mjs", ".css", ".json", ".wasm")
_MODEL_FIX = "pass a bundled ONNX model name (fer-sdk models) or a .onnx file exported by fer-sdk"


def page_dir() -> Path:
    """The folder holding the page and ``vendor/`` (``web/`` in a checkout, ``fer_sdk/web`` when installed)."""
    return Path(str(resources.files("fer_sdk.web")))


@dataclass(frozen=True)
class Site:
    """Every file the page needs, by URL path (``"index.html"``, ``"models/deep-int8.onnx"``, ...)."""

    files: dict[str, bytes]
    index: dict[str, Any]
    _gzipped: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def gzipped(self, path: str) -> bytes | None:
        """The gzip-compressed body of ``path`` (made once, on first request), or None when it is not compressed."""
        if not path.endswith(_COMPRESS):
            return None
        with self._lock:
            if path not in self._gzipped:
                self._gzipped[path] = gzip.compress(self.files[path], compresslevel=6, mtime=0)
            return self._gzipped[path]


def _vendor_files(root: Path) -> tuple[dict[str, bytes], str]:
    try:
        manifest = json.loads((root / "vendor" / "manifest.json").read_text(encoding="utf-8"))
        entries = {str(name): str(entry["sha256"]) for name, entry in manifest["files"].items()}
        version = str(manifest["version"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(
            f"the web page's onnxruntime-web files are missing or unreadable ({exc}); {REINSTALL}"
        ) from None
    files = {
        f"vendor/{name}": read_verified_file(root / "vendor" / name, sha, what="onnxruntime-web file")
        for name, sha in entries.items()
    }
    return files, version


def _classifier(model: str | os.PathLike | None) -> tuple[str, str, bytes, dict[str, Any]]:
    """``(name, file name, bytes, metadata dict)`` of the model the page classifies with (ONNX only)."""
    from .registry import default_model_name, get_spec, read_verified, resolve_model
    from .runtime import create_session, read_metadata

    model = default_model_name() if model is None else model
    path, spec = resolve_model(model, verify=False)
    if (spec is not None and spec.backend != "onnxruntime") or path.suffix.lower() != ".onnx":
        raise InvalidInputError(
            f"model {model!r} is a {path.suffix} file; the browser runs ONNX models through onnxruntime-web: "
            f"{_MODEL_FIX} (e.g. deep-int8)"
        )
    if spec is not None:
        data, name = read_verified(get_spec(spec.name)), spec.name
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"model file {path} cannot be read ({exc}); {_MODEL_FIX}") from None
        name = path.stem
    meta = read_metadata(create_session(data, None, 1), path)
    spec_in = meta.input
    if (spec_in.layout, spec_in.channels, spec_in.color) != ("NHWC", 1, "gray") or spec_in.resize not in (
        "area",
        "linear",
    ):
        raise ModelError(
            f"model {model!r} takes {spec_in.layout} {spec_in.color} input with resize {spec_in.resize!r}; the page "
            f"implements NHWC gray models with resize 'area' or 'linear': {_MODEL_FIX}"
        )
    return name, path.name, data, meta.to_dict()


def build_site(model: str | os.PathLike | None = None) -> Site:
    """Collect the page, the runtime, the detector and ``model`` (default: the default bundled model)."""
    from .detect import bundled_yunet_file
    from .version import __version__
    from .yunet import YuNetDetector

    root = page_dir()
    files: dict[str, bytes] = {}
    for name in PAGE_FILES:
        try:
            files[name] = (root / name).read_bytes()
        except OSError as exc:
            raise ModelError(f"the web page file {root / name} is missing ({exc}); {REINSTALL}") from None
    vendor, ort_web = _vendor_files(root)
    files.update(vendor)

    det_file, det_bytes = bundled_yunet_file()
    detector = YuNetDetector(det_bytes)  # its defaults are the page's settings, as for Classifier()
    name, cls_file, cls_bytes, meta = _classifier(model)
    if cls_file == det_file:  # a user's model named like the detector: keep both
        cls_file = f"classifier-{cls_file}"
    files[f"models/{det_file}"] = det_bytes
    files[f"models/{cls_file}"] = cls_bytes
    index = {
        "fer_sdk": __version__,
        "runtime": {"onnxruntime_web": ort_web},
        "classifier": {
            "name": name,
            "url": f"models/{cls_file}",
            "sha256": hashlib.sha256(cls_bytes).hexdigest(),
            "size_bytes": len(cls_bytes),
            "metadata": meta,
        },
        "detector": {
            "name": "yunet",
            "url": f"models/{det_file}",
            "sha256": detector.sha256,
            "size_bytes": len(det_bytes),
            "options": {
                "min_score": detector.min_score,
                "nms_threshold": detector.nms_threshold,
                "top_k": detector.top_k,
                "max_side": detector.max_side,
                "min_face": detector.min_face,
            },
        },
    }
    files["models.json"] = (json.dumps(index, indent=2) + "\n").encode()
    return Site(files, index)


# ------------------------------------------------------------------ serving


class _Handler(BaseHTTPRequestHandler):
    site: Site  # set on the subclass made per server
    server_version = "fer-sdk-web"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(head=False)

    def do_HEAD(self) -> None:
        self._send(head=True)

    def _refuse(self) -> None:
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are served\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _plain(self, status: HTTPStatus, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path).lstrip("/") or "index.html"
        body = self.site.files.get(path)
        if body is None:
            self._plain(HTTPStatus.NOT_FOUND, f"{path}: not part of the fer-sdk page\n")
            return
        compressed = self.site.gzipped(path) if "gzip" in self.headers.get("Accept-Encoding", "") else None
        self.send_response(HTTPStatus.OK)
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Content-Type", _TYPES.get(Path(path).suffix, "application/octet-stream"))
        self.send_header("Cache-Control", "no-cache")
        if compressed is not None:
            body = compressed
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class WebServer:
    """The page on ``http://host:port/``; ``start()`` serves from a background thread, ``serve_forever()`` here.

    ``port=0`` takes a free port (``url`` says which). Use as a context manager to stop it.
    """

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidInputError(f"port={port!r} must be an int in 0..65535 (0 picks a free port), e.g. 8765")
        handler = type("Handler", (_Handler,), {"site": site})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}); pass another --port (0 picks a free one) "
                "or --host"
            ) from None
        self._server.daemon_threads = True
        self.site = site
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fer_sdk-web", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(model: str | os.PathLike | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> WebServer:
    """A ``WebServer`` for the page with ``model`` (not started: call ``start()`` or ``serve_forever()``)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: other machines can load the page (it uploads nothing, but see --host)", host)
    return WebServer(build_site(model), host, port)


# ------------------------------------------------------------------ a static copy

#: For static hosts that read it (Netlify, Cloudflare Pages): the headers that let onnxruntime-web use threads.
_HEADERS_FILE = "/*\n" + "".join(f"  {k}: {v}\n" for k, v in SECURITY_HEADERS.items())


def export_site(dest: str | os.PathLike, model: str | os.PathLike | None = None) -> Path:
    """Write the page, runtime and models into the folder ``dest`` (new, or empty) for any static web server.

    Written into a temporary folder beside ``dest`` and renamed into place, so ``dest`` is complete or absent.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        what = "a file" if not dest.is_dir() else "a folder that is not empty"
        raise InvalidInputError(f"--export {dest} is {what}; pass a new or empty folder (nothing is overwritten)")
    site = build_site(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for rel, data in site.files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / "_headers").write_text(_HEADERS_FILE, encoding="utf-8")
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest

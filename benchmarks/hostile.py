"""A corpus of hostile inputs, each run through the real ``fer-sdk`` console script in its own process.

    python -m fer_sdk.benchmarks.hostile [--only NAME_PART] [--json FILE]

Every case is built small in a temporary folder (bombs are headers that claim gigapixels, devices and FIFOs
are made with ``os.mkfifo`` and symlinks), run with ``fer-sdk ...``, and reported with its exit code, wall
time and peak memory (the process's ``VmHWM``, read from ``/proc`` every 20 ms while it runs: ``ru_maxrss``
would also count the memory of the parent it was forked from). A case passes when
it exits with one of its expected codes inside ``TIME_LIMIT_S`` and ``MEMORY_LIMIT_MB``, and its check (files
left untouched, rows kept) holds. The classes follow the reliability guarantees in the README.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TIME_LIMIT_S = 30.0
MEMORY_LIMIT_MB = 1024.0
ADDRESS_SPACE_CAP = 8 << 30  # a safety net for this machine should a case misbehave


@dataclass
class Case:
    name: str
    kind: str
    build: Callable[[Path], list[str]]  # makes the files, returns the fer-sdk arguments
    expect: tuple[int, ...]
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # returns a problem or None
    needs: tuple[str, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------ builders
def _samples() -> Path:
    import fer_sdk.samples

    return Path(fer_sdk.samples.__file__).resolve().parent


def _jpeg(path: Path) -> Path:
    shutil.copy(_samples() / "astronaut.jpg", path)
    return path


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + bytes(64)


def _jpeg_claiming(width: int, height: int, junk: bytes = b"") -> bytes:
    data = (_samples() / "astronaut.jpg").read_bytes()
    i = 2
    while True:  # patch the SOF0/SOF2 dimensions of a real JPEG
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            data = data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
            break
        i += 2 + length
    return data[:2] + junk + data[2:]


def _tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 1), (259, 3, 1, 4), (262, 3, 1, 0)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def _tiff_duplicate_width() -> bytes:
    width = height = 10000
    strip = zlib.compress(bytes(width * height), 9)
    entries = [
        (256, 4, 1, width),
        (256, 4, 1, 1),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, 1, None),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
    ]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_at if value is None else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    return out + struct.pack("<I", 0) + strip


def _jpeg_fake_sof() -> bytes:
    import cv2
    import numpy as np

    real = cv2.imencode(".jpg", np.zeros((8000, 8000), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 10])[1].tobytes()
    fake = b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00"
    return b"\xff\xd8\xff\x00\x00\x06\xff\xfe" + struct.pack(">H", 2 + len(fake)) + fake + real[2:]


def _bigtiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 16, 1, width), (257, 16, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries) + bytes(8)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + bytes(64)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _photo_case(name: str, data_fn: Callable[[], bytes], filename: str = "photo.jpg", expect=(3,)) -> Case:
    return Case(name, "bomb", lambda d: ["predict", str(_write(d / filename, data_fn()))], expect)


def _folder_with(extra: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        folder = d / "photos"
        folder.mkdir()
        _jpeg(folder / "a_good.jpg")
        extra(folder)
        return ["predict", str(folder), "--csv", "-o", str(d / "out.csv")]

    return build


def _kept_good_rows(d: Path, result) -> str | None:
    import csv
    import io

    out = d / "out.csv"
    if not out.is_file():
        return "no results file"
    rows = list(csv.DictReader(io.StringIO(out.read_text(errors="replace"))))
    good = [
        r
        for r in rows
        if Path(r.get("source") or "").name == "a_good.jpg" and r.get("face") == "0" and not r.get("error")
    ]
    return None if good else "the good photo's row is missing"


def _untouched(path_name: str, digest_of: Callable[[Path], bytes]):
    def check(d: Path, result) -> str | None:
        before = (d / f"{path_name}.before").read_bytes()
        return None if digest_of(d / path_name) == before else f"{path_name} was changed"

    return check


def _snapshot(path: Path) -> None:
    Path(str(path) + ".before").write_bytes(path.read_bytes())


def _csv_gz(rows: list[bytes]) -> bytes:
    return gzip.compress(b"emotion,pixels,Usage\n" + b"".join(rows), 1)


def _good_row() -> bytes:
    return b"3," + b" ".join([b"128"] * 2304) + b",Training\n"


def _stream_gz(path: Path, header: bytes, chunk: bytes, repeats: int) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header)
        for _ in range(repeats):
            fh.write(chunk)
    return path


def _tiny_model(
    path: Path, meta_patch: Callable[[dict], dict | str], *, bias: float = 0.0, softmax: bool = True
) -> Path:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    import fer_sdk
    from fer_sdk.constants import EMOTIONS, METADATA_KEY

    nodes = [
        helper.make_node("Flatten", ["faces"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits" if softmax else "probabilities"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("faces", TensorProto.FLOAT, ["N", 48, 48, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 7])],
        initializer=[
            numpy_helper.from_array(np.zeros((2304, 7), np.float32), "w"),
            numpy_helper.from_array(np.full(7, bias, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "format": 1,
        "labels": list(EMOTIONS),
        "input": {
            "name": "faces",
            "height": 48,
            "width": 48,
            "channels": 1,
            "layout": "NHWC",
            "dtype": "float32",
            "color": "gray",
            "scale": 1 / 255,
            "offset": 0.0,
            "resize": "area",
        },
        "output": {"name": "probabilities", "kind": "softmax"},
        "architecture": "linear",
        "precision": "fp32",
        "parameters": 2304 * 7,
        "source_sha256": "0" * 64,
        "metrics": {},
        "producer": {"fer_sdk": fer_sdk.__version__},
    }
    patched = meta_patch(meta)
    helper.set_model_props(model, {METADATA_KEY: patched if isinstance(patched, str) else json.dumps(patched)})
    path.write_bytes(model.SerializeToString())
    return path


def _model_case(name: str, patch, expect=(4,), **kw) -> Case:
    def build(d: Path) -> list[str]:
        model = _tiny_model(d / "m.onnx", patch, **kw)
        return ["predict", "--model", str(model), str(_jpeg(d / "a.jpg")), "--json"]

    return Case(name, "metadata", build, expect, needs=("onnx",))


def _set(path: list, value):
    def patch(meta: dict) -> dict:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return meta

    return patch


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _video(path: Path, size: tuple[int, int], frames: int, fourcc: str = "MJPG") -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, size)
    frame = np.full((size[1], size[0], 3), 128, np.uint8)
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


def cases() -> list[Case]:
    out: list[Case] = []
    # 1. decompression bombs: every format's size is known before anything is decoded
    for fmt, fn in {
        "png-60000x60000": lambda: _png_claiming(60000, 60000),
        "jpeg-20000x20000": lambda: _jpeg_claiming(20000, 20000),
        "jpeg-junk-before-sof-20000x20000": lambda: _jpeg_claiming(20000, 20000, junk=b"\x00"),
        "jpeg-many-junk-bytes-before-sof": lambda: _jpeg_claiming(20000, 20000, junk=b"\x00" * 300),
        "tiff-1bit-32000x32000": lambda: _tiff_claiming(32000, 32000),
        "tiff-big-endian-header-garbage": lambda: b"MM\x00*" + bytes(60),
        "gif-65535x65535": lambda: b"GIF89a" + struct.pack("<HH", 65535, 65535) + bytes(60),
        "bmp-50000x50000": lambda: b"BM" + bytes(12) + struct.pack("<Iii", 40, 50000, 50000) + bytes(60),
        "webp-vp8x-16384x16384": lambda: (
            b"RIFF"
            + struct.pack("<I", 60)
            + b"WEBPVP8X"
            + struct.pack("<I", 10)
            + bytes(4)
            + (16383).to_bytes(3, "little") * 2
            + bytes(40)
        ),
        "pgm-100000x100000": lambda: b"P5\n100000 100000\n255\n" + bytes(64),
        "avif-header": lambda: struct.pack(">I", 28) + b"ftypavif" + bytes(80),
        "radiance-hdr-named-jpg": lambda: b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 16000 +X 16000\n" + bytes(64),
        "openexr-named-jpg": lambda: b"\x76\x2f\x31\x01" + bytes(100),
        "jpeg2000-named-jpg": lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(100),
        "pfm-named-png": lambda: b"PF\n20000 20000\n-1.0\n" + bytes(64),
        "truncated-png-header": lambda: b"\x89PNG\r\n\x1a\n\x00\x00",
        "empty-file": lambda: b"",
        "text-named-jpg": lambda: b"not an image at all\n" * 10,
    }.items():
        out.append(_photo_case(f"bomb: {fmt}", fn))
    # headers that say one size to a naive reader and another to the decoder
    out.append(
        _photo_case(
            "bomb: pnm comment ended by CR hides the real 20000x20000",
            lambda: b"P4\n#\r20000\n20000 1\n" + b"\x55" * 50_000,
            filename="p.pbm",
        )
    )
    out.append(
        Case(
            "bomb: tiff with ImageWidth twice (1, then 10000)",
            "bomb",
            lambda d: ["predict", str(_write(d / "t.tif", _tiff_duplicate_width())), "--max-pixels", "1000000"],
            (3,),
        )
    )
    out.append(_photo_case("bomb: jpeg FF00 skips over a fake 1x1 SOF hidden in a comment", _jpeg_fake_sof))
    out.append(_photo_case("bomb: bigtiff-100000x100000", lambda: _bigtiff_claiming(100000, 100000), filename="b.tif"))
    out.append(
        Case(
            "bomb: tiff in a folder of good photos keeps the good rows",
            "bomb",
            _folder_with(lambda f: _write(f / "b_bomb.tif", _tiff_claiming(32000, 32000))),
            (8,),
            _kept_good_rows,
        )
    )
    out.append(Case("bomb: image-folder dataset face claiming 60000x60000", "bomb", _bad_face_folder, (5,)))
    out.append(
        Case(
            "bomb: video of 8000x8000 frames (64 MP) refused before decoding",
            "bomb",
            lambda d: ["predict", str(_video(d / "big.avi", (8000, 8000), 2))],
            (3,),
        )
    )
    out.append(
        Case(
            "bomb: video of 4000x4000 frames decoded a few at a time",
            "bomb",
            lambda d: ["predict", str(_video(d / "v.avi", (4000, 4000), 40)), "-o", str(d / "rows.csv")],
            (0,),
        )
    )
    # 2. non-regular files: regular files only, the rest of the run goes on
    for label, maker in {
        "symlink to /dev/zero": lambda f: (f / "b_zero.jpg").symlink_to("/dev/zero"),
        "symlink to /dev/urandom": lambda f: (f / "b_random.jpg").symlink_to("/dev/urandom"),
        "FIFO named .jpg": lambda f: _fifo(f / "b_fifo.jpg"),
        "dangling symlink": lambda f: (f / "b_gone.jpg").symlink_to(f / "nowhere.jpg"),
        "unreadable file": lambda f: (_write(f / "b_locked.jpg", b"x"), os.chmod(f / "b_locked.jpg", 0)),
    }.items():
        out.append(Case(f"non-regular: {label} in a folder", "non-regular", _folder_with(maker), (8,), _kept_good_rows))
    out.append(
        Case(
            "non-regular: an empty folder named .jpg is walked, not read",
            "non-regular",
            _folder_with(lambda f: (f / "b_dir.jpg").mkdir()),
            (0,),
            _kept_good_rows,
        )
    )
    out.append(
        Case(
            "non-regular: a FIFO passed as a photo", "non-regular", lambda d: ["predict", str(_fifo(d / "p.jpg"))], (3,)
        )
    )
    out.append(
        Case("non-regular: /dev/zero passed as a photo", "non-regular", lambda d: ["predict", "/dev/zero"], (3,))
    )
    out.append(
        Case(
            "non-regular: a FIFO as eval --data",
            "non-regular",
            lambda d: ["eval", "--data", str(_fifo(d / "fer.csv"))],
            (5,),
        )
    )
    out.append(
        Case(
            "non-regular: /dev/urandom as eval --data",
            "non-regular",
            lambda d: ["eval", "--data", "/dev/urandom"],
            (5,),
        )
    )
    out.append(
        Case(
            "non-regular: a FIFO passed as a video",
            "non-regular",
            lambda d: ["predict", str(_fifo(d / "clip.mp4"))],
            (2,),
        )
    )
    # 3. outputs that would replace inputs or devices
    out.append(Case("output: -o is the input photo", "output", _o_is_input, (2,), _untouched("a.jpg", Path.read_bytes)))
    out.append(
        Case(
            "output: -o is a hard link to the input photo",
            "output",
            _o_hardlink,
            (2,),
            _untouched("a.jpg", Path.read_bytes),
        )
    )
    out.append(Case("output: -o is the input video", "output", _o_is_video, (2,), _untouched("v.avi", Path.read_bytes)))
    out.append(
        Case(
            "output: -o /dev/null is written into, not replaced",
            "output",
            lambda d: ["predict", str(_jpeg(d / "a.jpg")), "-o", "/dev/null"],
            (0,),
            _devnull_is_device,
        )
    )
    out.append(
        Case(
            "output: --summary is the input video",
            "output",
            lambda d: (_snap_video(d), ["predict", str(d / "v.avi"), "--summary", str(d / "v.avi")])[1],
            (2,),
            _untouched("v.avi", Path.read_bytes),
        )
    )
    out.append(
        Case(
            "output: --annotate into the input folder keeps an unrelated a.png",
            "output",
            _annotate_beside,
            (0,),
            _untouched("in/a.png", Path.read_bytes),
        )
    )
    out.append(Case("output: -o named like the annotated copy", "output", _o_like_annotated, (0,), _both_written))
    out.append(
        Case(
            "output: a failed video run writes its error row, atomically",
            "output",
            _failed_video,
            (2,),
            _failed_video_row,
        )
    )
    out.append(
        Case("output: -o is a folder", "output", lambda d: ["predict", str(_jpeg(d / "a.jpg")), "-o", str(d)], (2,))
    )
    out.append(
        Case(
            "output: export --out is the --data CSV",
            "output",
            _export_over_data,
            (2,),
            _untouched("fer.csv", Path.read_bytes),
            needs=("tensorflow",),
        )
    )
    # 4. dataset bombs
    out.append(
        Case(
            "dataset: a gzip holding one 1 GB row",
            "dataset",
            lambda d: [
                "eval",
                "--data",
                str(_stream_gz(d / "row.csv.gz", b"emotion,pixels,Usage\n3,", b"1 " * (1 << 19), 1024)),
            ],
            (5,),
        )
    )
    out.append(
        Case(
            "dataset: 100 MB of blank lines",
            "dataset",
            lambda d: [
                "eval",
                "--data",
                str(_stream_gz(d / "blank.csv.gz", b"emotion,pixels,Usage\n", b"\n" * (1 << 20), 100)),
            ],
            (5,),
        )
    )
    out.append(
        Case(
            "dataset: a 200 MB pixel field",
            "dataset",
            lambda d: [
                "eval",
                "--data",
                str(_stream_gz(d / "px.csv.gz", b"emotion,pixels,Usage\n0,", b"12 " * (1 << 20), 66)),
            ],
            (5,),
        )
    )
    out.append(Case("dataset: a tar whose member claims 10 GB", "dataset", _tar_claiming, (5,)))
    out.append(
        Case(
            "dataset: a header line of 50 MB",
            "dataset",
            lambda d: ["eval", "--data", str(_stream_gz(d / "hdr.csv.gz", b"", b"x" * (1 << 20), 50))],
            (5,),
        )
    )
    out.append(
        Case(
            "dataset: rows of good length, more than 1 GB unpacked",
            "dataset",
            lambda d: [
                "eval",
                "--data",
                str(_stream_gz(d / "long.csv.gz", b"emotion,pixels,Usage\n", _good_row() * 1000, 120)),
            ],
            (5,),
        )
    )
    out.append(Case("dataset: a zip bomb member", "dataset", _zip_bomb, (5,)))
    out.append(Case("dataset: a tar.gz whose GNU long name is 256 MB", "dataset", _tar_long_name, (5,)))
    out.append(
        Case(
            "dataset: a valid row then garbage",
            "dataset",
            lambda d: ["eval", "--data", str(_write(d / "g.csv.gz", _csv_gz([_good_row(), b"\x00" * 5000])))],
            (5,),
        )
    )
    # 6. the rest
    out.append(
        Case("rest: a path component over 255 bytes among good photos", "rest", _long_name, (8,), _kept_good_rows)
    )
    out.append(Case("rest: a non-UTF-8 file name, CSV to a file", "rest", _non_utf8, (0,), _non_utf8_written))
    out.append(Case("rest: a non-UTF-8 file name, table on stdout", "rest", _non_utf8_table, (0,)))
    out.append(_model_case("metadata: nested 100,000 deep", lambda m: "[" * 100_000 + "]" * 100_000))
    out.append(
        _model_case("metadata: height Infinity", lambda m: json.dumps(m).replace('"height": 48', '"height": Infinity'))
    )
    out.append(_model_case("metadata: scale 1e308", _set(["input", "scale"], 1e308)))
    out.append(_model_case("metadata: offset NaN", lambda m: json.dumps(m).replace('"offset": 0.0', '"offset": NaN')))
    out.append(_model_case("metadata: labels a dict", _set(["labels"], {"a": 1})))
    out.append(
        _model_case(
            "metadata: a 5,000-digit integer",
            lambda m: json.dumps(m).replace('"height": 48', '"height": ' + "9" * 5000),
        )
    )
    out.append(_model_case("metadata: format true", _set(["format"], True)))
    out.append(_model_case("metadata: 2 MB of metadata", _set(["metrics"], {"x": "y" * 2_000_000})))
    out.append(
        _model_case(
            "metadata: framing with 4 landmarks",
            _set(["framing"], {"landmarks": [[0.5, 0.5]] * 4, "yunet_box": [0, 0, 1, 1], "haar_box": [0, 0, 1, 1]}),
        )
    )
    out.append(_model_case("metadata: format 99", _set(["format"], 99)))
    out.append(_model_case("model: outputs NaN", lambda m: m, bias=float("nan")))
    out.append(_model_case("model: outputs negative values", lambda m: m, bias=-1.0, softmax=False))
    out.append(_model_case("model: outputs all zeros", lambda m: m, bias=0.0, softmax=False))
    out.append(
        Case(
            "model: a truncated ONNX file",
            "metadata",
            lambda d: ["predict", "--model", str(_write(d / "m.onnx", b"\x08\x08\x12")), str(_jpeg(d / "a.jpg"))],
            (4,),
        )
    )
    out.append(
        Case(
            "model: a FIFO as the model",
            "metadata",
            lambda d: ["predict", "--model", str(_fifo(d / "m.onnx")), str(_jpeg(d / "a.jpg"))],
            (4,),
        )
    )
    out.append(
        Case(
            "detector: a YuNet path that is garbage",
            "metadata",
            lambda d: ["predict", "--detector", str(_write(d / "y.onnx", b"junk")), str(_jpeg(d / "a.jpg"))],
            (4,),
        )
    )
    out.append(
        Case("options: --min-score 2", "rest", lambda d: ["predict", str(_jpeg(d / "a.jpg")), "--min-score", "2"], (2,))
    )
    out.append(
        Case(
            "options: --smooth on photos", "rest", lambda d: ["predict", str(_jpeg(d / "a.jpg")), "--smooth", "1"], (2,)
        )
    )
    return out


# ----------------------------------------------------------------------------------- case helpers
def _bad_face_folder(d: Path) -> list[str]:
    folder = d / "fer" / "train" / "happy"
    folder.mkdir(parents=True)
    _write(folder / "Training_1.png", _png_claiming(60000, 60000))
    return ["eval", "--data", str(d / "fer")]


def _o_is_input(d: Path) -> list[str]:
    _snapshot(_jpeg(d / "a.jpg"))
    return ["predict", str(d / "a.jpg"), "-o", str(d / "a.jpg")]


def _o_hardlink(d: Path) -> list[str]:
    _snapshot(_jpeg(d / "a.jpg"))
    os.link(d / "a.jpg", d / "link.csv")
    return ["predict", str(d / "a.jpg"), "-o", str(d / "link.csv")]


def _snap_video(d: Path) -> None:
    _snapshot(_video(d / "v.avi", (64, 48), 3))


def _o_is_video(d: Path) -> list[str]:
    _snap_video(d)
    return ["predict", str(d / "v.avi"), "-o", str(d / "v.avi")]


def _devnull_is_device(d: Path, result) -> str | None:
    import stat

    return None if stat.S_ISCHR(os.stat("/dev/null").st_mode) else "/dev/null is no longer a device"


def _annotate_beside(d: Path) -> list[str]:
    folder = d / "in"
    folder.mkdir()
    import cv2

    _ok, data = cv2.imencode(".webp", cv2.imread(str(_samples() / "astronaut.jpg")))
    _write(folder / "a.webp", data.tobytes())
    _write(folder / "a.png", b"an unrelated file the user keeps")
    _snapshot(folder / "a.png")
    return ["predict", str(folder / "a.webp"), "--annotate", str(folder)]


def _o_like_annotated(d: Path) -> list[str]:
    _jpeg(d / "a.jpg")
    (d / "ann").mkdir()
    return ["predict", str(d / "a.jpg"), "--annotate", str(d / "ann"), "-o", str(d / "ann" / "a.jpg")]


def _both_written(d: Path, result) -> str | None:
    names = sorted(p.name for p in (d / "ann").iterdir())
    return None if len(names) == 2 and "a.jpg" in names else f"annotated folder holds {names}"


def _failed_video(d: Path) -> list[str]:
    _write(d / "rows.csv", b"earlier good results\n")
    _write(d / "broken.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    return ["predict", str(d / "broken.mp4"), "--csv", "-o", str(d / "rows.csv")]


def _failed_video_row(d: Path, result) -> str | None:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO((d / "rows.csv").read_text(errors="replace"))))
    if (
        len(rows) != 1
        or rows[0].get("source") != str(d / "broken.mp4")
        or "broken.mp4" not in (rows[0].get("error") or "")
    ):
        return f"rows.csv does not hold the video's one error row: {rows}"
    left = sorted(p.name for p in d.iterdir())
    return None if left == ["broken.mp4", "rows.csv"] else f"the folder holds {left} (a temporary file left?)"


def _export_over_data(d: Path) -> list[str]:
    _write(d / "fer.csv", b"emotion,pixels,Usage\n" + _good_row())
    _snapshot(d / "fer.csv")
    (d / "run").mkdir()
    return ["export", str(d / "run"), "--out", str(d / "fer.csv"), "--data", str(d / "fer.csv")]


def _tar_claiming(d: Path) -> list[str]:
    import tarfile

    info = tarfile.TarInfo("fer2013.csv")
    info.size = 10 << 30
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    _write(d / "fer.tar", header + b"emotion,pixels,Usage\n" + b"0" * 5000)
    return ["eval", "--data", str(d / "fer.tar")]


def _tar_long_name(d: Path) -> list[str]:
    import tarfile

    size = 256 << 20
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, size
    with gzip.open(d / "fer.tar.gz", "wb", compresslevel=1) as fh:
        fh.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        chunk = b"a" * (1 << 20)
        for _ in range(size >> 20):
            fh.write(chunk)
    return ["eval", "--data", str(d / "fer.tar.gz")]


def _zip_bomb(d: Path) -> list[str]:
    import zipfile

    chunk = b"0" * (1 << 20)
    with (
        zipfile.ZipFile(d / "fer.zip", "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("fer2013.csv", "w") as member,
    ):
        member.write(b"emotion,pixels,Usage\n")
        for _ in range(200):
            member.write(chunk)
    return ["eval", "--data", str(d / "fer.zip")]


def _long_name(d: Path) -> list[str]:
    folder = d / "photos"
    folder.mkdir()
    _jpeg(folder / "a_good.jpg")
    return [
        "predict",
        str(folder / "a_good.jpg"),
        str(folder / ("x" * 300 + ".jpg")),
        "--csv",
        "-o",
        str(d / "out.csv"),
    ]


def _non_utf8(d: Path) -> list[str]:
    name = os.fsdecode(b"caf\xe9.jpg")
    _jpeg(d / name)
    return ["predict", str(d / name), "--csv", "-o", str(d / "out.csv")]


def _non_utf8_written(d: Path, result) -> str | None:
    data = (d / "out.csv").read_bytes()
    return None if b"caf\xe9.jpg" in data else "the file name is not in the CSV as its bytes"


def _non_utf8_table(d: Path) -> list[str]:
    name = os.fsdecode(b"na\xefve.jpg")
    _jpeg(d / name)
    return ["predict", str(d / name)]


# ------------------------------------------------------------------------------------------- runner
def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _limit(pid: int) -> None:
    """A safety net for this machine should a case misbehave (Linux; elsewhere nothing)."""
    try:
        import resource

        resource.prlimit(pid, resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
    except (ImportError, AttributeError, OSError):
        pass


class _PeakWatcher(threading.Thread):
    """Reads ``VmHWM`` (peak resident memory of the process's own address space) until the process ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            if "\nState:\tZ" in text:  # exited, not yet reaped: its memory is gone
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.02)


def run_case(case: Case, exe: str) -> dict:
    missing = [m for m in case.needs if not _available(m)]
    if missing:
        return {"case": case.name, "kind": case.kind, "skipped": f"needs {', '.join(missing)}"}
    with tempfile.TemporaryDirectory(prefix="fer_hostile_") as tmp:
        folder = Path(tmp)
        args = case.build(folder)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [exe, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        _limit(proc.pid)
        watcher = _PeakWatcher(proc.pid)
        watcher.start()
        timed_out = False
        try:
            stdout, stderr = proc.communicate(timeout=TIME_LIMIT_S)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGKILL)
            stdout, stderr = proc.communicate()
        seconds = time.perf_counter() - start
        watcher.join()
        peak_mb = watcher.peak_kb / 1024 if watcher.peak_kb else None
        result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
        problem = None
        if timed_out:
            problem = f"ran past {TIME_LIMIT_S:.0f} s"
        elif proc.returncode not in case.expect:
            problem = f"exit {proc.returncode}, expected {case.expect}"
        elif peak_mb is not None and peak_mb > MEMORY_LIMIT_MB:
            problem = f"peak memory {peak_mb:.0f} MB"
        elif case.check is not None:
            problem = case.check(folder, result)
        last = stderr.decode(errors="replace").strip().splitlines()
        return {
            "case": case.name,
            "kind": case.kind,
            "exit": proc.returncode,
            "seconds": round(seconds, 2),
            "peak_mb": None if peak_mb is None else round(peak_mb, 1),
            "ok": problem is None,
            "problem": problem,
            "message": last[-1][:300] if last else "",
        }


def console_script() -> str | None:
    """The ``fer-sdk`` script of this Python's environment (else the one on PATH), or None."""
    beside = Path(sys.executable).with_name("fer-sdk")
    return str(beside) if beside.is_file() else shutil.which("fer-sdk")


def run_all(only: str | None = None, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    exe = console_script()
    if exe is None:
        raise SystemExit("the fer-sdk console script is not installed: pip install -e '.[cpu]'")
    rows = []
    for case in cases():
        if only and only not in case.name:
            continue
        row = run_case(case, exe)
        rows.append(row)
        log(
            f"{'SKIP' if 'skipped' in row else 'ok  ' if row['ok'] else 'FAIL'} {case.name}: "
            f"{row.get('skipped') or row.get('problem') or ''} exit={row.get('exit')} {row.get('seconds')} s "
            f"{row.get('peak_mb')} MB"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_sdk.benchmarks.hostile", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = run_all(args.only, log=lambda m: print(m, file=sys.stderr))
    ran = [r for r in rows if "skipped" not in r]
    print("| case | exit | s | peak MB | ok |\n|---|---|---|---|---|")
    for r in ran:
        print(f"| {r['case']} | {r['exit']} | {r['seconds']} | {r['peak_mb']} | {'yes' if r['ok'] else r['problem']} |")
    print(
        f"\n{sum(r['ok'] for r in ran)} passed, {sum(not r['ok'] for r in ran)} failed, {len(rows) - len(ran)} skipped"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())

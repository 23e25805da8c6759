"""Shared fixtures: real FER2013 faces, tiny real models built with the project's own export step, samples.

``tiny_models`` trains the ``shallow`` architecture for one epoch on 600 FER2013 faces (fresh weights when the
dataset is absent), exports it with ``fer_sdk.export.convert.export_onnx`` and, when the quantizer exists,
quantizes it with ``fer_sdk.export.quantize.quantize_int8``. The result is cached under pytest's cache folder
keyed by the hash of the export code (``FER_SDK_TEST_NO_CACHE=1`` disables that), so a suite exports once.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import fer_sdk
from fer_sdk.constants import EMOTIONS, INPUT_NAME, METADATA_KEY, OUTPUT_NAME

#: The "fer_sdk" ONNX metadata contract (docs/CONTRACTS.md) written out literally, as a model file holds it.
CONTRACT_META = {
    "format": 1,
    "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
    "input": {
        "name": "faces",
        "height": 48,
        "width": 48,
        "channels": 1,
        "layout": "NHWC",
        "dtype": "float32",
        "color": "gray",
        "scale": 0.00392156862745098,
        "offset": 0.0,
        "resize": "area",
    },
    "output": {"name": "probabilities", "kind": "softmax"},
}


REPO = Path(__file__).resolve().parents[1]


def _find_fer_csv() -> Path:
    """FER2013 for the tests: $FER_SDK_FER2013, else the shared data folder beside the checkout."""
    if os.environ.get("FER_SDK_FER2013"):
        return Path(os.environ["FER_SDK_FER2013"])
    candidates = [REPO.parent / "shared/data/fer2013/fer2013.csv.gz", Path("/work/shared/data/fer2013/fer2013.csv.gz")]
    return next((c for c in candidates if c.is_file()), candidates[0])


FER_CSV = _find_fer_csv()
SAMPLES_DIR = Path(fer_sdk.__file__).resolve().parent / "samples"

N_TRAIN = 600  # faces the tiny model trains (and calibrates) on
N_TEST = 300  # faces the tests classify (disjoint from the training rows)
RECIPE = "shallow/1-epoch/adam/seed0/v1"  # bump to invalidate cached tiny models


def read_fer_rows(n: int, path: Path = FER_CSV) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of fer2013.csv.gz: uint8 faces (n, 48, 48) and int64 labels (n,)."""
    faces, labels = [], []
    with gzip.open(path, "rt", encoding="ascii") as fh:
        header = fh.readline().strip().split(",")
        col_e, col_p = header.index("emotion"), header.index("pixels")
        for line in fh:
            parts = line.rstrip("\n").split(",")
            labels.append(int(parts[col_e]))
            faces.append(np.array(parts[col_p].split(), np.uint8).reshape(48, 48))
            if len(faces) == n:
                break
    return np.stack(faces), np.array(labels, np.int64)


def fer_splits(n_train: int, n_val: int):
    """Training ``Splits`` from the first FER2013 rows (skips the test when the data is absent)."""
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV} (set FER_SDK_FER2013)")
    from fer_sdk.export.train import Splits

    x, y = read_fer_rows(n_train + n_val)
    return Splits(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def write_small_fer_csv(path: Path, n_train: int, n_test: int, source: Path = FER_CSV) -> Path:
    """A small FER2013 CSV: the first ``n_train`` Training and ``n_test`` PublicTest rows of ``source``."""
    wanted = {"Training": n_train, "PublicTest": n_test}
    kept: dict[str, list[str]] = {name: [] for name in wanted}
    with gzip.open(source, "rt", encoding="ascii") as fh:
        header = fh.readline()
        for line in fh:
            usage = line.rstrip("\r\n").rsplit(",", 1)[-1]
            if usage in kept and len(kept[usage]) < wanted[usage]:
                kept[usage].append(line if line.endswith("\n") else line + "\n")
                if all(len(kept[k]) == n for k, n in wanted.items()):
                    break
    path.write_text(header + "".join(kept["Training"] + kept["PublicTest"]), encoding="ascii")
    return path


@pytest.fixture(scope="session")
def fer_rows() -> tuple[np.ndarray, np.ndarray]:
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV} (set FER_SDK_FER2013)")
    return read_fer_rows(N_TRAIN + N_TEST)


@pytest.fixture(scope="session")
def fer_faces(fer_rows) -> tuple[np.ndarray, np.ndarray]:
    """300 real FER2013 faces, uint8 (300, 48, 48), and their int64 labels (not used to train tiny models)."""
    faces, labels = fer_rows
    return faces[N_TRAIN:].copy(), labels[N_TRAIN:].copy()


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES_DIR


@dataclass(frozen=True)
class TinyModels:
    """Paths of the tiny exported models. ``int8`` is None when ``export/quantize.py`` is not importable."""

    dir: Path
    fp32: Path
    int8: Path | None
    int8_error: str | None = None

    def require_int8(self) -> Path:
        if self.int8 is None:
            if self.int8_error:
                pytest.fail(f"INT8 quantization of the tiny model failed: {self.int8_error}")
            pytest.skip("fer_sdk.export.quantize is not available")
        return self.int8


def _export_code_hash() -> str:
    digest = hashlib.sha256(RECIPE.encode())
    for rel in ("export/architectures.py", "export/convert.py", "export/quantize.py", "fer_sdk/constants.py"):
        path = REPO / rel
        digest.update(rel.encode() + (path.read_bytes() if path.is_file() else b"<missing>"))
    digest.update(b"fer2013" if FER_CSV.is_file() else b"random")
    return digest.hexdigest()[:16]


def _training_faces() -> tuple[np.ndarray, np.ndarray]:
    if FER_CSV.is_file():
        return read_fer_rows(N_TRAIN)
    rng = np.random.default_rng(0)  # no dataset: random faces still give a valid export and exact parity
    return rng.integers(0, 256, (N_TRAIN, 48, 48), dtype=np.uint8), rng.integers(0, 7, N_TRAIN)


def _export_fp32(path: Path, faces: np.ndarray, labels: np.ndarray) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    keras = pytest.importorskip("keras")
    from fer_sdk.export.architectures import build
    from fer_sdk.export.convert import export_onnx

    keras.utils.set_random_seed(0)
    model = build("shallow")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(faces[..., None].astype("float32") / 255.0, labels, epochs=1, batch_size=64, verbose=0)
    export_onnx(model, path, parity_faces=faces[:256], log=lambda *_: None)


def _quantize(fp32: Path, path: Path, faces: np.ndarray) -> str | None:
    """Quantize to ``path``; return None on success, "" when the quantizer is absent, else the error."""
    try:
        from fer_sdk.export.quantize import quantize_int8
    except ModuleNotFoundError as err:
        if err.name and err.name.endswith("quantize"):
            return ""
        return f"{type(err).__name__}: {err}"
    try:
        quantize_int8(fp32, path, calibration_faces=faces, log=lambda *_: None)
    except Exception as err:  # noqa: BLE001 - reported by TinyModels.require_int8; fp32 tests still run
        return f"{type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="session")
def tiny_models(request, tmp_path_factory) -> TinyModels:
    """A tiny shallow model exported by the project's own export step (fp32, and int8 when available).

    Cached in pytest's cache folder under a hash of the export code; a file is reused only when its marker
    (written after it) exists, and a failed quantization is retried by the next session, never cached.
    """
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is None or os.environ.get("FER_SDK_TEST_NO_CACHE"):
        folder = tmp_path_factory.mktemp("tiny_models")
    else:
        folder = Path(cache.mkdir("fer_sdk_tiny_models")) / _export_code_hash()
        folder.mkdir(exist_ok=True)
    fp32, int8 = folder / "tiny-shallow.onnx", folder / "tiny-shallow-int8.onnx"
    faces = labels = None
    if not (folder / "fp32.done").is_file():
        faces, labels = _training_faces()
        _export_fp32(fp32, faces, labels)
        (folder / "fp32.done").write_text("ok")
    error = None
    if not (folder / "int8.done").is_file():
        if faces is None:
            faces, labels = _training_faces()
        error = _quantize(fp32, int8, faces)
        if error is None:
            (folder / "int8.done").write_text("ok")
    return TinyModels(dir=folder, fp32=fp32, int8=int8 if error is None else None, int8_error=error or None)


def make_linear_onnx(
    path: Path,
    *,
    weights: np.ndarray | None = None,
    labels: list[str] | None = None,
    metadata: bool = True,
    seed: int = 0,
) -> Path:
    """A hand-made ONNX (onnx.helper): faces (N,48,48,1) -> Flatten -> MatMul -> Softmax, optional metadata.

    Needs only ``onnx``; used for metadata edge cases (none, permuted labels) without TensorFlow.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    if weights is None:
        weights = np.random.default_rng(seed).normal(0, 0.05, (48 * 48, 7)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        ],
        "linear",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 48, 48, 1])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 7])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        meta = {
            **copy.deepcopy(CONTRACT_META),
            "labels": list(labels or EMOTIONS),
            "architecture": "linear",
            "precision": "fp32",
            "parameters": int(weights.size),
            "source_sha256": "0" * 64,
            "metrics": {},
            "producer": {"fer_sdk": fer_sdk.__version__},
        }
        helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def make_onnx():
    """``make_onnx(path, weights=None, labels=None, metadata=True, seed=0) -> path`` (see make_linear_onnx)."""
    return make_linear_onnx


def manifest_entry(file: str, data: bytes, **extra) -> dict:
    """A manifest.json entry for ``data`` stored as ``file`` (sha256 and size computed); ``extra`` overrides."""
    entry = {
        "file": file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "architecture": "shallow",
        "precision": "fp32",
        "parameters": 1234,
        "size_bytes": len(data),
        "metrics": {"PublicTest": {"accuracy": 0.5, "macro_f1": 0.4}},
        "card": "cards/tiny.json",
    }
    entry.update(extra)
    return entry


def write_manifest(folder: Path, models: dict, default: str | None = None) -> None:
    from fer_sdk import registry

    manifest = {"default": default or next(iter(models)), "models": models}
    (folder / registry.MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture
def models_dir(tmp_path, monkeypatch) -> Path:
    """An empty bundled-models folder that the registry reads instead of fer_sdk/models."""
    from fer_sdk import registry

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(registry, "MODELS_DIR", folder)
    return folder


# ------------------------------------------------------------------------------ predict's result rows
#: The columns of every ``fer-sdk predict`` row (fer_sdk.rows.ROW_FIELDS), written out literally.
ROW_COLUMNS = (
    "source",
    "frame",
    "time_s",
    "face",
    "track",
    "x",
    "y",
    "w",
    "h",
    "emotion",
    "score",
    *EMOTIONS,
    "detection_score",
    *(f"{p}_{c}" for p in ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth") for c in ("x", "y")),
    "model",
    "model_version",
    "annotated",
    "error",
)
ROW_INT_COLUMNS = ("frame", "face", "track", "x", "y", "w", "h")
ROW_TEXT_COLUMNS = ("source", "emotion", "model", "model_version", "annotated", "error")


def typed_csv_row(row: dict[str, str]) -> dict:
    """A CSV row as JSON has it: "" is null, ints are ints, the other numbers floats, text stays text."""
    out = {}
    for key, value in row.items():
        if value == "":
            out[key] = None
        elif key in ROW_INT_COLUMNS:
            out[key] = int(value)
        elif key in ROW_TEXT_COLUMNS:
            out[key] = value
        else:
            out[key] = float(value)
    return out


def parse_rows(text: str, fmt: str) -> list[dict]:
    """``fer-sdk predict --format fmt`` output (json, jsonl or csv) as a list of typed row dicts, each checked to
    hold exactly ``ROW_COLUMNS`` in order."""
    if fmt == "json":
        rows = json.loads(text)
        assert isinstance(rows, list), type(rows)
    elif fmt == "jsonl":
        assert text == "" or text.endswith("\n"), text[-80:]
        rows = [json.loads(line) for line in text.splitlines()]
    elif fmt == "csv":
        import csv
        import io

        lines = list(csv.reader(io.StringIO(text)))
        assert lines and tuple(lines[0]) == ROW_COLUMNS, lines[:1]
        assert all(len(line) == len(ROW_COLUMNS) for line in lines[1:])
        rows = [typed_csv_row(dict(zip(ROW_COLUMNS, line))) for line in lines[1:]]
    else:
        raise ValueError(fmt)
    for row in rows:
        assert tuple(row) == ROW_COLUMNS, list(row)
        for key in ROW_INT_COLUMNS:
            assert row[key] is None or type(row[key]) is int, (key, row[key])
    return rows

"""The bundled-model registry: manifest parsing, frozen specs, name/path resolution, sha256 checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from conftest import manifest_entry, write_manifest

from fer_sdk import registry
from fer_sdk.errors import ModelError


@pytest.fixture
def bundled(models_dir) -> dict[str, bytes]:
    """Two fake bundled files (the registry only hashes bytes; loading is tested in test_classifier)."""
    files = {"tiny": b"tiny model bytes" * 1000, "tiny-int8": b"int8 model bytes" * 300}
    for name, data in files.items():
        (models_dir / f"{name}.onnx").write_bytes(data)
    write_manifest(
        models_dir,
        {
            name: manifest_entry(f"{name}.onnx", data, precision="int8" if "int8" in name else "fp32")
            for name, data in files.items()
        },
        default="tiny-int8",
    )
    return files


def test_no_manifest_means_empty_registry_and_a_clear_error(models_dir):
    assert registry.list_models() == []
    for call in (
        lambda: registry.get_spec("deep"),
        registry.default_model_name,
        lambda: registry.resolve_model("deep"),
    ):
        with pytest.raises(ModelError, match="no bundled models are installed") as info:
            call()
        assert ".onnx" in str(info.value)


def test_manifest_is_read_into_frozen_specs(bundled, models_dir):
    specs = registry.list_models()
    assert [s.name for s in specs] == ["tiny", "tiny-int8"]
    spec = registry.get_spec("tiny")
    assert spec.file == "tiny.onnx" and spec.precision == "fp32" and spec.parameters == 1234
    assert spec.size_bytes == len(bundled["tiny"]) and spec.card == "cards/tiny.json"
    assert spec.path == models_dir / "tiny.onnx" and spec.path.is_absolute()
    assert spec.metrics["PublicTest"]["accuracy"] == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(TypeError):
        spec.metrics["PublicTest"] = {}
    with pytest.raises(TypeError):
        spec.metrics["PublicTest"]["accuracy"] = 1.0
    assert spec.to_dict()["metrics"] == {"PublicTest": {"accuracy": 0.5, "macro_f1": 0.4}}
    json.dumps(spec.to_dict())
    assert registry.default_model_name() == "tiny-int8"


def test_unknown_name_lists_valid_names(bundled):
    with pytest.raises(ModelError) as info:
        registry.get_spec("huge")
    assert "'huge'" in str(info.value) and "tiny, tiny-int8" in str(info.value)
    with pytest.raises(ModelError, match="tiny-int8"):
        registry.resolve_model("huge")


def test_paths_that_are_not_model_files_say_why(bundled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"pass the string 'tiny', not a path"):
        registry.resolve_model(Path("tiny"))  # a Path always means a file, even when it spells a bundled name
    with pytest.raises(ModelError, match=r"is a folder, not a model file"):
        registry.resolve_model(tmp_path)
    with pytest.raises(ModelError, match=r"'other.onnx' does not exist; pass an existing"):
        registry.resolve_model(Path("other.onnx"))


def test_resolve_bundled_name_verifies_sha256(bundled, models_dir):
    path, spec = registry.resolve_model("tiny")
    assert path == models_dir / "tiny.onnx" and spec is not None and spec.name == "tiny"
    (models_dir / "tiny.onnx").write_bytes(bundled["tiny"][:-1] + b"X")
    with pytest.raises(ModelError) as info:
        registry.resolve_model("tiny")
    message = str(info.value)
    assert "sha256" in message and "tiny.onnx" in message and "reinstall" in message
    assert registry.get_spec("tiny").sha256 in message
    assert hashlib.sha256(bundled["tiny"][:-1] + b"X").hexdigest() in message


def test_missing_bundled_file_says_reinstall(bundled, models_dir):
    (models_dir / "tiny.onnx").unlink()
    with pytest.raises(ModelError, match="missing.*reinstall"):
        registry.resolve_model("tiny")


def test_resolve_path(bundled, tmp_path):
    other = tmp_path / "mine.onnx"
    other.write_bytes(b"anything")
    path, spec = registry.resolve_model(other)
    assert path == other.resolve() and spec is None
    assert registry.resolve_model(str(other)) == (other.resolve(), None)


def test_missing_path_names_it_and_lists_bundled(bundled, tmp_path):
    missing = tmp_path / "nope" / "model.onnx"
    with pytest.raises(ModelError) as info:
        registry.resolve_model(missing)
    assert str(missing) in str(info.value) and "tiny, tiny-int8" in str(info.value)


def test_bare_word_is_a_path_only_when_not_a_bundled_name(bundled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"a local file named like a bundled model")
    (tmp_path / "local").write_bytes(b"a local file")
    assert registry.resolve_model("tiny")[1] is not None  # the bundled name wins
    assert registry.resolve_model("local") == ((tmp_path / "local").resolve(), None)


def test_verify_sha256_chunks_large_files(tmp_path):
    data = bytes(range(256)) * 20_000  # 5 MB: several 1 MiB chunks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert registry.sha256_file(path) == digest
    registry.verify_sha256(path, digest.upper())  # case-insensitive, no error
    with pytest.raises(ModelError, match="sha256 mismatch"):
        registry.verify_sha256(path, "0" * 64)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"default": "x"}', "no 'models'"),
        ('{"models": {"x": {"file": "x.onnx"}}}', "malformed"),
    ],
)
def test_broken_manifest(models_dir, text, match):
    (models_dir / registry.MANIFEST_NAME).write_text(text)
    with pytest.raises(ModelError, match=match):
        registry.list_models()


def test_default_must_be_listed(models_dir):
    write_manifest(models_dir, {"a": manifest_entry("a.onnx", b"a")}, default="b")
    with pytest.raises(ModelError, match="default 'b'"):
        registry.default_model_name()

"""docs/CONTRACTS.md against the typed model contract (fer_sdk.metadata): every field documented, the example
valid, and what the factory writes is what the runtime reads."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from fer_sdk.errors import ModelError
from fer_sdk.metadata import InputSpec, ModelMetadata, OutputSpec

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


def _example() -> dict:
    text = DOC.read_text()
    block = re.search(r"## ONNX files this project exports\n.*?```json\n(.*?)```", text, re.S).group(1)
    return json.loads(block)


def test_the_documented_example_is_a_valid_model_metadata():
    example = _example()
    meta = ModelMetadata.from_dict(example, "CONTRACTS.md")
    assert meta.extra == {}  # every key of the example is a field of the contract
    assert set(example["input"]) == {f.name for f in dataclasses.fields(InputSpec)}
    assert set(example["output"]) == {f.name for f in dataclasses.fields(OutputSpec)}
    assert meta.input == InputSpec() and meta.output == OutputSpec()  # the defaults are the documented values


def test_every_field_is_documented():
    text = DOC.read_text()
    for field in dataclasses.fields(ModelMetadata):
        if field.name != "extra":
            assert f'"{field.name}"' in text, field.name
    assert "ModelMetadata.extra" in text


def test_round_trip_keeps_unknown_keys_and_refuses_unknown_input_keys():
    example = _example()
    meta = ModelMetadata.from_dict({**example, "added_later": {"x": 1}}, "m")
    assert meta.extra == {"added_later": {"x": 1}}
    assert json.loads(meta.to_json()) == {**example, "added_later": {"x": 1}}
    with pytest.raises(ModelError, match=r"'input' has keys \['mean'\]"):
        ModelMetadata.from_dict({**example, "input": {**example["input"], "mean": 0.5}}, "m")
    with pytest.raises(ModelError, match="input.height 'x' is not a positive size"):
        ModelMetadata.from_dict({**example, "input": {**example["input"], "height": "x"}}, "m")
    with pytest.raises(ModelError, match="format 2 is not supported"):
        ModelMetadata.from_dict({**example, "format": 2}, "m")
    for fmt in (0, -1):
        with pytest.raises(ModelError, match=f"format {fmt} is not a version"):
            ModelMetadata.from_dict({**example, "format": fmt}, "m")


@pytest.mark.parametrize("key", ["height", "width", "scale", "offset", "color", "resize"])
def test_the_input_keys_preprocessing_depends_on_are_required(key):
    example = _example()
    spec = {k: v for k, v in example["input"].items() if k != key}
    with pytest.raises(ModelError, match=rf"'input' lacks \['{key}'\]"):
        ModelMetadata.from_dict({**example, "input": spec}, "m")
    optional = {k: v for k, v in example["input"].items() if k not in ("channels", "layout", "dtype")}
    assert ModelMetadata.from_dict({**example, "input": optional}, "m").input == InputSpec()


def test_an_int8_copy_is_a_replace(tiny_models):
    from fer_sdk.runtime import create_session, read_metadata

    meta = read_metadata(create_session(tiny_models.fp32), "tiny")
    int8 = meta.replace(precision="int8", quantization={"format": "QDQ"}, metrics={})
    assert int8.to_dict()["quantization"] == {"format": "QDQ"} and int8.input == meta.input
    assert "quantization" not in meta.to_dict()


def test_every_bundled_card_is_a_model_card_that_agrees_with_the_manifest():
    from fer_sdk.cards import ModelCard
    from fer_sdk.registry import list_models, spec_from_entry

    specs = list_models()
    assert specs
    for spec in specs:
        assert spec_from_entry(spec.name, spec.manifest_entry()) == spec  # written and read by one type
        card = ModelCard.read(spec.card_path)
        assert (card.name, card.file, card.sha256, card.size_bytes) == (
            spec.name,
            spec.file,
            spec.sha256,
            spec.size_bytes,
        )
        assert (card.parameters, card.precision, card.architecture) == (
            spec.parameters,
            spec.precision,
            spec.architecture,
        )
        assert card.evaluation["accuracy"] == spec.metrics["PublicTest"]["accuracy"]
        assert ModelCard.from_dict(card.to_dict()) == card
    doc = DOC.read_text()
    for f in dataclasses.fields(ModelCard):
        if f.name != "extra":
            assert f"`{f.name}`" in doc, f"docs/CONTRACTS.md does not describe the card field {f.name}"


def test_a_malformed_card_is_a_model_error_with_the_fix(tmp_path):
    from fer_sdk.cards import ModelCard

    with pytest.raises(ModelError, match=r"lacks \['file', 'architecture'"):
        ModelCard.from_dict({"name": "x"}, "x.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ModelError, match="cannot be read"):
        ModelCard.read(tmp_path / "bad.json")

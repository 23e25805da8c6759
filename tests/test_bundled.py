"""The models shipped in the package: integrity, metadata, the astronaut check, reproducible accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FER_CSV

from fer_sdk import EMOTIONS, Classifier, list_models
from fer_sdk.registry import default_model_name, models_dir, sha256_file, verify_sha256

SPECS = list_models()
pytestmark = pytest.mark.skipif(not SPECS, reason="no bundled models (fer_sdk/models/manifest.json absent)")


def test_the_four_models_are_bundled():
    assert {s.name for s in SPECS} >= {"shallow", "deep", "shallow-int8", "deep-int8", "ensemble-int8"}
    assert default_model_name() in {s.name for s in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_bundled_model_matches_manifest_and_card(spec):
    assert spec.path.stat().st_size == spec.size_bytes
    assert sha256_file(spec.path) == spec.sha256
    verify_sha256(spec.path, spec.sha256)
    clf = Classifier(spec.name)
    meta = clf.metadata
    assert meta["architecture"] == spec.architecture
    assert meta["precision"] == spec.precision
    assert tuple(meta["labels"]) == EMOTIONS
    card_json = models_dir() / "cards" / f"{spec.name}.json"
    assert spec.card_path == card_json
    card = json.loads(card_json.read_text())
    assert card["sha256"] == spec.sha256
    assert card["evaluation"]["accuracy"] == pytest.approx(spec.metrics["PublicTest"]["accuracy"])
    for suffix in (".md", ".png"):
        assert (card_json.with_suffix(suffix)).stat().st_size > 500


def test_default_classifier_says_happy_on_the_astronaut(samples_dir):
    clf = Classifier()
    assert clf.spec is not None and clf.spec.name == default_model_name()
    faces = clf.analyze(samples_dir / "astronaut.jpg")
    assert len(faces) == 1
    assert faces[0].emotion == "happy"
    assert faces[0].score > 0.5


def test_default_model_accuracy_reproduces_the_manifest():
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV}")
    from fer_sdk.evaluate import evaluate

    spec = next(s for s in SPECS if s.name == default_model_name())
    report = evaluate(FER_CSV, split="PublicTest", model=spec.name)
    assert report["n"] == 3589
    # INT8 kernels may round differently on another CPU generation; allow a few faces of slack.
    assert report["accuracy"] == pytest.approx(spec.metrics["PublicTest"]["accuracy"], abs=0.003)


def test_int8_models_stay_close_to_fp32(fer_faces):
    faces, _ = fer_faces
    for arch in ("shallow", "deep"):
        p32 = Classifier(arch).predict_proba(faces)
        p8 = Classifier(f"{arch}-int8").predict_proba(faces)
        np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
        assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("spec", [s for s in SPECS if s.architecture == "ensemble"], ids=lambda s: s.name)
def test_bundled_ensemble_is_built_from_the_bundled_members(spec):
    """Reshipping a member without rebuilding the ensemble would leave it averaging the old network."""
    members = Classifier(spec.name).metadata["ensemble"]
    bundled = {s.name: s for s in SPECS}
    assert len(members) >= 2 and sum(m["weight"] for m in members) == pytest.approx(1)
    for m in members:
        assert m["name"] in bundled, f"{spec.name} averages {m['name']}, which is not bundled"
        assert m["sha256"] == bundled[m["name"]].sha256, f"{spec.name} was built from an older {m['name']}"
    card = json.loads(spec.card_path.read_text())
    assert card["ensemble"]["members"] == members

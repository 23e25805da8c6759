"""Ensembles as one ONNX file (export/ensemble.py): real merged graphs run by ONNX Runtime against their members."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import FER_CSV, manifest_entry, write_manifest, write_small_fer_csv

from fer_sdk import Classifier
from fer_sdk.errors import InvalidInputError, ModelError

onnx = pytest.importorskip("onnx")
from fer_sdk.export.ensemble import build_ensemble, parse_members


@pytest.fixture
def faces(fer_faces):
    return fer_faces[0][:50]


def _two_linear(tmp_path, make_onnx):
    return make_onnx(tmp_path / "a.onnx", seed=0), make_onnx(tmp_path / "b.onnx", seed=1)


def test_ensemble_is_the_weighted_average_of_its_members(tmp_path, make_onnx, faces):
    a, b = _two_linear(tmp_path, make_onnx)
    out = tmp_path / "ens.onnx"
    report = build_ensemble([(a, 3), (b, 1)], out, log=lambda *_: None)

    clf = Classifier(out)
    expected = 0.75 * Classifier(a).predict_proba(faces) + 0.25 * Classifier(b).predict_proba(faces)
    got = clf.predict_proba(faces)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)
    assert not np.allclose(got, Classifier(a).predict_proba(faces), atol=1e-3)  # both members matter

    meta = clf.metadata
    assert meta["architecture"] == "ensemble" and meta["precision"] == "fp32"
    assert [m["weight"] for m in meta["ensemble"]] == [0.75, 0.25]
    assert [m["file"] for m in meta["ensemble"]] == ["a.onnx", "b.onnx"]
    assert meta["parameters"] == 2 * 48 * 48 * 7
    assert report["members"] == meta["ensemble"] and report["parity"]["max_abs_diff"] <= 1e-6
    with_tta = Classifier(out, flip_tta=True).predict_proba(faces)
    np.testing.assert_allclose(with_tta, (got + Classifier(out).predict_proba(faces[:, :, ::-1].copy())) / 2, atol=1e-6)


def test_ensemble_of_real_fp32_and_int8_exports(tmp_path, tiny_models, faces):
    int8 = tiny_models.require_int8()
    out = tmp_path / "tiny-ens.onnx"
    build_ensemble([f"{tiny_models.fp32}=0.5", f"{int8}=0.5"], out, log=lambda *_: None)
    got = Classifier(out).predict_proba(faces)
    expected = (Classifier(tiny_models.fp32).predict_proba(faces) + Classifier(int8).predict_proba(faces)) / 2
    np.testing.assert_allclose(got, expected, atol=1e-5)
    meta = Classifier(out).metadata
    assert meta["precision"] == "mixed"
    assert [m["precision"] for m in meta["ensemble"]] == ["fp32", "int8"]
    nodes = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in nodes and "Softmax" in nodes  # the INT8 member is copied in unchanged


@pytest.mark.parametrize(
    ("members", "words"),
    [
        (["a=1"], "at least 2 members"),
        (["a=1", "b"], "MODEL=WEIGHT"),
        (["a=1", "b=x"], "'x' is not a number"),
        (["a=1", "b=0"], "0.0 of 'b' must be a finite number > 0"),
        (["a=1", "b=-1"], "must be a finite number > 0"),
        (["a=1", "b=nan"], "must be a finite number > 0"),
        ([("a", 1), ("b", True)], "True of 'b'"),
    ],
)
def test_bad_members_are_refused_with_the_fix(members, words):
    with pytest.raises(InvalidInputError, match=words):
        parse_members(members)


def test_members_with_different_labels_are_refused(tmp_path, make_onnx):
    a = make_onnx(tmp_path / "a.onnx")
    swapped = ["disgust", "angry", "fear", "happy", "sad", "surprise", "neutral"]
    b = make_onnx(tmp_path / "b.onnx", labels=swapped, seed=1)
    out = tmp_path / "ens.onnx"
    with pytest.raises(ModelError, match="differ in metadata 'labels'"):
        build_ensemble([(a, 1), (b, 1)], out)
    assert sorted(tmp_path.iterdir()) == sorted([a, b])


def test_member_problems_are_typed_errors_and_write_nothing(tmp_path, make_onnx):
    a, b = _two_linear(tmp_path, make_onnx)
    bare = make_onnx(tmp_path / "bare.onnx", metadata=False, seed=2)
    out = tmp_path / "ens.onnx"
    with pytest.raises(ModelError, match="bare.onnx has no fer-sdk metadata"):
        build_ensemble([(a, 1), (bare, 1)], out)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx.*is not a loadable ONNX model"):
        build_ensemble([(a, 1), (tmp_path / "junk.onnx", 1)], out)
    batch1 = onnx.load(str(b))
    batch1.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(batch1, str(tmp_path / "batch1.onnx"))
    with pytest.raises(ModelError, match="fixed batch size 1"):
        build_ensemble([(a, 1), (tmp_path / "batch1.onnx", 1)], out)
    with pytest.raises(InvalidInputError, match=r"overflow"):
        build_ensemble([(a, 1e308), (b, 1e308)], out)
    with pytest.raises(ModelError, match="does not exist"):
        build_ensemble([(a, 1), (tmp_path / "missing.onnx", 1)], out)
    with pytest.raises(InvalidInputError, match="repeat a model"):
        build_ensemble([(a, 1), (a, 2)], out)
    with pytest.raises(InvalidInputError, match="is a folder"):
        build_ensemble([(a, 1), (b, 1)], tmp_path)
    build_ensemble([(a, 1), (b, 1)], out, log=lambda *_: None)
    with pytest.raises(InvalidInputError, match="itself an ensemble"):
        build_ensemble([(out, 1), (b, 1)], tmp_path / "nested.onnx")

    old = onnx.load(str(b))
    old.opset_import[0].version = 13
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(ModelError, match=r"different ONNX opsets \[13, 17\]"):
        build_ensemble([(a, 1), (tmp_path / "old.onnx", 1)], tmp_path / "mixed.onnx")
    copy = tmp_path / "sub" / "a.onnx"  # same file name, different file: not a repeat
    copy.parent.mkdir()
    copy.write_bytes(b.read_bytes())
    build_ensemble([(a, 1), (copy, 1)], tmp_path / "same-stem.onnx", log=lambda *_: None)
    assert not (tmp_path / "nested.onnx").exists() and not (tmp_path / "mixed.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_merged_graph_that_disagrees_with_its_members_is_not_written(tmp_path, make_onnx, monkeypatch):
    from fer_sdk.export import ensemble

    a, b = _two_linear(tmp_path, make_onnx)
    real_merge = ensemble.merge
    monkeypatch.setattr(ensemble, "merge", lambda protos, weights, *rest: real_merge(protos, weights[::-1], *rest))
    with pytest.raises(ModelError, match="differs from its members' weighted average"):
        build_ensemble([(a, 3), (b, 1)], tmp_path / "ens.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def test_models_ensemble_cli(tmp_path, make_onnx):
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    a, b = _two_linear(tmp_path, make_onnx)
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(
        app, ["models", "ensemble", "--member", f"{a}=2", "--member", f"{b}=1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "0.67 x a + 0.33 x b" in result.stderr
    weights = [m["weight"] for m in Classifier(out).metadata["ensemble"]]
    assert weights == pytest.approx([2 / 3, 1 / 3])
    result = CliRunner().invoke(app, ["models", "ensemble", "--member", f"{a}=2", "--out", str(tmp_path / "one.onnx")])
    assert result.exit_code == 2 and "fer-sdk: error:" in result.stderr and "at least 2 members" in result.stderr
    # the module entry point is the same command
    cmd = [sys.executable, "-m", "fer_sdk.export.ensemble", "--member", f"{a}=1", "--member", f"{b}=1"]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "module.onnx")], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and (tmp_path / "module.onnx").is_file(), proc.stderr[-2000:]


def test_ship_builds_the_ensemble_with_its_card_and_manifest_entry(tmp_path, make_onnx, models_dir):
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV}")
    pytest.importorskip("matplotlib")
    from fer_sdk.export.ship import ship

    from fer_sdk.evaluate import evaluate

    paths = dict(zip("ab", _two_linear(models_dir, make_onnx)))
    write_manifest(models_dir, {name: manifest_entry(p.name, p.read_bytes()) for name, p in paths.items()})
    csv = write_small_fer_csv(tmp_path / "small.csv", 0, 120)
    with pytest.raises(InvalidInputError, match=r"members \['c'\] are not bundled single models; choose from a, b"):
        ship({}, tmp_path / "never-read.csv", models_dir=models_dir, ensembles={"ens": ["a=1", "c=1"]})

    manifest = ship({}, csv, models_dir=models_dir, ensembles={"ens": ["a=0.6", "b=0.4"]}, log=lambda *_: None)
    entry = manifest["models"]["ens"]
    assert manifest["default"] == "a" and list(manifest["models"]) == ["a", "b", "ens"]
    assert entry["architecture"] == "ensemble" and entry["parameters"] == 2 * 48 * 48 * 7
    clf = Classifier("ens")  # through the registry: the sha256 in the manifest is checked at load
    report = evaluate(csv, split="PublicTest", classifier=clf)
    assert entry["metrics"]["PublicTest"]["accuracy"] == report["accuracy"] and report["n"] == 120
    card = json.loads((models_dir / "cards" / "ens.json").read_text())
    assert [(m["name"], m["weight"]) for m in card["ensemble"]["members"]] == [("a", 0.6), ("b", 0.4)]
    assert card["ensemble"]["command"] == ("fer-sdk models ensemble --member a=0.6 --member b=0.4 --out ens.onnx")
    text = (models_dir / "cards" / "ens.md").read_text()
    assert "Weighted ensemble of `a` and `b`" in text and "| `b` | 0.40 | fp32 |" in text
    assert "optimistic" in text and (models_dir / "cards" / "ens.png").stat().st_size > 500


def test_ship_refuses_bad_ensemble_names_and_members_before_any_work(tmp_path, make_onnx, models_dir, capsys):
    from fer_sdk.export import ship

    paths = dict(zip("ab", _two_linear(models_dir, make_onnx)))
    models = {name: manifest_entry(p.name, p.read_bytes()) for name, p in paths.items()}
    models["ens"] = manifest_entry("ens.onnx", b"x", architecture="ensemble", card="cards/ens.json")
    write_manifest(models_dir, models)
    (models_dir / "cards").mkdir()
    card = {"ensemble": {"members": [{"name": "a", "weight": 0.6}, {"name": "b", "weight": 0.4}]}}
    (models_dir / "cards" / "ens.json").write_text(json.dumps(card))
    never = tmp_path / "never-read.csv"
    cases = {
        "a": (["a=1", "b=1"], "'a' is a model this call or the manifest already has"),
        "x.onnx": (["a=1", "b=1"], "must be a plain model name"),
        "../x": (["a=1", "b=1"], "must be a plain model name"),
        "e2": (["ens=1", "a=1"], r"members \['ens'\] are not bundled single models; choose from a, b"),
        "e3": (["a=1", "a=2"], "repeats a member"),
    }
    for name, (members, words) in cases.items():
        with pytest.raises(InvalidInputError, match=words):
            ship.ship({}, never, models_dir=models_dir, ensembles={name: members})

    # re-shipping a member rebuilds the bundled ensemble with its card's weights
    plan = ship._plan_ensembles(
        json.loads((models_dir / "manifest.json").read_text()),
        models_dir,
        {"a": tmp_path / "run"},
        {},
        log=lambda *_: None,
    )
    assert plan == {"ens": [("a", 0.6), ("b", 0.4)]}
    with pytest.raises(InvalidInputError, match="'a' is a model this call"):  # a run's output name
        ship._plan_ensembles({"models": {}}, models_dir, {"a": tmp_path}, {"a": ["b=1", "a-int8=1"]}, print)

    from typer.testing import CliRunner

    from fer_sdk.cli import app

    for argv, words in (
        (["--ensemble", "e=a"], "members must be MEMBER:WEIGHT"),
        (["--ensemble", "e=a:1,"], "members must be MEMBER:WEIGHT"),
        (["--ensemble", "e=a:1,b:1", "--ensemble", "e=a:1,b:2"], "'e' is given twice"),
        (["--run", "deep"], "must be KEY=VALUE, e.g. --run deep=runs/deep"),
        (["--ensemble", "e=a:1,zz:1"], r"error: ensemble 'e': members \['zz'\]"),
        ([], "at least one --run"),
    ):
        result = CliRunner().invoke(app, ["models", "ship", "--into", str(models_dir), "--data", str(never), *argv])
        assert result.exit_code == 2, (argv, result.output)
        assert re.search(words, result.stderr), (argv, result.stderr)
        assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["models", "ship", "--data", str(never), "--ensemble", "e=a:1,b:1"])
    assert result.exit_code == 2 and "--into" in result.output  # never a guessed destination


def test_a_member_whose_subgraphs_read_the_input_is_merged(tmp_path, make_onnx, faces):
    """Members are fed through an Identity, so an If branch reading ``faces`` from the outer scope still works."""
    from onnx import helper, numpy_helper

    a = make_onnx(tmp_path / "a.onnx", seed=0)
    linear = onnx.load(str(make_onnx(tmp_path / "b.onnx", seed=1)))
    branch = helper.make_graph(list(linear.graph.node), "branch", [], list(linear.graph.output))
    graph = helper.make_graph(
        [helper.make_node("If", ["always"], ["probabilities"], then_branch=branch, else_branch=branch)],
        "with_if",
        list(linear.graph.input),
        list(linear.graph.output),
        initializer=[*linear.graph.initializer, numpy_helper.from_array(np.array(True), "always")],
    )
    model = helper.make_model(graph, opset_imports=list(linear.opset_import))
    model.ir_version = linear.ir_version
    model.metadata_props.extend(linear.metadata_props)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "if.onnx"))

    build_ensemble([(a, 1), (tmp_path / "if.onnx", 1)], tmp_path / "ens.onnx", log=lambda *_: None)
    expected = (Classifier(a).predict_proba(faces) + Classifier(tmp_path / "b.onnx").predict_proba(faces)) / 2
    np.testing.assert_allclose(Classifier(tmp_path / "ens.onnx").predict_proba(faces), expected, atol=1e-6)

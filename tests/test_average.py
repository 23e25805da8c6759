"""Weight averaging (``fer_sdk.export.average``) and the model-card lineage it feeds (``ship.training_stages``).

A real 3-epoch shallow run on 300 FER2013 faces keeps its snapshots; the average is checked weight by weight,
batch-norm statistics against an independent computation, and the card's stage chain and commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fer_splits

pytestmark = pytest.mark.train

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fer_sdk.export import ship
from fer_sdk.export.architectures import with_dtype_policy
from fer_sdk.export.average import average_networks, average_run, parse_epochs, recalibrate_batchnorm
from fer_sdk.export.train import Splits, TrainConfig, to_model_input, train

from fer_sdk.errors import FerSdkError


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def splits() -> Splits:
    return fer_splits(200, 100)


@pytest.fixture(scope="module")
def snap_run(splits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snaprun") / "run"
    cfg = TrainConfig(
        arch="shallow", epochs=3, batch_size=32, warmup_epochs=0, augment_level="flip", snapshots=True, command="pytest"
    )
    train(cfg, splits, out, log=quiet)
    return out


def load(path: Path):
    return keras.models.load_model(path, compile=False)


@pytest.mark.parametrize(("spec", "want"), [("20-22", [20, 21, 22]), ("5", [5]), ("3,1-2, 7", [1, 2, 3, 7])])
def test_parse_epochs(spec, want):
    assert parse_epochs(spec) == want


@pytest.mark.parametrize("spec", ["", "a-b", "5-3", "0-2", "1..4"])
def test_parse_epochs_rejects_bad_specs(spec):
    with pytest.raises(FerSdkError, match="--epochs"):
        parse_epochs(spec)


def test_snapshots_are_the_network_of_every_epoch(snap_run):
    names = sorted(p.name for p in (snap_run / "snapshots").iterdir())
    assert names == ["epoch_001.keras", "epoch_002.keras", "epoch_003.keras"]
    nets = [load(snap_run / "snapshots" / n) for n in names]
    assert all(n.name == "fer_shallow" for n in nets)  # the network, not the augmenting training model
    assert not np.array_equal(nets[1].get_weights()[0], nets[2].get_weights()[0])
    state = json.loads((snap_run / "state.json").read_text())
    best = load(snap_run / "best.keras").get_weights()
    chosen = load(snap_run / "snapshots" / f"epoch_{state['best_epoch']:03d}.keras").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(best, chosen))


def test_average_networks_is_the_mean_of_every_weight(snap_run):
    paths = [snap_run / "snapshots" / f"epoch_{e:03d}.keras" for e in (2, 3)]
    mean = average_networks(paths).get_weights()
    a, b = (load(p).get_weights() for p in paths)
    assert len(mean) == len(a)
    for m, x, y in zip(mean, a, b):
        np.testing.assert_allclose(m, (x.astype(np.float64) + y) / 2, rtol=1e-6, atol=1e-7)


def test_recalibrated_batchnorm_matches_the_data(snap_run, splits):
    net = load(snap_run / "snapshots" / "epoch_003.keras")
    before = net.get_layer("block2_bn").get_weights()
    assert recalibrate_batchnorm(net, splits.x_train) == 2  # block1_bn, block2_bn
    bn = net.get_layer("block2_bn")
    probe = keras.Model(net.input, bn.input)
    a = np.asarray(probe(to_model_input(splits.x_train), training=False), dtype=np.float64).reshape(-1, 64)
    gamma, beta, mean, var = bn.get_weights()
    assert np.array_equal(gamma, before[0]) and np.array_equal(beta, before[1])  # learned params untouched
    assert not np.allclose(mean, before[2])  # the moving mean really was replaced
    np.testing.assert_allclose(mean, a.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, a.var(0), rtol=1e-3, atol=1e-5)


def test_average_run_writes_a_run_the_card_chains(snap_run, splits, tmp_path):
    out = tmp_path / "swa"
    metrics = average_run(snap_run, [2, 3], out, splits, bn_faces=150, command="pytest-average", log=quiet)
    assert (out / "best.keras").is_file() and (out / "config.json").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["average"] == {
        "run": str(snap_run),
        "epochs": [2, 3],
        "bn_faces": 150,
        "bn_layers": 2,
        "seed": 0,
        "command": "pytest-average",
    }
    acc = saved["splits"]["PublicTest"]["accuracy"]
    predicted = load(out / "best.keras").predict(to_model_input(splits.x_val), verbose=0).argmax(1)
    assert acc == pytest.approx((predicted == splits.y_val).mean())

    training = ship.training_stages(out, saved, "shallow")
    first, avg = training["stages"]
    assert "--snapshots" in first["command"] and "--aug-level flip" in first["command"]
    assert (
        first["command"].startswith("fer-sdk train --arch shallow") and "--out runs/shallow-stage1" in first["command"]
    )
    assert "horizontal flip only" in first["recipe"]
    assert avg["command"] == (
        "fer-sdk models average --data fer2013.csv.gz --run runs/shallow-stage1 --epochs 2-3 "
        "--out runs/shallow --bn-faces 150 --seed 0"
    )
    assert "epochs 2-3" in avg["recipe"] and avg["best_epoch"] is None
    assert training["epochs"] == 3
    card = {
        "name": "x",
        "architecture": "shallow",
        "precision": "fp32",
        "parameters": 1,
        "size_bytes": 1,
        "sha256": "0" * 64,
        "evaluation": saved["splits"]["PublicTest"],
        "evaluation_flip_tta": {"accuracy": 0.5},
        "training": training,
        "confusion_png": "cards/x.png",
        "evaluate_command": "fer-sdk eval",
        "known_limits": ["limit"],
    }
    text = ship.card_markdown(card)
    assert "Stage 2: weight average (SWA)" in text and "(best None)" not in text

    with pytest.raises(FerSdkError, match="already holds a run"):
        average_run(snap_run, [2, 3], out, splits, log=quiet)


def test_average_run_errors_name_the_fix(snap_run, splits, tmp_path):
    with pytest.raises(FerSdkError, match=r"epoch_004.keras.*--snapshots"):
        average_run(snap_run, [3, 4], tmp_path / "a", splits, log=quiet)
    with pytest.raises(FerSdkError, match="no metrics.json"):
        average_run(tmp_path, [1], tmp_path / "b", splits, log=quiet)
    other = tmp_path / "deep.keras"
    from fer_sdk.export.architectures import build

    build("deep").save(other)
    with pytest.raises(FerSdkError, match="same network"):
        average_networks([snap_run / "snapshots" / "epoch_001.keras", other])


def test_average_of_bfloat16_snapshots_is_a_float32_network(snap_run, splits, tmp_path):
    # Snapshots saved by a resumed mixed_bfloat16 run (before the fix) kept bf16 layers; the average is float32.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    for epoch in (2, 3):
        path = run / "snapshots" / f"epoch_{epoch:03d}.keras"
        with_dtype_policy(load(path), "mixed_bfloat16").save(path)
        assert load(path).layers[1].dtype_policy.name == "mixed_bfloat16"
    average_run(run, [2, 3], tmp_path / "swa", splits, bn_faces=150, log=quiet)
    averaged = load(tmp_path / "swa" / "best.keras")
    assert {layer.dtype_policy.name for layer in averaged.layers} == {"float32"}
    assert averaged.output.dtype == "float32"

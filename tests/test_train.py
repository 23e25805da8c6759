"""Training on CPU (``fer_sdk.export.train``): architecture tables, resume after SIGKILL, reproducibility,
recipe checks on resume, ``TrainConfig`` validation and ``init_from``.

Runs are tiny (200-300 real FER2013 faces, 1-3 epochs, batch 32) so the module stays well under a minute
of CPU. The kill test drives the real CLI in a subprocess; a test-only hook makes epoch 2 slow and marks
when it started, so the SIGKILL lands mid-epoch deterministically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FER_CSV, fer_splits

pytestmark = pytest.mark.train

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fer_sdk.export.architectures import build
from fer_sdk.export.train import Splits, TrainConfig, build_training_model, train

from fer_sdk.errors import FerSdkError, InvalidInputError

N_TRAIN, N_VAL = 200, 100


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def splits() -> Splits:
    return fer_splits(N_TRAIN, N_VAL)


def small_config(**overrides) -> TrainConfig:
    kwargs = {"arch": "shallow", "epochs": 1, "batch_size": 32, "seed": 0, "command": "pytest"}
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def net_weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, compile=False).get_weights()


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------ architectures

CONV, BN, ACT, POOL, DROP = "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Dropout"


def conv_block(filters: int, kernel: int, size: int, in_channels: int) -> list[tuple]:
    """Conv (same padding) + BN + ReLU + 2x2 max-pool + dropout, as (type, output shape, params, kernel)."""
    return [
        (CONV, (size, size, filters), kernel * kernel * in_channels * filters + filters, kernel),
        (BN, (size, size, filters), 4 * filters, None),
        (ACT, (size, size, filters), 0, None),
        (POOL, (size // 2, size // 2, filters), 0, None),
        (DROP, (size // 2, size // 2, filters), 0, None),
    ]


# The model-factory issue's table for "deep": 4 conv + 2 FC layers, 4,478,727 parameters.
DEEP = [
    *conv_block(64, 3, 48, 1),  # 640 + BN 256
    *conv_block(128, 5, 24, 64),  # 204,928 + BN 512
    *conv_block(512, 3, 12, 128),  # 590,336 + BN 2,048
    *conv_block(512, 3, 6, 512),  # 2,359,808 + BN 2,048
    ("Flatten", (4608,), 0, None),
    ("Dense", (256,), 1_179_904, None),
    (BN, (256,), 1_024, None),
    (ACT, (256,), 0, None),
    (DROP, (256,), 0, None),
    ("Dense", (512,), 131_584, None),
    (BN, (512,), 2_048, None),
    (ACT, (512,), 0, None),
    (DROP, (512,), 0, None),
    ("Dense", (7,), 3_591, None),
]
SHALLOW = [
    *conv_block(32, 3, 48, 1),
    *conv_block(64, 3, 24, 32),
    ("Flatten", (9216,), 0, None),
    ("Dense", (512,), 4_719_104, None),
    (DROP, (512,), 0, None),
    ("Dense", (7,), 3_591, None),
]


def layer_table(model) -> list[tuple]:
    rows = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        kernel = layer.kernel_size[0] if type(layer).__name__ == CONV else None
        rows.append((type(layer).__name__, tuple(layer.output.shape)[1:], layer.count_params(), kernel))
    return rows


@pytest.mark.parametrize(("arch", "table", "total"), [("deep", DEEP, 4_478_727), ("shallow", SHALLOW, 4_741_895)])
def test_architecture_matches_the_table(arch, table, total):
    model = build(arch)
    assert tuple(model.inputs[0].shape) == (None, 48, 48, 1) and tuple(model.outputs[0].shape) == (None, 7)
    assert layer_table(model) == table
    assert sum(row[2] for row in table) == model.count_params() == total
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == CONV:
            assert layer.padding == "same" and layer.kernel_size[0] == layer.kernel_size[1]
        elif kind == ACT:
            assert layer.activation.__name__ == "relu"
        elif kind == POOL:
            assert tuple(layer.pool_size) == (2, 2)
    assert model.layers[-1].activation.__name__ == "softmax"
    if arch == "shallow":
        assert model.get_layer("fc1_dense").activation.__name__ == "relu"


def all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


@pytest.mark.parametrize("arch", ["deep", "shallow"])
def test_networks_hold_no_augmentation_and_take_dropout_rates(arch):
    model = build(arch, dropout=0.3, fc_dropout=0.6)
    assert not [layer.name for layer in all_layers(model) if type(layer).__name__.startswith("Random")]
    rates = {layer.name: layer.rate for layer in model.layers if type(layer).__name__ == DROP}
    assert {n for n, r in rates.items() if r == 0.3} == {n for n in rates if n.startswith("block")}
    assert {n for n, r in rates.items() if r == 0.6} == {n for n in rates if n.startswith("fc")}

    training = build_training_model(small_config(arch=arch, dropout=0.3, fc_dropout=0.6))
    assert any(type(layer).__name__.startswith("Random") for layer in all_layers(training))
    net = training.layers[-1]
    assert not [layer.name for layer in all_layers(net) if type(layer).__name__.startswith("Random")]
    assert layer_table(net) == layer_table(model)


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="'resnet'.*shallow, deep"):
        build("resnet")


# ------------------------------------------------------------------------------------- TrainConfig checks


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"arch": "resnet"}, "'resnet'"),
        ({"optimizer": "adam"}, "'adam'"),
        ({"epochs": 0}, "epochs=0"),
        ({"epochs": -3}, "epochs=-3"),
        ({"epochs": 2.5}, "epochs=2.5"),
        ({"epochs": True}, "epochs=True"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -0.1}, "lr=-0.1"),
        ({"augment_level": "extreme"}, "'extreme'"),
        ({"precision": "float16"}, "'float16'"),
        ({"class_weighting": "inverse"}, "'inverse'"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
        ({"warmup_epochs": -1}, "warmup_epochs=-1"),
        ({"label_smoothing": 1.5}, "label_smoothing=1.5"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"fc_dropout": -0.1}, "fc_dropout=-0.1"),
        ({"time_budget_s": -60.0}, "time_budget_s=-60.0"),
    ],
)
def test_train_config_errors_name_the_value(overrides, named):
    kwargs = {"arch": "shallow", **overrides}
    with pytest.raises(InvalidInputError) as info:  # exit code 2 in the CLI
        TrainConfig(**kwargs)
    assert named in str(info.value)


def test_train_config_defaults_per_optimizer():
    sgd, adamw = TrainConfig(arch="deep"), TrainConfig(arch="shallow", optimizer="adamw")
    assert (sgd.epochs, sgd.lr, sgd.weight_decay) == (120, 0.01, 5e-4)
    assert (adamw.epochs, adamw.lr, adamw.weight_decay) == (60, 1e-3, 0.05)


# -------------------------------------------------------------------------------------- reproducibility


@pytest.fixture(scope="module")
def seeded_runs(splits, tmp_path_factory) -> dict[str, Path]:
    """Three 1-epoch runs on 200 faces: seed 0 twice, seed 1 once."""
    runs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path_factory.mktemp(f"seed{seed}{key}")
        train(small_config(seed=seed), splits, out, log=quiet)
        runs[key] = out
    return runs


def test_same_seed_same_weights_on_cpu(seeded_runs):
    a, b, c = seeded_runs["a"], seeded_runs["b"], seeded_runs["c"]
    assert same_weights(net_weights(a / "best.keras"), net_weights(b / "best.keras"))
    assert same_weights(net_weights(a / "last.keras"), net_weights(b / "last.keras"))
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
    assert ma["splits"] == mb["splits"]

    assert not same_weights(net_weights(a / "best.keras"), net_weights(c / "best.keras"))
    mc = json.loads((c / "metrics.json").read_text())
    assert mc["history"][0]["loss"] != ma["history"][0]["loss"]


# ------------------------------------------------------------------------------------------------ resume


def test_resume_with_another_recipe_names_the_difference(seeded_runs, splits):
    run = seeded_runs["a"]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(InvalidInputError) as info:
        train(small_config(lr=0.05, optimizer="sgd"), splits, run, resume=True, log=quiet)
    message = str(info.value)
    assert str(run) in message and "lr" in message and "0.01" in message and "0.05" in message
    with pytest.raises(FerSdkError, match="augment"):
        train(small_config(augment=False), splits, run, resume=True, log=quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_second_run_into_the_same_folder_needs_resume(seeded_runs, splits):
    run = seeded_runs["b"]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(InvalidInputError, match=r"already holds a run; pass --resume"):
        train(small_config(), splits, run, log=quiet)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_into_a_folder_without_a_run_is_refused(splits, tmp_path):
    typo = tmp_path / "runs" / "deeep"
    with pytest.raises(InvalidInputError, match=r"holds no run to resume.*drop --resume"):
        train(small_config(), splits, typo, resume=True, log=quiet)
    assert not typo.exists()  # nothing created


# Runs the real CLI; epoch 2 (after epoch 1 is saved) touches a marker and sleeps in every batch, so the
# parent can SIGKILL it mid-epoch.
_SLOW_CHILD = r"""
import sys, time
from pathlib import Path
from fer_sdk.export import train as T

marker = Path(sys.argv[1])
make = T._RunCallback.make

def slow_make(cfg, out, state, log, **kw):
    callback = make(cfg, out, state, log, **kw)
    def on_train_batch_begin(batch, logs=None):
        if state["epochs_done"] >= 1:
            marker.touch()
            time.sleep(0.5)
    callback.on_train_batch_begin = on_train_batch_begin
    return callback

T._RunCallback.make = staticmethod(slow_make)
from fer_sdk.cli import app
app(sys.argv[2:], prog_name="fer-sdk")
"""


def test_resume_after_sigkill_loses_no_epoch(tmp_path):
    from conftest import write_small_fer_csv
    from typer.testing import CliRunner

    from fer_sdk.cli import app

    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV}")
    data = write_small_fer_csv(tmp_path / "small.csv", 300, 100)
    run, marker = tmp_path / "run", tmp_path / "epoch2.started"
    args = ["train", "--arch", "shallow", "--data", str(data), "--epochs", "3", "--batch-size", "32", "--out", str(run)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    with open(tmp_path / "child.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", _SLOW_CHILD, str(marker), *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "epoch 2 never started"
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    assert child.returncode == -signal.SIGKILL

    # What the killed run left: epoch 1 intact, loadable, and no stray temporary except a hidden one.
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 1 and len(state["history"]) == 1 and state["planned_epochs"] == 3
    assert json.loads((run / "config.json").read_text())["arch"] == "shallow"
    assert keras.models.load_model(run / "last.keras").count_params() > 0
    epoch1_best = net_weights(run / "best.keras")
    assert not (run / "metrics.json").exists()
    leftovers = [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert len(leftovers) <= 1 and all(name.startswith(".") for name in leftovers)

    # Resumed without --epochs: the run's 3 epochs, not the architecture's default of 60.
    without_epochs = [a for a in args if a not in ("--epochs", "3")]
    result = CliRunner().invoke(app, [*without_epochs, "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and "after epoch 1" in result.stderr
    assert "epoch 1/3" not in result.stderr and "epoch 2/3" in result.stderr and "epoch 3/3" in result.stderr

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][0] == state["history"][0]  # the completed epoch survived untouched
    final = json.loads((run / "state.json").read_text())
    assert final["epochs_done"] == 3 and final["history"] == metrics["history"]
    if final["best_epoch"] == 1:
        assert same_weights(net_weights(run / "best.keras"), epoch1_best)
    assert [p.name for p in run.iterdir() if ".tmp" in p.name] == leftovers


# --------------------------------------------------------------------------------------------- init_from


def test_init_from_starts_from_the_given_weights(seeded_runs):
    source = seeded_runs["a"] / "best.keras"
    start = build_training_model(small_config(init_from=str(source), optimizer="adamw", augment_level="light"))
    assert same_weights(start.layers[-1].get_weights(), net_weights(source))

    keras.utils.set_random_seed(0)
    fresh = build_training_model(small_config())
    assert not same_weights(fresh.layers[-1].get_weights(), net_weights(source))

    with pytest.raises(InvalidInputError, match="not a deep network"):
        build_training_model(small_config(arch="deep", init_from=str(source)))


def test_init_from_run_records_it_and_trains(seeded_runs, splits, tmp_path):
    source = seeded_runs["a"] / "best.keras"
    cfg = small_config(init_from=str(source), lr=1e-4, warmup_epochs=0)
    metrics = train(cfg, splits, tmp_path / "ft", log=quiet)
    assert metrics["config"]["init_from"] == str(source) and metrics["epochs"] == 1
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert saved["init_from"] == str(source)


# ------------------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize(
    ("level", "layers"),
    [
        ("flip", ["RandomFlip"]),
        ("light", ["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom"]),
        (
            "strong",
            ["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast", "RandomErasing"],
        ),
    ],
)
def test_augment_levels_build_their_stacks(level, layers):
    model = build_training_model(small_config(augment_level=level))
    augment = model.layers[0]
    assert augment.name == "augment" and [type(layer).__name__ for layer in augment.layers] == layers
    assert model.layers[-1].name == "fer_shallow"


def test_flip_level_only_mirrors(splits):
    """Training-mode 'flip' output is each face itself or its mirror image, never anything else."""
    from fer_sdk.export.train import to_model_input

    augment = build_training_model(small_config(augment_level="flip")).layers[0]
    x = to_model_input(splits.x_train[:64])
    out = np.asarray(augment(x, training=True))
    same = np.all(np.isclose(out, x), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(out, x[:, :, ::-1]), axis=(1, 2, 3))
    assert np.all(same | mirrored) and mirrored.sum() > 10 and (~mirrored).sum() > 10
    no_aug = build_training_model(small_config(augment=False))
    assert no_aug.layers[0].name == "fer_shallow"


# ------------------------------------------------------------------------------------------ precision


def test_mixed_bfloat16_trains_and_saves_float32_networks(splits, tmp_path):
    cfg = small_config(precision="mixed_bfloat16", epochs=2, snapshots=True, warmup_epochs=0)
    train(cfg, splits, tmp_path / "bf16", log=quiet)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    last = keras.models.load_model(tmp_path / "bf16" / "last.keras")
    assert last.layers[-1].get_layer("block1_conv").dtype_policy.name == "mixed_bfloat16"  # computes in bf16
    for path in (tmp_path / "bf16" / "best.keras", tmp_path / "bf16" / "snapshots" / "epoch_002.keras"):
        net = keras.models.load_model(path, compile=False)
        assert {layer.dtype_policy.name for layer in net.layers} == {"float32"}, path
        assert all(w.dtype == np.float32 for w in net.get_weights())
    snap = keras.models.load_model(tmp_path / "bf16" / "snapshots" / "epoch_002.keras", compile=False)
    assert all(np.array_equal(a, b) for a, b in zip(snap.get_weights(), last.layers[-1].get_weights()))
    metrics = train(cfg, splits, tmp_path / "bf16", resume=True, log=quiet)  # nothing left: evaluates only
    assert metrics["config"]["precision"] == "mixed_bfloat16" and metrics["epochs"] == 2
    # Resumed for one more epoch: the network comes from a reloaded last.keras, and is still saved as float32.
    train(dataclasses.replace(cfg, epochs=3), splits, tmp_path / "bf16", resume=True, log=quiet)
    resumed = keras.models.load_model(tmp_path / "bf16" / "snapshots" / "epoch_003.keras", compile=False)
    assert {layer.dtype_policy.name for layer in resumed.layers} == {"float32"}
    assert resumed.output.dtype == "float32"
    with pytest.raises(InvalidInputError, match="precision"):
        train(small_config(epochs=3), splits, tmp_path / "bf16", resume=True, log=quiet)


_JAX_CHILD = """
import json, sys
from pathlib import Path
from conftest import read_fer_rows
from fer_sdk.export.jax_loop import train_on_device
from fer_sdk.export.train import Splits, TrainConfig
x, y = read_fer_rows(400)
cfg = TrainConfig(arch="shallow", epochs=2, batch_size=32, seed=0, command="pytest", snapshots=True)
metrics = train_on_device(cfg, Splits(x[:300], y[:300], x[300:], y[300:]), Path(sys.argv[1]), log=print)
print("METRICS", json.dumps({"epochs": metrics["epochs"]}))
"""


@pytest.mark.train
def test_the_jax_loop_keeps_the_same_epoch_records_as_keras(tmp_path):
    """export.jax_loop (the GPU machine's loop, Keras 3 on JAX) ends each epoch through train.end_epoch: the same
    state.json, history rows, best and snapshot networks and log lines as the Keras callback."""
    pytest.importorskip("jax")
    if not FER_CSV.is_file():
        pytest.skip(f"FER2013 not found at {FER_CSV}")
    run = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_CHILD, str(run)], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert set(state["history"][0]) == {"epoch", "lr", "seconds", "loss", "accuracy", "val_accuracy"}
    assert 1 <= state["best_epoch"] <= 2 and state["best_val_accuracy"] == max(
        h["val_accuracy"] for h in state["history"]
    )
    assert (run / "best.keras").is_file() and len(list((run / "snapshots").glob("epoch_*.keras"))) == 2
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert (run / "metrics.json").is_file()

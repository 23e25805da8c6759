"""TrainConfig is the one place a training option lives: `fer-sdk train` has an option for every field, and the
recorded recipe's command (``config.cli_args``, ``ship.reproduce_command``) rebuilds the same TrainConfig."""

from __future__ import annotations

import dataclasses
import sys
import types

from fer_sdk.export.config import NOT_OPTIONS, TrainConfig, cli_args, cli_option, config_from_record
from typer.testing import CliRunner

from fer_sdk.cli import app


def _recipe(tmp_path) -> TrainConfig:
    init = tmp_path / "init.keras"
    init.write_bytes(b"weights")
    return TrainConfig(  # every field away from its default
        arch="shallow",
        epochs=7,
        batch_size=32,
        optimizer="adamw",
        lr=0.002,
        weight_decay=0.01,
        warmup_epochs=1,
        label_smoothing=0.05,
        augment=False,
        class_weighting="balanced",
        dropout=0.1,
        fc_dropout=0.2,
        seed=3,
        augment_level="light",
        init_from=str(init),
        time_budget_s=120.0,
        precision="mixed_bfloat16",
        snapshots=True,
        teacher="ensemble-int8",
        teacher_weight=0.7,
    )


def test_every_field_is_a_train_option_and_the_command_rebuilds_the_recipe(tmp_path, monkeypatch):
    cfg = _recipe(tmp_path)
    defaults = TrainConfig(arch="deep")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NOT_OPTIONS:
            assert getattr(cfg, f.name) != getattr(defaults, f.name), f"the test recipe leaves {f.name} at its default"
    args = cli_args(cfg)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NOT_OPTIONS:
            option = cli_option(f.name)
            assert option in args or "--no-" + option[2:] in args, f.name
    seen = {}
    fake = types.ModuleType("fer_sdk.export.train")  # no TensorFlow: the CLI's parsing is what is tested
    fake.load_splits = lambda data, **kw: ("splits", data)
    fake.train = lambda cfg, splits, out, **kw: seen.update(cfg=cfg)
    monkeypatch.setitem(sys.modules, "fer_sdk.export.train", fake)
    monkeypatch.setattr("fer_sdk.cli._require_train_extra", lambda: None)
    data = tmp_path / "fer.csv"
    data.write_text("emotion,pixels,Usage\n")
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    rebuilt = dataclasses.asdict(seen["cfg"])
    assert {k: v for k, v in rebuilt.items() if k != "command"} == {
        k: v for k, v in dataclasses.asdict(cfg).items() if k != "command"
    }
    plain = TrainConfig(arch="deep", command="x")  # the defaults, no teacher: no --teacher-weight either
    assert "--teacher-weight" not in cli_args(plain)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "plain"), *cli_args(plain)])
    assert result.exit_code == 0, result.output
    assert dataclasses.replace(seen["cfg"], command="x") == plain


def test_a_recorded_recipe_is_read_back_and_reproduced(tmp_path):
    from fer_sdk.export.ship import reproduce_command

    cfg = _recipe(tmp_path)
    record = {**dataclasses.asdict(cfg), "from_a_later_version": 1}
    assert config_from_record(record) == dataclasses.replace(cfg, command=cfg.command)
    command = reproduce_command({"config": record, "epochs": 5}, "runs/x")
    assert command.startswith("fer-sdk train --arch shallow --data fer2013.csv.gz --out runs/x --epochs 5 ")
    assert "--time-budget" not in command  # the epochs it ran replace the budget
    assert "--no-augment" in command and "--snapshots" in command and "--aug-level light" in command
    jax = reproduce_command({"config": record, "epochs": 5, "hardware": {"backend": "jax"}}, "runs/x")
    assert jax.startswith("KERAS_BACKEND=jax fer-sdk train")

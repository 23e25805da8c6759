"""Knowledge distillation (``fer_sdk.export.distill`` and ``train(..., teacher=...)``).

The teachers are real ONNX models run by ONNX Runtime (hand-made linear graphs from ``conftest``); the
training tests fit the shallow CNN on 200 real FER2013 faces for a few epochs.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import fer_splits, make_linear_onnx
from fer_sdk.export.config import TrainConfig
from fer_sdk.export.distill import teacher_probabilities, training_targets

from fer_sdk.constants import EMOTIONS
from fer_sdk.errors import InvalidInputError, ModelError
from fer_sdk.registry import sha256_file

HAPPY = EMOTIONS.index("happy")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return fer_splits(64, 1).x_train


def test_targets_mix_labels_and_teacher():
    labels = np.array([0, 3, 6])
    teacher = np.random.default_rng(0).dirichlet(np.ones(7), size=3).astype(np.float32)
    one_hot = training_targets(labels, None, 0.5)
    assert one_hot.dtype == np.float32 and np.array_equal(one_hot, np.eye(7, dtype=np.float32)[labels])
    mixed = training_targets(labels, teacher, 0.7)
    np.testing.assert_allclose(mixed, 0.3 * one_hot + 0.7 * teacher, rtol=1e-6)
    np.testing.assert_allclose(mixed.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(training_targets(labels, teacher, 1.0), teacher)
    with pytest.raises(InvalidInputError, match=r"shape \(2, 7\), expected \(3, 7\)"):
        training_targets(labels, teacher[:2], 0.5)


def test_teacher_probabilities_are_the_flip_average(faces, tmp_path):
    import onnxruntime as ort

    path = make_linear_onnx(tmp_path / "teacher.onnx", seed=3)
    probs, sha = teacher_probabilities(str(path), faces, log=quiet)
    assert sha == sha256_file(path) and probs.shape == (len(faces), 7) and probs.dtype == np.float32

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = faces.astype(np.float32)[..., None] / 255
    run = lambda batch: session.run(None, {session.get_inputs()[0].name: batch})[0]
    np.testing.assert_allclose(probs, (run(x) + run(x[:, :, ::-1].copy())) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs, run(x), atol=1e-3)  # the mirror really is averaged in
    # The same target for a face and its mirror: right under the flip augmentation.
    mirrored, _ = teacher_probabilities(str(path), faces[:, :, ::-1].copy(), log=quiet)
    np.testing.assert_allclose(mirrored, probs, rtol=1e-5, atol=1e-6)


def test_bad_teachers_are_refused(faces, tmp_path):
    with pytest.raises(ModelError, match=r"--teacher .*missing\.onnx: model file .* does not exist"):
        teacher_probabilities(str(tmp_path / "missing.onnx"), faces, log=quiet)
    foreign = make_linear_onnx(tmp_path / "foreign.onnx", labels=[f"class{i}" for i in range(7)])
    with pytest.raises(ModelError, match="not the FER2013 emotions"):
        teacher_probabilities(str(foreign), faces, log=quiet)


def test_teacher_columns_follow_label_names(faces, tmp_path):
    weights = np.random.default_rng(5).normal(0, 0.05, (48 * 48, 7)).astype(np.float32)
    plain = make_linear_onnx(tmp_path / "plain.onnx", weights=weights)
    reversed_ = make_linear_onnx(
        tmp_path / "reversed.onnx", weights=weights[:, ::-1].copy(), labels=list(reversed(EMOTIONS))
    )
    a, _ = teacher_probabilities(str(plain), faces, log=quiet)
    b, _ = teacher_probabilities(str(reversed_), faces, log=quiet)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weight", [0.0, -0.2, 1.5, float("nan")])
def test_teacher_weight_must_be_a_share(weight):
    with pytest.raises(InvalidInputError, match="teacher_weight=.* must be in \\(0, 1\\]"):
        TrainConfig(arch="shallow", teacher="t.onnx", teacher_weight=weight)


# --------------------------------------------------------------------------------------------- training


def _happy_teacher(path):
    """A teacher that says 'happy' for every face (probability ~1): all weight on one column."""
    weights = np.zeros((48 * 48, 7), np.float32)
    weights[:, HAPPY] = 0.05
    return make_linear_onnx(path, weights=weights)


@pytest.mark.train
def test_training_follows_the_teacher(tmp_path):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from fer_sdk.export import ship
    from fer_sdk.export.average import average_run
    from fer_sdk.export.train import predict_proba, train

    splits = fer_splits(200, 100)
    teacher = _happy_teacher(tmp_path / "happy.onnx")
    common = {
        "arch": "shallow",
        "epochs": 3,
        "snapshots": True,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 0.01,
        "warmup_epochs": 0,
        "augment_level": "flip",
        "class_weighting": "none",
        "label_smoothing": 0.0,
        "seed": 0,
        "command": "pytest",
    }
    runs = {}
    for name, extra in (("labels", {}), ("teacher", {"teacher": str(teacher), "teacher_weight": 1.0})):
        out = tmp_path / name
        metrics = train(TrainConfig(**common, **extra), splits, out, log=quiet)
        net = keras.models.load_model(out / "last.keras").layers[-1]
        runs[name] = (metrics, predict_proba(net, splits.x_train).argmax(1))
    happy_share = {name: float((pred == HAPPY).mean()) for name, (_, pred) in runs.items()}
    assert happy_share["teacher"] > 0.95 > happy_share["labels"], happy_share  # it learnt the teacher, not the labels
    metrics = runs["teacher"][0]
    assert metrics["teacher_sha256"] == sha256_file(teacher) and "teacher_sha256" not in runs["labels"][0]
    assert json.loads((tmp_path / "teacher" / "config.json").read_text())["teacher"] == str(teacher)
    # The model card's lineage names the teacher, its sha256 and the option that reproduces the run.
    (stage,) = ship.training_stages(tmp_path / "teacher", metrics, "shallow")["stages"]
    assert stage["command"].endswith(f"--teacher {teacher} --teacher-weight 1.0")
    assert f"distilled from teacher `happy.onnx` (sha256 {metrics['teacher_sha256'][:12]}...)" in stage["recipe"]
    (plain,) = ship.training_stages(tmp_path / "labels", runs["labels"][0], "shallow")["stages"]
    assert "teacher" not in plain["command"] + plain["recipe"]

    # Resuming with the same teacher continues the run; the teacher's record carries into a weight average.
    cfg4 = TrainConfig(**{**common, "epochs": 4}, teacher=str(teacher), teacher_weight=1.0)
    resumed = train(cfg4, splits, tmp_path / "teacher", resume=True, log=quiet)
    assert resumed["epochs"] == 4 and resumed["teacher_sha256"] == metrics["teacher_sha256"]
    averaged = average_run(tmp_path / "teacher", [3, 4], tmp_path / "swa", splits, bn_faces=100, log=quiet)
    assert averaged["teacher_sha256"] == metrics["teacher_sha256"]

    # A different file under the teacher's name is refused before it runs, and nothing is written.
    before = {p.name: p.read_bytes() for p in (tmp_path / "teacher").iterdir() if p.is_file()}
    make_linear_onnx(teacher, seed=1)
    with pytest.raises(InvalidInputError, match=f"cannot resume: teacher .* trained with {metrics['teacher_sha256']}"):
        train(dataclasses.replace(cfg4, epochs=5), splits, tmp_path / "teacher", resume=True, log=quiet)
    assert {p.name: p.read_bytes() for p in (tmp_path / "teacher").iterdir() if p.is_file()} == before

    # A run from before distillation existed (no teacher keys in config.json) cannot gain a teacher on resume.
    config = json.loads((tmp_path / "labels" / "config.json").read_text())
    del config["teacher"], config["teacher_weight"]
    (tmp_path / "labels" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=r"teacher: run has None, you gave '.*happy.onnx'"):
        train(
            TrainConfig(**{**common, "epochs": 4}, teacher=str(teacher)),
            splits,
            tmp_path / "labels",
            resume=True,
            log=quiet,
        )
    train(TrainConfig(**{**common, "epochs": 4}), splits, tmp_path / "labels", resume=True, log=quiet)  # still resumes


@pytest.mark.train
def test_a_failing_teacher_leaves_no_run(tmp_path):
    pytest.importorskip("tensorflow")
    from fer_sdk.export.train import train

    foreign = make_linear_onnx(tmp_path / "foreign.onnx", labels=[f"class{i}" for i in range(7)])
    cfg = TrainConfig(arch="shallow", epochs=1, batch_size=32, teacher=str(foreign), command="pytest")
    with pytest.raises(ModelError, match="not the FER2013 emotions"):
        train(cfg, fer_splits(64, 32), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run" / "config.json").exists()  # nothing to resume into by mistake


def test_card_names_an_ensemble_teachers_members(tmp_path):
    """A distilled stage's card says what its teacher was: for an ensemble teacher, each member's name, weight
    and sha256 read from the teacher's metadata, but only while the file is the one trained with."""
    from fer_sdk.export import ship
    from fer_sdk.export.ensemble import build_ensemble

    a, b = make_linear_onnx(tmp_path / "deep-a.onnx", seed=0), make_linear_onnx(tmp_path / "shallow-b.onnx", seed=1)
    teacher = tmp_path / "ens.onnx"
    build_ensemble([(a, 3), (b, 1)], teacher, log=quiet)
    sha = sha256_file(teacher)
    cfg = {
        **dataclasses.asdict(TrainConfig(arch="shallow", epochs=1, command="pytest")),
        "teacher": str(teacher),
        "teacher_weight": 0.6,
    }

    record = ship.teacher_record(cfg, sha)["teacher"]
    assert record == {
        "file": "ens.onnx",
        "sha256": sha,
        "weight": 0.6,
        "members": [
            {"name": "deep-a", "weight": 0.75, "sha256": sha256_file(a)},
            {"name": "shallow-b", "weight": 0.25, "sha256": sha256_file(b)},
        ],
    }
    text = ship.recipe_text(cfg, record)
    assert (
        f"teacher `ens.onnx` (sha256 {sha[:12]}...) (an ensemble of `deep-a` x 0.75 (sha256 "
        f"{sha256_file(a)[:12]}...), `shallow-b` x 0.25 (sha256 {sha256_file(b)[:12]}...)): "
        "targets 0.4 x label + 0.6 x"
    ) in text

    # The lineage puts the record on the distilled stage, not on the weight average made from it.
    kd = {
        "config": cfg,
        "teacher_sha256": sha,
        "epochs": 3,
        "best_epoch": 3,
        "wall_time_s": 60.0,
        "hardware": {"backend": "tensorflow", "device": "CPU"},
        "splits": {"PublicTest": {"accuracy": 0.5}},
    }
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / "metrics.json").write_text(json.dumps(kd))
    swa = {
        **kd,
        "best_epoch": None,
        "average": {"run": str(tmp_path / "kd"), "epochs": [2, 3], "bn_faces": 100, "seed": 0},
    }
    distilled, averaged = ship.training_stages(tmp_path / "swa", swa, "shallow")["stages"]
    assert distilled["teacher"] == record and "an ensemble of `deep-a` x 0.75" in distilled["recipe"]
    assert "teacher" not in averaged and "teacher" not in averaged["recipe"]

    # A single-model teacher has no members; a teacher file changed since training, or gone, is not described.
    assert "members" not in ship.teacher_record({**cfg, "teacher": str(a)}, sha256_file(a))["teacher"]
    assert "members" not in ship.teacher_record(cfg, "0" * 64)["teacher"]
    assert "members" not in ship.teacher_record({**cfg, "teacher": str(tmp_path / "gone.onnx")}, sha)["teacher"]
    assert ship.teacher_record({**cfg, "teacher": None}, None) == {}
    assert "teacher" not in ship.recipe_text({**cfg, "teacher": None})

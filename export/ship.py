"""Bundle trained runs into the package: fp32 + INT8 ONNX, model cards, and the manifest with sha256.

    fer-sdk models ship --into fer_sdk/models --data fer2013.csv.gz --run shallow=runs/shallow --run deep=runs/deep

For each ``name=RUN_DIR`` it exports ``name.onnx`` and ``name-int8.onnx`` into ``--into`` (a checkout's
``fer_sdk/models/``; the library default of ``models_dir`` is the imported package's folder); each
``--ensemble NAME=MEMBER:WEIGHT,...`` then averages bundled models into ``NAME.onnx`` (export/ensemble.py).
It evaluates every file with ONNX Runtime on PublicTest, writes ``cards/<model>.{json,md,png}`` and rewrites
``manifest.json``. Every number on a card comes from this command's own evaluation.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from fer_sdk.cards import ModelCard
from fer_sdk.errors import InvalidInputError, ModelError
from fer_sdk.files import atomic_write_json, atomic_write_text
from fer_sdk.framing import Framing
from fer_sdk.registry import ModelSpec, sha256_file
from fer_sdk.registry import models_dir as bundled_models_dir

from .ensemble import build_ensemble, parse_members

KNOWN_LIMITS = [
    (
        "FER2013 faces are 48x48 grayscale, mostly frontal, from web image search: accuracy drops on profile "
        "views, occlusions, strong lighting and faces far from that distribution."
    ),
    (
        "The classes are skewed: happy is 25 % of Training, disgust 1.5 % (436 faces); disgust recall is the "
        "least reliable number on the card."
    ),
    "FER2013 labels are noisy; human accuracy on the dataset is about 65 %.",
    (
        "PublicTest selected the checkpoint (best epoch) and is also the split reported, so its number is "
        "slightly optimistic; the withheld PrivateTest is measured independently."
    ),
    (
        "Emotion recognition from a face is a weak signal of what a person feels; do not use it for decisions "
        "about people."
    ),
]


#: Extra known limits on an ensemble's card.
ENSEMBLE_LIMITS = [
    (
        "Member weights chosen by PublicTest accuracy (as the bundled ensemble's were, from 0.5-0.8) make its "
        "PublicTest gain over its best member optimistic by a few tenths of a point."
    ),
    (
        "It runs every member on each face: its latency is about the sum of the members' (`fer-sdk bench` times it "
        "with the other bundled models)."
    ),
]


def reproduce_command(run_metrics: dict, out: str) -> str:
    """The `fer-sdk train` command that reruns this recipe (the schedule length is the epochs it ran), derived
    from the TrainConfig fields (``config.cli_args``)."""
    from .config import cli_args, config_from_record

    # a weight-averaging stage ran 0 epochs (its card command is the averaging one): keep the recorded schedule
    epochs = run_metrics["epochs"] or run_metrics["config"].get("epochs")
    cfg = config_from_record({**run_metrics["config"], "epochs": epochs})
    backend = run_metrics.get("hardware", {}).get("backend", "tensorflow")
    args = cli_args(cfg, skip=("arch", "time_budget_s"))  # the epochs it ran replace a time budget
    prefix = [f"KERAS_BACKEND={backend}"] if backend != "tensorflow" else []
    command = ["fer-sdk", "train", "--arch", cfg.arch, "--data", "fer2013.csv.gz", "--out", out, *args]
    return " ".join(prefix + [shlex.quote(a) for a in command])


def card_markdown(card: dict) -> str:
    r = card["evaluation"]
    lines = [
        f"# fer-sdk model card: `{card['name']}`",
        "",
        (
            f"{_kind(card)}, {card['precision']}, {card['parameters']:,} parameters, "
            f"{card['size_bytes'] / 1e6:.1f} MB, sha256 `{card['sha256']}`."
        ),
        "",
        "## Results on FER2013 PublicTest (3,589 faces)",
        "",
        f"- accuracy **{100 * r['accuracy']:.2f} %**, macro-F1 {r['macro_f1']:.4f}",
        (
            f"- with flip test-time augmentation (`Classifier(flip_tta=True)`, 2x compute): "
            f"{100 * card['evaluation_flip_tta']['accuracy']:.2f} %"
        ),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, c in r["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines += ["", f"![confusion matrix]({Path(card['confusion_png']).name})", ""]
    lines += _ensemble_lines(card["ensemble"]) if "ensemble" in card else _training_lines(card)
    if card.get("quantization"):
        q = card["quantization"]
        lines += ["", "## Quantization", "", f"- {json.dumps(q)}"]
    if card.get("litert"):
        lt = card["litert"]
        lines += [
            "",
            "## LiteRT",
            "",
            f'- Runs on {lt["runtime"]}: `Classifier("{card["name"]}")` (`pip install "fer-sdk[litert]"`).',
            f"- Argmax agreement with the fp32 `{lt['parity_with']}` on all {lt['faces']:,} PublicTest faces: "
            f"{100 * lt['argmax_agreement']:.2f} % (largest probability difference {lt['max_abs_prob_diff']:.3f}); "
            f"the ONNX INT8 twin scores {100 * lt['onnx_int8_twin_accuracy']:.2f} %.",
            f"- Calibrated on the same {lt['calibration_faces']:,} Training faces as the ONNX INT8 model "
            f"(seed {lt['calibration_seed']}); int8 logits out, softmax in float by the reader.",
            f"- Built by `{lt.get('command', 'fer-sdk models ship --litert')}` from the fp32 ONNX model (its Keras "
            "network rebuilt by export/recover.py).",
        ]
    lines += _wild_lines(card)
    lines += [
        "",
        "## Evaluate it yourself",
        "",
        f"`{card['evaluate_command']}` (add `--tta` for the flip TTA number)",
        "",
        "## Known limits",
        "",
    ]
    lines += [f"- {item}" for item in card["known_limits"]]
    return "\n".join(lines) + "\n"


def _wild_lines(card: dict) -> list[str]:
    framing = card.get("framing", "fer2013")
    lines = ["", "## Photos", "", f"- Framing: `{framing}` (detected faces are cut to it; see `fer_sdk.framing`)."]
    wild = card.get("photos_in_the_wild")
    if not wild:
        return lines
    lines += [
        (
            f"- Whole pipeline (decode, detect, crop, classify) on {wild['photos']} crowd-labelled photos of faces "
            f"(`{wild['data']}`; noisy labels: compare rows, not with FER2013). A photo with no face counts as wrong."
        ),
        f"  Reproduce: `{wild['command']}`",
        "",
        "| crop rule | faces found | accuracy | macro-F1 |",
        "|---|---|---|---|",
    ]
    for r in wild["rules"]:
        lines.append(
            f"| {r['rule']} | {100 * r['found_rate']:.2f} % | {100 * r['accuracy']:.2f} % | {r['macro_f1']:.3f} |"
        )
    return lines


def _kind(card: dict) -> str:
    if "ensemble" in card:
        return "Weighted ensemble of " + " and ".join(f"`{m['name']}`" for m in card["ensemble"]["members"])
    return f"{card['architecture']} CNN"


def _training_lines(card: dict) -> list[str]:
    t = card["training"]
    lines = [
        "## Data and training",
        "",
        (
            "- Data: FER2013 (Kaggle challenge CSV). Fit on Training (28,709 faces); the checkpoint with the best "
            "PublicTest accuracy was kept; PrivateTest is withheld from this project."
        ),
        (
            f"- {len(t['stages'])} training stage(s), {t['epochs']} epochs in all, "
            f"{t['wall_time_s'] / 60:.1f} min of training on {t['hardware']}."
        ),
    ]
    for i, st in enumerate(t["stages"], 1):
        ran = f"{st['epochs']} epochs (best {st['best_epoch']}), " if st["best_epoch"] is not None else ""
        lines += [
            f"- Stage {i}: {st['recipe']}. {ran}"
            f"{st['wall_time_s'] / 60:.1f} min on {st['hardware']} (Keras backend {st['backend']}); "
            f"Keras PublicTest accuracy {100 * st['keras_publictest_accuracy']:.2f} %."
            + (f" Ran as {st['ran_as']}." if st.get("ran_as") else ""),
            f"  Reproduce: `{st['command']}`",
        ]
    lines.append(
        f"- Export: `fer-sdk export runs/{card['architecture']} --out {card['architecture']}.onnx "
        "--data fer2013.csv.gz --int8`"
    )
    return lines


def _ensemble_lines(ensemble: dict) -> list[str]:
    lines = [
        "## Members",
        "",
        (
            "One ONNX file: every member reads the same face and the output is the weighted sum of their softmax "
            "rows (still a softmax). The members' graphs are copied in unchanged."
        ),
        "",
        "| member | weight | precision | parameters | sha256 | card |",
        "|---|---|---|---|---|---|",
    ]
    for m in ensemble["members"]:
        lines.append(
            f"| `{m['name']}` | {m['weight']:.2f} | {m['precision']} | {m['parameters']:,} | "
            f"`{m['sha256'][:12]}…` | [{m['name']}.md]({m['name']}.md) |"
        )
    lines += ["", f"- Build it from the bundled members: `{ensemble['command']}`"]
    return lines


def training_stages(run: Path, run_metrics: dict, arch: str) -> dict:
    """The run and, for fine-tuned runs, the runs it started from: recipe, epochs, time, hardware, command.

    Reproduce commands chain through run folders ``runs/<arch>-stage1`` ... ``runs/<arch>``.
    """
    chain, metrics = [], run_metrics
    while metrics is not None:
        chain.insert(0, metrics)
        if metrics.get("average"):  # a weight average of another run's snapshots (export/average.py)
            parent_metrics = Path(metrics["average"]["run"]) / "metrics.json"
        else:
            parent = metrics["config"].get("init_from")
            parent_metrics = Path(parent).parent / "metrics.json" if parent else None
        metrics = json.loads(parent_metrics.read_text()) if parent_metrics and parent_metrics.exists() else None
    outs = [f"runs/{arch}-stage{i}" for i in range(1, len(chain))] + [f"runs/{arch}"]
    stages = []
    for i, metrics in enumerate(chain):
        if i > 0 and not metrics.get("average"):
            metrics = {**metrics, "config": {**metrics["config"], "init_from": f"{outs[i - 1]}/best.keras"}}
        backend = metrics["hardware"].get("backend")
        distilled = {} if metrics.get("average") else teacher_record(metrics["config"], metrics.get("teacher_sha256"))
        stage = {
            **distilled,
            "recipe": recipe_text(metrics["config"], distilled.get("teacher")),
            "config": metrics["config"],
            "epochs": metrics["epochs"],
            "best_epoch": metrics["best_epoch"],
            "wall_time_s": metrics["wall_time_s"],
            "hardware": metrics["hardware"].get("device", "unknown"),
            "backend": backend,
            "command": reproduce_command(metrics, outs[i]),
            "keras_publictest_accuracy": metrics["splits"]["PublicTest"]["accuracy"],
        }
        if metrics.get("average"):
            avg = metrics["average"]
            span = (
                f"{avg['epochs'][0]}-{avg['epochs'][-1]}"
                if avg["epochs"] == list(range(avg["epochs"][0], avg["epochs"][-1] + 1))
                else ",".join(map(str, avg["epochs"]))
            )
            stage["recipe"] = (
                f"weight average (SWA) of the networks after epochs {span} of the previous stage, batch-norm "
                f"statistics re-estimated on {avg['bn_faces']:,} Training faces"
            )
            stage["command"] = (
                f"fer-sdk models average --data fer2013.csv.gz --run {outs[i - 1] if i else avg['run']} "
                f"--epochs {span} --out {outs[i]} --bn-faces {avg['bn_faces']} --seed {avg['seed']}"
            )
            stage["best_epoch"] = None
        if backend == "jax":
            stage["ran_as"] = (
                "python -m fer_sdk.export.gpu_job (Keras 3 on JAX, whole epochs on the GPU with the same recipe, "
                "schedule and augmentation as `fer-sdk train`)"
            )
        stages.append(stage)
    last = stages[-1]
    return {
        "stages": stages,
        "epochs": sum(st["epochs"] for st in stages),
        "best_epoch": last["best_epoch"],
        "wall_time_s": round(sum(st["wall_time_s"] for st in stages), 1),
        "hardware": " + ".join(dict.fromkeys(st["hardware"] for st in stages)),
        "recipe": last["recipe"],
        "command": " && ".join(st["command"] for st in stages),
    }


def teacher_record(cfg: dict, teacher_sha256: str | None) -> dict:
    """``{"teacher": {...}}`` for a distilled stage (else ``{}``): the teacher's file name and sha256 and, when
    the teacher is an ensemble whose file is still the one trained with (same sha256), its members' names,
    weights and sha256 from the file's metadata, so a card says what the teacher was."""
    if not cfg.get("teacher"):
        return {}
    record = {"file": Path(cfg["teacher"]).name, "sha256": teacher_sha256, "weight": cfg["teacher_weight"]}
    members = _ensemble_members(cfg["teacher"], teacher_sha256)
    return {"teacher": {**record, "members": members} if members else record}


def _ensemble_members(teacher: str, teacher_sha256: str | None) -> list[dict] | None:
    from .convert import onnx_metadata
    from .distill import resolve_teacher

    if not teacher_sha256:
        return None
    try:
        path = resolve_teacher(teacher)
        if sha256_file(path) != teacher_sha256:
            return None  # changed since training: its metadata would describe another teacher
        members = onnx_metadata(path).ensemble or []
        return [{"name": m["name"], "weight": m["weight"], "sha256": m["sha256"]} for m in members] or None
    except Exception:  # noqa: BLE001 - a card without the members beats no card: the teacher sha256 is still given
        return None


def recipe_text(cfg: dict, teacher: dict | None = None) -> str:
    """The recipe in words; ``teacher`` is the stage's :func:`teacher_record` entry when it was distilled."""
    return (
        f"{cfg['optimizer'].upper()} (peak lr {cfg['lr']}, weight decay {cfg['weight_decay']}), batch "
        f"{cfg['batch_size']}, {cfg['warmup_epochs']} warm-up epochs then cosine decay; label smoothing "
        f"{cfg['label_smoothing']}; class weights {cfg['class_weighting']}; dropout {cfg['dropout']} (conv) / "
        f"{cfg['fc_dropout']} (FC); augmentation "
        + (AUGMENT_TEXT[cfg.get("augment_level", "strong")] if cfg["augment"] else "off")
        + ("; mixed bfloat16 compute" if cfg.get("precision") == "mixed_bfloat16" else "")
        + (_teacher_text(teacher) if teacher else "")
    )


def _teacher_text(teacher: dict) -> str:
    sha = f" (sha256 {teacher['sha256'][:12]}...)" if teacher.get("sha256") else ""
    members = teacher.get("members")
    made_of = (
        " (an ensemble of "
        + ", ".join(f"`{m['name']}` x {m['weight']:g} (sha256 {m['sha256'][:12]}...)" for m in members)
        + ")"
        if members
        else ""
    )
    w = teacher["weight"]
    return (
        f"; distilled from teacher `{teacher['file']}`{sha}{made_of}: targets {1 - w:g} x label + {w:g} x the "
        "teacher's flip-averaged probabilities"
    )


#: What each ``augment_level`` of ``export/train.py`` does, in words for the model cards.
AUGMENT_TEXT = {
    "strong": "flip, shift 10 %, rotation 14 deg, zoom 10 %, contrast 20 %, random erasing",
    "light": "flip, shift 10 %, rotation 9 deg, zoom 5 %",
    "flip": "horizontal flip only",
}


def ship(
    runs: dict[str, Path],
    data: Path,
    *,
    models_dir: Path | None = None,
    default: str | None = None,
    ensembles: dict[str, list[tuple[str, float]]] | None = None,
    log=print,
) -> dict:
    """Export ``runs`` (``{arch: run folder}``) as fp32 + INT8, then build ``ensembles`` (``{name: [(member,
    weight)]}``, members named as bundled models, e.g. ``deep-int8``); evaluate each file, write its card and
    the manifest."""
    from fer_sdk.data import load_split

    from .pipeline import export_model

    models_dir = Path(models_dir) if models_dir is not None else bundled_models_dir()
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    ensembles = _plan_ensembles(manifest, models_dir, runs, ensembles or {}, log)  # checked before slow work
    public = load_split(data, "PublicTest")
    (models_dir / "cards").mkdir(parents=True, exist_ok=True)
    for arch, run in runs.items():
        run_metrics = json.loads((Path(run) / "metrics.json").read_text())
        for path in export_model(run, models_dir / f"{arch}.onnx", data=data, int8=True, log=log):
            extra = {
                "architecture": arch,
                "parameters": int(run_metrics["parameters"]),
                "training": training_stages(Path(run), run_metrics, arch),
            }
            manifest["models"][path.stem] = _card(path, extra, data, public, models_dir, log)
    _build_ensembles(manifest, models_dir, ensembles, data, public, log)
    manifest["default"] = default or manifest.get("default") or next(iter(manifest["models"]))
    manifest["models"] = dict(sorted(manifest["models"].items()))
    atomic_write_json(manifest_path, manifest)
    return manifest


def _build_ensembles(manifest: dict, models_dir: Path, ensembles: dict, data: Path, public, log) -> None:
    for name, members in ensembles.items():
        path = models_dir / f"{name}.onnx"
        files = [(models_dir / manifest["models"][m]["file"], w) for m, w in members]
        report = build_ensemble(files, path, log=log)
        command = (
            "fer-sdk models ensemble "
            + " ".join(f"--member {m['name']}={w:g}" for m, (_, w) in zip(report["members"], members))
            + f" --out {path.name}"
        )
        extra = {
            "architecture": "ensemble",
            "parameters": report["parameters"],
            "ensemble": {"members": report["members"], "command": command},
        }
        manifest["models"][name] = _card(path, extra, data, public, models_dir, log)


def requantize(
    archs: list[str],
    data: Path,
    *,
    models_dir: Path | None = None,
    seed: int = 0,
    calibration_size: int | None = None,
    log=print,
) -> dict:
    """Quantize the bundled fp32 models ``archs`` to INT8 again (calibration as ``fer-sdk export`` picks it:
    ``calibration_size`` Training faces, default 1,000, drawn with ``seed``), re-card them, and rebuild the
    bundled ensembles that average them. Their training lineage is kept from the existing cards."""
    from fer_sdk.data import load_split

    from .pipeline import DEFAULT_CALIBRATION_FACES, calibration_pick
    from .quantize import quantize_int8

    models_dir = Path(models_dir) if models_dir is not None else bundled_models_dir()
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    missing = [a for a in archs if a not in manifest["models"]]
    if missing:
        raise InvalidInputError(
            f"--requantize {missing}: not bundled fp32 models; choose from {sorted(manifest['models'])}"
        )
    ensembles = _plan_ensembles(manifest, models_dir, dict.fromkeys(archs), {}, log)
    public = load_split(data, "PublicTest")
    x_train, _ = load_split(data, "Training")
    calibration_faces = calibration_pick(x_train, calibration_size or DEFAULT_CALIBRATION_FACES, seed)
    for arch in archs:
        out = models_dir / f"{arch}-int8.onnx"
        quantize_int8(
            models_dir / manifest["models"][arch]["file"],
            out,
            calibration_faces=calibration_faces,
            eval_faces=public[0],
            eval_labels=public[1],
            log=log,
        )
        old = json.loads((models_dir / manifest["models"][arch]["card"]).read_text())
        extra = {"architecture": old["architecture"], "parameters": old["parameters"], "training": old.get("training")}
        manifest["models"][out.stem] = _card(out, extra, data, public, models_dir, log)
    _build_ensembles(manifest, models_dir, ensembles, data, public, log)
    manifest["models"] = dict(sorted(manifest["models"].items()))
    atomic_write_json(manifest_path, manifest)
    return manifest


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


#: What a shipped LiteRT INT8 file must keep of its fp32 ONNX twin (argmax agreement on PublicTest) and of the
#: ONNX INT8 twin (accuracy, points).
LITERT_MIN_AGREEMENT = 0.985
LITERT_MAX_ACCURACY_DROP = 0.3


def ship_litert(
    archs: list[str],
    data: Path,
    *,
    models_dir: Path | None = None,
    seed: int = 0,
    calibration_size: int | None = None,
    log=print,
) -> dict:
    """Bundle ``ARCH-int8.tflite`` (full-integer LiteRT) for each bundled fp32 ``ARCH``: the Keras network is
    rebuilt from the fp32 ONNX file (export/recover.py), converted with the ONNX INT8 model's calibration faces,
    checked against both twins on PublicTest (refused below ``LITERT_MIN_AGREEMENT`` argmax agreement with
    fp32, or more than ``LITERT_MAX_ACCURACY_DROP`` points under the ONNX INT8 model), given a card, and
    listed in the manifest as ``ARCH-int8-litert``."""
    from fer_sdk.classifier import Classifier
    from fer_sdk.data import load_split
    from fer_sdk.files import atomic_write_bytes
    from fer_sdk.litert import read_tflite_metadata
    from fer_sdk.metadata import ModelMetadata

    from .litert import embed_metadata, export_tflite
    from .pipeline import DEFAULT_CALIBRATION_FACES, calibration_pick
    from .recover import recover_network

    models_dir = Path(models_dir) if models_dir is not None else bundled_models_dir()
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    wrong = [a for a in archs if a not in manifest["models"] or manifest["models"][a].get("precision") != "fp32"]
    if wrong:
        raise InvalidInputError(f"--litert {wrong}: not bundled fp32 models; choose from deep, shallow")
    public = load_split(data, "PublicTest")
    x_train, _ = load_split(data, "Training")
    calibration_faces = calibration_pick(x_train, calibration_size or DEFAULT_CALIBRATION_FACES, seed)
    for arch in archs:
        fp32_path = models_dir / manifest["models"][arch]["file"]
        net, diff = recover_network(fp32_path, x_train[:6000])
        log(f"{arch}: Keras network rebuilt from {fp32_path.name} (max |diff| {diff:.1e})")
        reference = Classifier(fp32_path)
        out = models_dir / f"{arch}-int8.tflite"
        staged = models_dir / f".{arch}-int8.staged.tflite"  # checked first: a failed gate leaves `out` alone
        twin = Classifier(models_dir / f"{arch}-int8.onnx").predict_proba(public[0]).argmax(1)
        twin_accuracy = float((twin == public[1]).mean())
        refusals = []
        # full integer when it meets the gate; otherwise the last dense layer in float, as in the ONNX INT8 model
        for float_head in (False, True):
            report = export_tflite(
                net,
                staged,
                metadata=reference.model_metadata,
                int8=True,
                float_head=float_head,
                calibration_faces=calibration_faces,
                parity_faces=public[0],
                reference=reference,
                log=log,
            )
            mine = Classifier(staged).predict_proba(public[0]).argmax(1)
            accuracy = float((mine == public[1]).mean())
            agreement = report["parity"]["argmax_agreement"]
            if agreement >= LITERT_MIN_AGREEMENT and 100 * (twin_accuracy - accuracy) <= LITERT_MAX_ACCURACY_DROP:
                break
            recipe = "int8 with a float head" if float_head else "full integer"
            refusals.append(f"{recipe}: agreement {agreement:.2%}, accuracy {100 * accuracy:.2f} %")
            log(f"{out.name} ({recipe}) misses the gate: {refusals[-1]}")
            staged.unlink()
        else:
            raise ModelError(
                f"{out.name}: needs >= {LITERT_MIN_AGREEMENT:.1%} argmax agreement with {arch} and at most "
                f"{LITERT_MAX_ACCURACY_DROP} points under {arch}-int8.onnx ({100 * twin_accuracy:.2f} %); got "
                f"{'; '.join(refusals)}; not shipped"
            )
        old = json.loads((models_dir / manifest["models"][arch]["card"]).read_text())
        litert = {
            "runtime": "ai-edge-litert (XNNPACK)",
            "parity_with": arch,
            **report["parity"],
            "onnx_int8_twin_accuracy": twin_accuracy,
            "recipe": "int8 with the last dense layer in float32" if float_head else "full integer",
            "refused_recipes": refusals,
            "calibration_faces": len(calibration_faces),
            "calibration_seed": seed,
            "command": f"fer-sdk models ship --into fer_sdk/models --litert {arch} --data fer2013.csv.gz",
        }
        # the file records its own accuracy, as the ONNX INT8 files do; then it takes its place
        flat = staged.read_bytes()
        meta = ModelMetadata.from_json(read_tflite_metadata(flat) or "", staged.name)
        meta = meta.replace(metrics={"PublicTest": {"accuracy": accuracy, "n": len(public[1])}})
        atomic_write_bytes(out, embed_metadata(flat, meta))
        staged.unlink()
        extra = {
            "architecture": old["architecture"],
            "parameters": old["parameters"],
            "training": old.get("training"),
            "litert": litert,
        }
        name = f"{arch}-int8-litert"
        manifest["models"][name] = _card(out, extra, data, public, models_dir, log, name=name, backend="litert")
    manifest["models"] = dict(sorted(manifest["models"].items()))
    atomic_write_json(manifest_path, manifest)
    return manifest


def _plan_ensembles(manifest: dict, models_dir: Path, runs: dict, requested: dict, log) -> dict:
    """The ensembles to build: the ``requested`` ones, checked, plus every bundled ensemble whose members
    this call re-ships (rebuilt with its card's weights, so no ensemble is left averaging old files)."""
    reshipped = {*runs, *(f"{arch}-int8" for arch in runs)}
    models = manifest["models"]
    bundled_ensembles = {name for name, entry in models.items() if entry.get("architecture") == "ensemble"}
    plan = {name: parse_members(members) for name, members in requested.items()}
    for name in sorted(bundled_ensembles - set(plan)):
        members = json.loads((models_dir / models[name]["card"]).read_text())["ensemble"]["members"]
        if reshipped & {m["name"] for m in members}:
            log(f"{name}: rebuilt because its members are re-shipped")
            plan[name] = [(m["name"], m["weight"]) for m in members]
    usable = sorted((set(models) | reshipped) - bundled_ensembles)
    for name, members in plan.items():
        if not _NAME.fullmatch(name) or name.endswith(".onnx"):
            raise InvalidInputError(f"ensemble name {name!r} must be a plain model name such as ensemble-int8")
        if name in reshipped or (name in models and name not in bundled_ensembles):
            raise InvalidInputError(
                f"ensemble name {name!r} is a model this call or the manifest already has; choose a new name such "
                "as ensemble-int8"
            )
        names = [m for m, _ in members]
        bad = [m for m in names if m not in usable]
        if bad:
            raise InvalidInputError(
                f"ensemble {name!r}: members {bad} are not bundled single models; choose from {', '.join(usable)}"
            )
        if len(set(names)) != len(names):
            raise InvalidInputError(f"ensemble {name!r} repeats a member in {names}; give each model once")
    return plan


def _card(
    path: Path,
    extra: dict,
    data: Path,
    public,
    models_dir: Path,
    log,
    name: str | None = None,
    backend: str = "onnxruntime",
) -> dict:
    """Evaluate ``path`` on PublicTest (plain and flip TTA), write its card (json, md, png); return its manifest
    entry."""
    from fer_sdk.classifier import Classifier
    from fer_sdk.evaluate import evaluate

    name = name or path.stem
    clf = Classifier(path)
    report = evaluate(data, split="PublicTest", classifier=clf, faces=public)
    tta = evaluate(data, split="PublicTest", classifier=Classifier(path, flip_tta=True), faces=public)
    meta = clf.model_metadata
    card = ModelCard(
        name=name,
        file=path.name,
        architecture=extra["architecture"],
        precision=meta.precision,
        parameters=extra["parameters"],
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        evaluation={k: report[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion_matrix", "labels")},
        evaluation_flip_tta={k: tta[k] for k in ("accuracy", "macro_f1")},
        quantization=meta.quantization,
        training=extra.get("training"),
        ensemble=extra.get("ensemble"),
        litert=extra.get("litert"),
        evaluate_command=f"fer-sdk eval --data fer2013.csv.gz --split PublicTest --model {name}",
        confusion_png=f"cards/{name}.png",
        known_limits=KNOWN_LIMITS + (ENSEMBLE_LIMITS if "ensemble" in extra else []),
        framing=Framing.from_metadata(meta).name,
    )
    previous = models_dir / "cards" / f"{name}.json"
    if previous.is_file():  # photo-pipeline numbers measured on this very file stay (benchmarks.wild --cards)
        old = ModelCard.read(previous)
        if old.sha256 == card.sha256 and old.photos_in_the_wild:
            card = card.replace(photos_in_the_wild=old.photos_in_the_wild)
    from fer_sdk.benchmarks.plots import plot_confusion  # the benchmark report's figure, one drawing

    title = f"{name}: PublicTest accuracy {100 * report['accuracy']:.2f} %"
    plot_confusion(report, models_dir / "cards" / f"{name}.png", title=title)
    atomic_write_json(models_dir / "cards" / f"{name}.json", card.to_dict())
    atomic_write_text(models_dir / "cards" / f"{name}.md", card_markdown(card.to_dict()))
    log(f"{name}: PublicTest accuracy {100 * report['accuracy']:.2f} % (flip TTA {100 * tta['accuracy']:.2f} %)")
    spec = ModelSpec(
        name=name,
        file=path.name,
        sha256=card.sha256,
        architecture=card.architecture,
        precision=card.precision,
        parameters=card.parameters,
        size_bytes=card.size_bytes,
        metrics={
            "PublicTest": {
                "accuracy": report["accuracy"],
                "macro_f1": report["macro_f1"],
                "accuracy_flip_tta": tta["accuracy"],
            }
        },
        card=f"cards/{name}.json",
        backend=backend,
    )
    return spec.manifest_entry()


def models_table(manifest: dict) -> str:
    """The README's models table (Markdown), from the manifest the ship step wrote."""
    rows = [
        "| model | params | file | PublicTest accuracy | + flip TTA | macro-F1 | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in manifest["models"].items():
        pt = m["metrics"]["PublicTest"]
        rows.append(
            f"| `{name}`{' (default)' if name == manifest.get('default') else ''} | {m['parameters']:,} | "
            f"{m['size_bytes'] / 1e6:.1f} MB | **{100 * pt['accuracy']:.2f} %** | "
            f"{100 * pt['accuracy_flip_tta']:.2f} % | "
            f"{pt['macro_f1']:.3f} | `{m['sha256'][:12]}…` |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # ``python -m fer_sdk.export.ship ARGS`` is ``fer-sdk models ship ARGS``
    from fer_sdk.cli import run_as

    run_as(["models", "ship"])

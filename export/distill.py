"""Knowledge distillation: train a CNN towards a teacher model's probabilities as well as the labels.

The teacher is any ONNX classifier this project can load (a bundled name such as ``"ensemble-int8"`` or a
``.onnx`` path). Its probabilities are computed once per Training face with ONNX Runtime, averaged with those
of the face's horizontal mirror: that average is the same for a face and its mirror, so it stays the right
target under the flip augmentation (for geometric augmentation it is the clean face's target).

Each face's training target is ``(1 - w) * one_hot(label) + w * teacher``, with ``w`` the teacher weight;
label smoothing, when set, is applied on top by the loss, and class weights still follow the labels. With a
teacher, the training ``accuracy`` in the log and ``history`` is agreement with the target's top class; the
per-split metrics of ``metrics.json`` are always against the labels.
"""

from __future__ import annotations

import numpy as np

from fer_sdk.constants import EMOTIONS
from fer_sdk.errors import InvalidInputError, ModelError


def resolve_teacher(teacher: str):
    """The teacher's file (a bundled name is sha256-checked); a missing one is a ModelError naming --teacher."""
    from fer_sdk.registry import resolve_model

    try:
        return resolve_model(teacher)[0]
    except ModelError as exc:
        raise ModelError(f"--teacher {teacher}: {exc}") from exc


def open_teacher(teacher: str, *, batch_size: int = 256):
    """The teacher as a flip-TTA :class:`~fer_sdk.Classifier`: its metadata is checked, and its columns come
    in FER2013 label order whatever the file's order."""
    from fer_sdk import Classifier

    return Classifier(str(resolve_teacher(teacher)), flip_tta=True, batch_size=batch_size)


def teacher_probabilities(
    teacher: str, faces: np.ndarray, *, expected_sha256: str | None = None, batch_size: int = 256, log=print
) -> tuple[np.ndarray, str]:
    """``(probabilities (N, 7) float32, teacher sha256)``: flip-averaged teacher output for uint8 ``faces``.

    With ``expected_sha256`` (a resumed run's teacher) a different file is refused before anything runs.
    """
    from fer_sdk.registry import sha256_file

    path = resolve_teacher(teacher)
    sha = sha256_file(path)
    if expected_sha256 and sha != expected_sha256:
        raise InvalidInputError(
            f"cannot resume: teacher {teacher} has sha256 {sha}, but the run was trained with {expected_sha256} "
            "(state.json); pass the --teacher file with that sha256, or start a new --out"
        )
    clf = open_teacher(str(path), batch_size=batch_size)
    log(f"teacher {teacher}: flip-averaged probabilities for {len(faces)} Training faces")
    return np.asarray(clf.predict_proba(faces), dtype=np.float32), sha


def training_targets(labels: np.ndarray, teacher_probs: np.ndarray | None, teacher_weight: float) -> np.ndarray:
    """Per-face target rows (N, 7) float32: one-hot labels, mixed with the teacher's rows when there is one."""
    targets = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
    if teacher_probs is None:
        return targets
    if teacher_probs.shape != targets.shape:
        raise InvalidInputError(
            f"teacher probabilities have shape {teacher_probs.shape}, expected {targets.shape} (one row per face)"
        )
    w = np.float32(teacher_weight)
    return (1 - w) * targets + w * teacher_probs.astype(np.float32)

"""Facts shared by the runtime and the export step: labels, input geometry, metadata keys."""

from __future__ import annotations

#: FER2013 label order: column i of every probability row is ``EMOTIONS[i]``.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Training crops are 48x48 grayscale.
INPUT_SIZE: tuple[int, int] = (48, 48)

#: ONNX graph input / output names written by the export step.
INPUT_NAME = "faces"
OUTPUT_NAME = "probabilities"

#: ``metadata_props`` key holding this project's JSON spec of a model (labels, preprocessing, metrics).
METADATA_KEY = "fer_sdk"
METADATA_FORMAT = 1

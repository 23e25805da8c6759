"""Keras network -> LiteRT (TFLite) files with the project's metadata inside: float32 and full-integer INT8.

* float32: the whole network, ``faces`` float32 (N, 48, 48, 1) in [0, 1] -> ``probabilities`` (softmax).
* INT8 (full integer, what microcontrollers and phone NPUs want): every op int8; the input is uint8 with
  scale 1/255 and zero point 0 (so a pixel goes in as itself), the output is the int8 *logits* of the last
  dense layer, and the reader applies a float softmax (metadata ``output.kind = "logits"``): an int8 softmax
  would break row sums and ties (the ONNX INT8 models keep that head in float for the same reason).
* INT8 with a float head (``float_head=True``): the same, but the last dense layer (512 x 7 for shallow) runs in
  float32 and outputs float32 logits, as in the ONNX INT8 models; used when full integer misses the gate.
  Calibration uses the same Training faces as the ONNX INT8 model (``pipeline.calibration_pick``).

The ``fer_sdk`` metadata (``fer_sdk.metadata.ModelMetadata``) goes into the flatbuffer's ``metadata`` table, so
``fer_sdk.litert`` (and any TFLite reader) finds labels, input size, normalisation and framing in the file.
Needs TensorFlow (the train extra); the runtime that reads the files does not.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from fer_sdk.constants import INPUT_NAME, INPUT_SIZE, METADATA_KEY
from fer_sdk.errors import ModelError
from fer_sdk.files import atomic_write_bytes
from fer_sdk.metadata import ModelMetadata, OutputSpec

LOGITS_NAME = "logits"


def _converter(net, *, int8: bool, calibration_faces: np.ndarray | None):
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([None, *INPUT_SIZE, 1], tf.float32, name=INPUT_NAME)
    if int8:
        head = net.get_layer("probabilities")
        features = keras.Model(net.inputs, head.input)
        kernel, bias = (tf.constant(w) for w in head.get_weights())

        @tf.function(input_signature=[spec])
        def run(faces):
            return {LOGITS_NAME: tf.matmul(features(faces, training=False), kernel) + bias}
    else:

        @tf.function(input_signature=[spec])
        def run(faces):
            return {"probabilities": net(faces, training=False)}

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # weights frozen into constants: Keras 3 variables would otherwise become READ_VARIABLE ops that nothing
    # initialises in the interpreter (NaN or a failed invoke)
    frozen = convert_variables_to_constants_v2(run.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if int8:
        if calibration_faces is None:
            raise ModelError("an INT8 LiteRT model needs calibration_faces (FER2013 Training faces)")
        x = (np.asarray(calibration_faces, np.float32) / 255.0)[..., None]

        def representative():
            for i in range(len(x)):
                yield [x[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
    return converter


def _float_head(converter) -> bytes:
    """INT8 everywhere but the last dense layer (the logits), which stays float32, as in the ONNX INT8 models:
    calibrate only, then quantize with that layer's output denylisted (what
    ``tf.lite.experimental.QuantizationDebugger``'s ``denylisted_nodes`` does, without its debug model).
    Input uint8 (the pixel), output float32 logits."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": only its op list is read here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=calibrated)
    dense = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    if not dense:
        raise ModelError("the network has no dense output layer to keep in float")
    logits = interpreter._get_tensor_details(dense[-1]["outputs"][0], 0)["name"]
    return tfl_convert.mlir_quantize(
        calibrated, input_data_type=tf.uint8, output_data_type=tf.float32, denylisted_nodes=[logits]
    )


def embed_metadata(tflite: bytes, meta: ModelMetadata) -> bytes:
    """``tflite`` with ``meta`` as its ``fer_sdk`` metadata entry (replacing an earlier one)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_KEY, METADATA_KEY.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(
    net,
    out: str | os.PathLike,
    *,
    metadata: ModelMetadata,
    int8: bool = False,
    float_head: bool = False,
    calibration_faces: np.ndarray | None = None,
    parity_faces: np.ndarray | None = None,
    reference=None,
    min_agreement: float | None = None,
    log=print,
) -> dict:
    """Convert the Keras ``net`` to ``out`` (float32, or full-integer INT8 with ``int8=True``), embed
    ``metadata`` (precision, output kind and a ``quantization`` block are set here; ``float_head=True`` keeps the
    last dense layer in float32, see ``_float_head``) and check the file with
    ``fer_sdk.litert`` against ``reference`` (a ``Classifier``, usually the fp32 ONNX twin) on
    ``parity_faces``: the argmax agreement goes into the report. Written atomically, unless the agreement is
    under ``min_agreement`` (then nothing is written: ``report["written"]`` says which); returns a report."""
    from fer_sdk.classifier import Classifier
    from fer_sdk.litert import LiteRTSession

    out = Path(out)
    converter = _converter(net, int8=int8, calibration_faces=calibration_faces)
    try:
        flat = _float_head(converter) if int8 and float_head else converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises its own ConverterError and plain Exceptions
        raise ModelError(f"TensorFlow's LiteRT converter failed for {out.name}: {exc}") from None
    if int8:
        meta = metadata.replace(
            precision="int8",
            output=OutputSpec(name=LOGITS_NAME, kind="logits"),
            metrics={},
            quantization={
                "format": "tflite-int8-float-head" if float_head else "tflite-full-integer",
                "input_type": "uint8",
                "output_type": (
                    "float32 logits (the last dense layer runs in float32; float softmax in the reader)"
                    if float_head
                    else "int8 logits (float softmax in the reader)"
                ),
                "calibration_faces": len(calibration_faces) if calibration_faces is not None else 0,
            },
        )
    else:
        meta = metadata.replace(precision="fp32", metrics={}, quantization=None)
    data = embed_metadata(flat, meta)
    report: dict = {"path": str(out), "precision": meta.precision, "size_bytes": len(data)}
    if parity_faces is not None and reference is not None:
        mine = Classifier(session=LiteRTSession(data, source=out.name), model=out.name).predict_proba(parity_faces)
        theirs = reference.predict_proba(parity_faces)
        report["parity"] = {
            "faces": len(parity_faces),
            "argmax_agreement": float((mine.argmax(1) == theirs.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(mine - theirs).max()),
        }
        log(
            f"{out.name}: argmax agreement with {reference.model_name} {report['parity']['argmax_agreement']:.2%} "
            f"on {len(parity_faces)} faces, max |p diff| {report['parity']['max_abs_prob_diff']:.3f}"
        )
    if min_agreement is not None and report.get("parity", {}).get("argmax_agreement", 0.0) < min_agreement:
        log(f"{out.name}: under the {min_agreement:.1%} agreement it needs; not written")
        return {**report, "written": False}
    atomic_write_bytes(out, data)
    log(f"wrote {out} ({len(data) / 1e6:.2f} MB, {meta.precision})")
    return {**report, "written": True}

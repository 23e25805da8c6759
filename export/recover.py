"""Rebuild the Keras network from a bundled fp32 ONNX model, to fine-tune it further when its run is gone.

    fer-sdk models recover deep --data fer2013.csv.gz --out runs/deep-start.keras

tf2onnx keeps the conv / dense weights as they are and turns each batch norm into ``Mul(s)`` + ``Add(b)``. The
network is rebuilt from the model's ``architecture`` metadata, weights are copied, and each batch norm gets
moving mean / variance = the statistics of its input on Training faces with gamma / beta solved so that
inference is exactly ``s * x + b`` again (and training-mode batch norm starts close to it). The result is
checked against the ONNX model on the given faces before it is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_sdk.errors import ModelError
from fer_sdk.runtime import create_session, run_batches

from .convert import onnx_metadata


def _nodes(graph, op: str, layer: str) -> list:
    """Nodes of type ``op`` that belong to Keras layer ``layer`` (tf2onnx names them ``.../<layer>_1/...``)."""
    key = f"/{layer}_1/"
    return [n for n in graph.node if n.op_type == op and any(key in name for name in [*n.input, *n.output])]


def recover_network(onnx_path: str | Path, faces: np.ndarray, *, max_diff: float = 1e-4):
    """The Keras network of a fer-sdk fp32 ONNX export; ``faces`` uint8 (N, 48, 48) set the BN statistics and
    the parity check (raises ``ModelError`` beyond ``max_diff``)."""
    import onnx
    from onnx import numpy_helper

    from .architectures import build
    from .train import to_model_input

    model = onnx.load(str(onnx_path))
    meta = onnx_metadata(model)
    if meta.precision != "fp32" or meta.architecture not in ("shallow", "deep"):
        raise ModelError(
            f"{onnx_path} is not an fp32 fer-sdk shallow/deep export (precision {meta.precision!r}, "
            f"architecture {meta.architecture!r}); recover from the fp32 file, e.g. deep.onnx"
        )
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    net = build(meta.architecture)
    x = to_model_input(faces)

    # the input of every batch norm's Mul, added as graph outputs to measure its statistics
    bn = {}
    for layer in (lyr for lyr in net.layers if lyr.name.endswith("_bn")):
        mul = next(n for n in _nodes(model.graph, "Mul", layer.name) if n.input[1] in inits)
        add = next(n for n in model.graph.node if n.op_type == "Add" and n.input[0] == mul.output[0])
        bn[layer.name] = (mul.input[0], inits[mul.input[1]].reshape(-1), inits[add.input[1]].reshape(-1))
        model.graph.output.append(onnx.helper.make_tensor_value_info(mul.input[0], onnx.TensorProto.FLOAT, None))
    session = create_session(model.SerializeToString())  # with the batch norms' inputs as extra outputs
    names = [o.name for o in session.get_outputs()]
    sums = {k: 0.0 for k in bn}
    squares = {k: 0.0 for k in bn}
    counts = dict.fromkeys(bn, 0)
    probabilities = []
    for outputs in run_batches(session, x, 256):  # every output: the probabilities, then the batch norms' inputs
        result = dict(zip(names, outputs))
        probabilities.append(result[names[0]])
        for key, (tensor, _, _) in bn.items():
            a = result[tensor].astype(np.float64)
            axes = (0, 2, 3) if a.ndim == 4 else (0,)  # conv outputs are NCHW in the ONNX graph
            sums[key] += a.sum(axes)
            squares[key] += (a * a).sum(axes)
            counts[key] += a.size // a.shape[1]

    for layer in net.layers:
        if layer.name.endswith("_conv"):
            conv = _nodes(model.graph, "Conv", layer.name)[0]
            layer.set_weights([inits[conv.input[1]].transpose(2, 3, 1, 0), inits[conv.input[2]]])
        elif layer.name.endswith("_dense") or layer.name == "probabilities":
            matmul = next(n for n in _nodes(model.graph, "MatMul", layer.name) if n.input[1] in inits)
            bias = next(n for n in model.graph.node if n.op_type == "Add" and n.input[0] == matmul.output[0])
            layer.set_weights([inits[matmul.input[1]], inits[bias.input[1]]])
        elif layer.name in bn:
            _, scale, shift = bn[layer.name]
            mean = sums[layer.name] / counts[layer.name]
            var = np.maximum(squares[layer.name] / counts[layer.name] - mean * mean, 0.0)
            gamma = scale * np.sqrt(var + layer.epsilon)
            layer.set_weights([a.astype(np.float32) for a in (gamma, shift + mean * scale, mean, var)])
        elif layer.weights:
            raise ModelError(f"{onnx_path}: no rule to recover layer {layer.name!r}")

    expected = np.concatenate(probabilities)
    got = np.asarray(net.predict(x, batch_size=256, verbose=0))
    diff = float(np.abs(expected - got).max())
    if diff > max_diff:
        raise ModelError(f"{onnx_path}: the recovered network differs from the ONNX model by {diff:.2e} (> {max_diff})")
    return net, diff


if __name__ == "__main__":  # ``python -m fer_sdk.export.recover ARGS`` is ``fer-sdk models recover ARGS``
    from fer_sdk.cli import run_as

    run_as(["models", "recover"])

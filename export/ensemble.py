"""Weighted ensembles of exported FER models as one ONNX file.

    fer-sdk models ensemble --member deep-int8=0.7 --member shallow-int8=0.3 --out ensemble-int8.onnx

Every member (a bundled name or an ``.onnx`` path exported by this project) reads the same ``faces`` input;
the ensemble's ``probabilities`` are ``sum(weight_i * probabilities_i)`` with the weights normalised to sum
to 1, so the output is still a softmax row and the file loads like any other model (``Classifier(path)``).
The members' graphs are copied in unchanged (INT8 members stay INT8; the output head stays float), and the
file is written only after ONNX Runtime shows it equals the weighted average of the members run one by one.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_sdk.constants import INPUT_NAME, INPUT_SIZE, OUTPUT_NAME
from fer_sdk.errors import TRAIN_EXTRA_HINT, InvalidInputError, ModelError
from fer_sdk.files import atomic_write_bytes, check_output_file
from fer_sdk.metadata import ModelMetadata
from fer_sdk.registry import resolve_model
from fer_sdk.runtime import create_session

from .convert import (
    PARITY_ATOL,
    SUM_ATOL,
    checked_bytes,
    ort_predict,
    producer_versions,
    require_modules,
    stamp,
)

#: Random faces the merged graph is checked on against its members (no dataset needed).
CHECK_FACES = 64
#: Metadata sections every member must share exactly: same labels and the same preprocessing.
SHARED_KEYS = ("labels", "input", "output")


@dataclass(frozen=True)
class _Member:
    """One loaded member: its ONNX Runtime session (kept for the parity check) and its file's sha256."""

    name: str
    path: Path
    proto: Any
    meta: ModelMetadata
    session: Any
    sha256: str


def parse_members(items) -> list[tuple[str, float]]:
    """``["deep-int8=0.7", "shallow-int8=0.3"]`` (or ``(model, weight)`` pairs) -> checked ``[(model, weight)]``."""
    members = []
    for item in items:
        if isinstance(item, str):
            model, sep, weight = item.rpartition("=")
            if not sep or not model:
                raise InvalidInputError(
                    f"ensemble member {item!r} must be MODEL=WEIGHT, e.g. deep-int8=0.7 or runs/a.onnx=0.5"
                )
            try:
                weight = float(weight)
            except ValueError:
                raise InvalidInputError(
                    f"ensemble member {item!r}: weight {weight!r} is not a number; write e.g. {model}=0.5"
                ) from None
        else:
            model, weight = item
        members.append((model, weight))
    if len(members) < 2:
        raise InvalidInputError(
            f"an ensemble needs at least 2 members, got {len(members)}; pass e.g. deep-int8=0.7 shallow-int8=0.3"
        )
    for model, weight in members:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise InvalidInputError(f"ensemble weight {weight!r} of {model!r} must be a finite number > 0 (e.g. 0.5)")
    return [(m, float(w)) for m, w in members]


def _load_member(model, onnx) -> _Member:
    """One member, read once; typed errors for anything that is not a model this project exports."""
    from fer_sdk.runtime import read_metadata

    path, spec = resolve_model(model)  # bundled names are sha256-checked here
    try:
        data = path.read_bytes()
        proto = onnx.load_from_string(data)
        session = create_session(data)
    except Exception as exc:  # noqa: BLE001 - protobuf, ONNX Runtime and OS errors all mean "not a usable model"
        raise ModelError(
            f"ensemble member {str(model)!r} ({path}) is not a loadable ONNX model ({type(exc).__name__}: {exc}); "
            "pass a bundled model name or an .onnx file written by fer-sdk export"
        ) from None
    meta = read_metadata(session, path)  # typed errors; checks the [N, 48, 48, 1] -> [N, 7] contract
    if meta.ensemble:
        raise InvalidInputError(f"ensemble member {str(model)!r} is itself an ensemble; list its members instead")
    return _Member(spec.name if spec else path.stem, path, proto, meta, session, hashlib.sha256(data).hexdigest())


def _opsets(protos) -> list:
    """The members' opset imports merged; the default (ai.onnx) domain must be the same version in all."""
    from onnx import helper

    versions: dict[str, set[int]] = {}
    for proto in protos:
        for op in proto.opset_import:
            versions.setdefault(op.domain, set()).add(op.version)
    if len(versions.get("", set())) > 1:
        raise ModelError(
            f"ensemble members use different ONNX opsets {sorted(versions[''])}; export them with the same "
            "--opset (fer-sdk export --opset 17)"
        )
    return [helper.make_opsetid(domain, max(v)) for domain, v in versions.items()]


def _prefix_names(graph, prefix: str) -> None:
    """Prefix every tensor and node name of ``graph`` and its subgraphs, in place.

    Renaming every occurrence the same way keeps outer-scope references inside If/Loop bodies intact
    (``onnx.compose.add_prefix`` misses outer initializers read by a subgraph). Empty names (omitted optional
    inputs) stay empty.
    """

    def p(name: str) -> str:
        return prefix + name if name else name

    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = p(value.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = p(sparse.values.name)
        sparse.indices.name = p(sparse.indices.name)
    for node in graph.node:
        node.input[:] = [p(n) for n in node.input]
        node.output[:] = [p(n) for n in node.output]
        node.name = p(node.name)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _prefix_names(sub, prefix)


def merge(protos, weights: list[float], meta: ModelMetadata, onnx):
    """One ModelProto: ``faces`` -> each member graph -> ``sum(weight_i * probabilities_i)``.

    Every name in member ``i`` gets the prefix ``m<i>/`` (``_prefix_names``) and an Identity feeds it the
    shared input; the ensemble's own tensors use the prefix ``ensemble/``.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, value_info, functions, weighted = [], [], [], [], []
    for i, proto in enumerate(protos):
        prefix = f"m{i}/"
        g = onnx.GraphProto()
        g.CopyFrom(proto.graph)
        _prefix_names(g, prefix)
        nodes.append(helper.make_node("Identity", [INPUT_NAME], [prefix + INPUT_NAME], name=f"ensemble/input{i}"))
        nodes.extend(g.node)
        initializers.extend(g.initializer)
        value_info.extend(g.value_info)
        functions.extend(proto.functions)
        weight = numpy_helper.from_array(np.array(weights[i], np.float32), f"ensemble/weight{i}")
        initializers.append(weight)
        weighted.append(f"ensemble/weighted{i}")
        nodes.append(
            helper.make_node("Mul", [prefix + OUTPUT_NAME, weight.name], [weighted[-1]], name=f"ensemble/mul{i}")
        )
    nodes.append(helper.make_node("Sum", weighted, [OUTPUT_NAME], name="ensemble/sum"))
    spec = meta.input
    shape = ["N", spec.height, spec.width, spec.channels]
    graph = helper.make_graph(
        nodes,
        "fer_ensemble",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", len(meta.labels)])],
        initializer=initializers,
        value_info=value_info,
    )
    model = helper.make_model(graph, opset_imports=_opsets(protos), functions=functions)
    model.ir_version = max(p.ir_version for p in protos)
    return model


def _check_members(members: list[_Member]) -> None:
    base = members[0]
    for m in members[1:]:
        for key in SHARED_KEYS:
            if getattr(m.meta, key) != getattr(base.meta, key):
                raise ModelError(
                    f"ensemble members {base.name!r} and {m.name!r} differ in metadata {key!r} "
                    f"({getattr(base.meta, key)!r} vs {getattr(m.meta, key)!r}); only models with the same labels and "
                    "preprocessing can be averaged"
                )
    for m in members:
        graph = m.proto.graph
        if [i.name for i in graph.input] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in graph.output]:
            raise ModelError(
                f"ensemble member {m.name!r} ({m.path}) must read one input {INPUT_NAME!r} and write "
                f"{OUTPUT_NAME!r}; re-export it with fer-sdk export"
            )
        batch = graph.input[0].type.tensor_type.shape.dim[0]
        if batch.HasField("dim_value"):
            raise ModelError(
                f"ensemble member {m.name!r} ({m.path}) has a fixed batch size {batch.dim_value}; the ensemble "
                "takes any batch: re-export it with fer-sdk export (dynamic batch axis N)"
            )


def build_ensemble(members, out: str | os.PathLike, *, log=print) -> dict:
    """Write the weighted ensemble of ``members`` (``[(model, weight)]`` or ``MODEL=WEIGHT`` strings) to ``out``.

    Returns a report (members with their sha256 and normalised weights, parity, size, sha256). Raises
    ``InvalidInputError`` for bad members or weights and ``ModelError`` for members that cannot be merged
    or a merged graph that does not reproduce the members; nothing is written then.
    """
    (onnx,) = require_modules("onnx", needs="building an ensemble needs onnx", install=TRAIN_EXTRA_HINT)
    t_start = time.perf_counter()
    pairs = parse_members(members)
    out = check_output_file(out, option="out")
    total = sum(w for _, w in pairs)
    if not math.isfinite(total):
        raise InvalidInputError(f"ensemble weights {[w for _, w in pairs]} overflow; use weights like 0.7 and 0.3")
    weights = [w / total for _, w in pairs]
    loaded = [_load_member(model, onnx) for model, _ in pairs]
    _check_members(loaded)
    files = [m.path.resolve() for m in loaded]
    if len(set(files)) != len(files):
        raise InvalidInputError(
            f"ensemble members {[str(f) for f in files]} repeat a model; give each model once with its weight"
        )
    check_output_file(out, option="out", inputs=files)  # the ensemble must not replace one of its members

    base = loaded[0].meta
    proto = merge([m.proto for m in loaded], weights, base, onnx)
    precisions = {m.meta.precision for m in loaded}
    meta = ModelMetadata(
        architecture="ensemble",
        precision=precisions.pop() if len(precisions) == 1 else "mixed",
        parameters=sum(m.meta.parameters for m in loaded),
        labels=base.labels,
        input=base.input,
        output=base.output,
        source_sha256=hashlib.sha256("".join(m.meta.source_sha256 or "" for m in loaded).encode()).hexdigest(),
        ensemble=[
            {
                "name": m.name,
                "file": m.path.name,
                "sha256": m.sha256,
                "architecture": m.meta.architecture,
                "precision": m.meta.precision,
                "parameters": m.meta.parameters,
                "weight": w,
            }
            for m, w in zip(loaded, weights)
        ],
        metrics={},
        producer=producer_versions(),  # the members' own producers are in their files
        framing=base.framing,
    )
    stamp(proto, meta)
    data = checked_bytes(proto, "ensemble")

    faces = np.random.default_rng(0).random((CHECK_FACES, *INPUT_SIZE, 1), dtype=np.float32)
    try:
        expected = sum(w * ort_predict(m.session, faces) for m, w in zip(loaded, weights))
        got = ort_predict(create_session(data), faces)
    except Exception as exc:  # noqa: BLE001 - an ONNX Runtime failure on the merged graph is a model problem
        raise ModelError(f"ONNX Runtime cannot run the merged ensemble ({exc}); {out} was not written") from None
    diff = float(np.max(np.abs(got - expected)))
    row_error = float(np.max(np.abs(got.sum(1, dtype=np.float64) - 1)))
    if not diff <= PARITY_ATOL or not row_error <= SUM_ATOL:
        raise ModelError(
            f"the merged ensemble differs from its members' weighted average by {diff:.2e} (limit "
            f"{PARITY_ATOL:.0e}) or its rows sum to 1 +- {row_error:.1e}; {out} was not written"
        )
    atomic_write_bytes(out, data)
    report = {
        "path": str(out),
        "members": meta.ensemble,
        "parameters": meta.parameters,
        "precision": meta.precision,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "parity": {"faces": CHECK_FACES, "max_abs_diff": diff, "max_row_sum_error": row_error},
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    shown = " + ".join(f"{w:.2f} x {m.name}" for m, w in zip(loaded, weights))
    log(
        f"wrote {out} ({shown}; {len(data) / 1e6:.1f} MB, sha256 {report['sha256'][:12]}; "
        f"max |ensemble - members| {diff:.1e})"
    )
    return report


if __name__ == "__main__":  # ``python -m fer_sdk.export.ensemble ARGS`` is ``fer-sdk models ensemble ARGS``
    from fer_sdk.cli import run_as

    run_as(["models", "ensemble"])

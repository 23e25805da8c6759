"""One runtime in its own process: ``python -m fer_sdk.benchmarks.worker '<spec json>'``.

Why a process per runtime configuration: TensorFlow's thread pools are fixed when it initialises, so 1 thread
and all cores need two processes; model load time and peak RSS are then those of that runtime alone; and the
parent process (and the SDK) never imports TensorFlow.

Spec: ``{"kind": "onnxruntime", "path": ..., "threads": int | null, "providers": [...]}`` or
``{"kind": "keras", "architecture": "deep", "keras_path": str | null, "threads": int | null}``.

Protocol: one JSON object per line. The worker first answers with its load report, then serves requests
``{"op": "warmup" | "time" | "memory" | "quit", ...}`` read from stdin. Replies go to the original stdout;
anything a library prints is sent to stderr instead, so it cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

from .machine import current_rss_bytes, peak_rss_bytes
from .timing import time_calls, warmup

#: Seed of the synthetic input faces (latency does not depend on pixel values).
INPUT_SEED = 0


def faces_batch(batch_size: int) -> np.ndarray:
    """float32 (N, 48, 48, 1) in [0, 1]: random uint8 faces scaled as the models expect."""
    rng = np.random.default_rng(INPUT_SEED)
    return rng.integers(0, 256, (batch_size, 48, 48, 1), dtype=np.uint8).astype(np.float32) / np.float32(255)


class _OrtBackend:
    modes = ("session.run",)

    def __init__(self, spec: dict) -> None:
        t0 = time.perf_counter()
        import onnxruntime  # noqa: F401

        from fer_sdk.runtime import create_session, read_metadata

        self.import_s = time.perf_counter() - t0
        self.rss_after_import = current_rss_bytes()
        t0 = time.perf_counter()
        self.session = create_session(spec["path"], spec.get("providers"), spec.get("threads"))
        self.load_s = time.perf_counter() - t0
        meta = read_metadata(self.session, spec["path"])
        self.input_name = meta.input.name
        self.output_name = meta.output.name
        self.providers = list(self.session.get_providers())

    def call(self, mode: str, x: np.ndarray):
        return lambda: self.session.run([self.output_name], {self.input_name: x})


class _LiteRTBackend:
    """A ``.tflite`` file on ai-edge-litert (XNNPACK), through the same session look-alike the Classifier uses
    (input quantized, output dequantized: what a caller pays)."""

    modes = ("interpreter.invoke",)

    def __init__(self, spec: dict) -> None:
        t0 = time.perf_counter()
        import ai_edge_litert.interpreter  # noqa: F401

        from fer_sdk.litert import LiteRTSession

        self.import_s = time.perf_counter() - t0
        self.rss_after_import = current_rss_bytes()
        t0 = time.perf_counter()
        self.session = LiteRTSession(spec["path"], threads=spec.get("threads"))
        self.load_s = time.perf_counter() - t0
        self.providers = self.session.get_providers()

    def call(self, mode: str, x: np.ndarray):
        return lambda: self.session.run(None, {"faces": x})


class _KerasBackend:
    modes = ("model.predict", "model(x)")

    def __init__(self, spec: dict) -> None:
        threads = spec.get("threads")
        t0 = time.perf_counter()
        import tensorflow as tf

        if threads is not None:  # must happen before TensorFlow initialises its runtime
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            if int(threads) == 1:
                tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        self.import_s = time.perf_counter() - t0
        self.rss_after_import = current_rss_bytes()
        t0 = time.perf_counter()
        if spec.get("keras_path"):
            self.model = keras.saving.load_model(spec["keras_path"], compile=False)
        else:
            from fer_sdk.export.architectures import build

            keras.utils.set_random_seed(0)
            self.model = build(spec["architecture"])
        self.load_s = time.perf_counter() - t0
        self.providers = [d.name for d in tf.config.list_logical_devices()]
        self.tf_threads = {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }

    def call(self, mode: str, x: np.ndarray):
        model = self.model
        if mode == "model.predict":
            return lambda: model.predict(x, batch_size=len(x), verbose=0)
        return lambda: np.asarray(model(x, training=False))


def _serve(spec: dict, out) -> None:
    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        backends = {"onnxruntime": _OrtBackend, "litert": _LiteRTBackend, "keras": _KerasBackend}
        backend = backends[spec["kind"]](spec)
    except BaseException as err:  # noqa: BLE001 - any load failure goes to the parent, which records it
        traceback.print_exc()
        reply({"ok": False, "error": f"{type(err).__name__}: {err}"})
        return
    reply(
        {
            "ok": True,
            "import_s": backend.import_s,
            "load_s": backend.load_s,
            "providers": backend.providers,
            "tf_threads": getattr(backend, "tf_threads", None),
            "rss_after_import_bytes": backend.rss_after_import,
            "rss_after_load_bytes": current_rss_bytes(),
        }
    )
    inputs: dict[int, np.ndarray] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                reply({"ok": True})
                return
            if op == "memory":
                reply({"ok": True, "peak_rss_bytes": peak_rss_bytes(), "rss_bytes": current_rss_bytes()})
                continue
            mode, batch = request["mode"], int(request["batch"])
            if mode not in backend.modes:
                raise ValueError(f"mode {mode!r} is not one of {backend.modes}")
            x = inputs.get(batch)
            if x is None:
                x = inputs[batch] = faces_batch(batch)
            fn = backend.call(mode, x)
            if op == "warmup":
                reply({"ok": True, **warmup(fn, min_seconds=float(request.get("min_seconds", 0.2)))})
            elif op == "time":
                reply({"ok": True, "times": time_calls(fn, int(request["calls"]))})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as err:  # noqa: BLE001 - one bad request must not kill the worker; the parent records it
            traceback.print_exc()
            reply({"ok": False, "error": f"{type(err).__name__}: {err}"})


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries go to stderr
    sys.stdout = sys.stderr
    with out:
        _serve(spec, out)


if __name__ == "__main__":
    main()

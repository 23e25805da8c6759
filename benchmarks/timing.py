"""Timing primitives: the protocol every runtime is measured with, and the latency summary.

Protocol (what the report calls "warm-up, then interleaved rounds"): each configuration is warmed up
(``warmup_calls`` untimed calls, the first one reported as ``first_call_ms``), then measured in rounds; one
round runs every configuration once, ``calls`` back-to-back timed calls each, so that all runtimes see the
same machine state. Each call is timed with ``time.perf_counter`` around the inference call only (the input
batch is prepared beforehand).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[], object], calls: int) -> list[float]:
    """Run ``fn`` ``calls`` times; seconds per call."""
    out = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        fn()
        out.append(clock() - start)
    return out


def warmup(fn: Callable[[], object], *, min_calls: int = 2, max_calls: int = 10, min_seconds: float = 0.2) -> dict:
    """Untimed-for-the-stats warm-up: at least ``min_calls``, more (up to ``max_calls``) until ``min_seconds``.

    Returns ``first_call_s`` (includes lazy initialisation, graph tracing, allocator growth) and
    ``estimate_s`` (median of the later calls), used to size the timed rounds.
    """
    times = time_calls(fn, 1)
    while len(times) < max_calls and (len(times) < min_calls or sum(times[1:]) < min_seconds):
        times += time_calls(fn, 1)
    rest = times[1:] or times
    return {"first_call_s": times[0], "estimate_s": float(np.median(rest)), "calls": len(times)}


def calls_per_round(estimate_s: float, *, round_seconds: float, max_calls: int) -> int:
    """How many back-to-back calls make one round of a configuration (>= 1; small batches get many)."""
    if not estimate_s > 0:
        return max_calls
    return max(1, min(max_calls, math.ceil(round_seconds / estimate_s)))


def summarize(seconds: Sequence[float], batch_size: int) -> dict:
    """Latency percentiles (ms, per call), faces per second (from the median) and ms per face."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("summarize: no timings")
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return {
        "samples": int(ms.size),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "faces_per_s": batch_size * 1e3 / p50 if p50 > 0 else float("inf"),
        "ms_per_face": p50 / batch_size,
    }

"""Timing callables fairly on a shared machine: interleaved slices, latency percentiles."""

from __future__ import annotations

import itertools
import time

import numpy as np


def measure(fns: dict, x, seconds: float = 2.0, slice_s: float = 0.25, warmup: int = 2,
            min_iters: int = 3, pause_s: float = 0.05) -> dict:
    """Time every ``fns[name](x)`` for about ``seconds`` each, interleaved in short slices, so a
    load change on a shared machine hits every runtime alike and their ratios stay fair.
    Each slice starts after a pause (the previous runtime's spinning onnxruntime threads go idle)
    and one untimed call (the pool threads wake, caches fill); the order rotates every round, so
    no runtime always follows the same one.
    Returns name -> images/s over the timed calls and p50/p95 of the per-call latency."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)
    names = list(fns)
    for round_ in itertools.count():
        todo = [n for n in names if spent[n] < seconds or len(times[n]) < min_iters]
        if not todo:
            break
        shift = round_ % len(todo)
        for name in todo[shift:] + todo[:shift]:
            fn = fns[name]
            time.sleep(pause_s)
            fn(x)
            end = time.perf_counter() + slice_s
            while True:
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
                spent[name] += times[name][-1]
                if time.perf_counter() >= end:
                    break
    out = {}
    for name, ts in times.items():
        ms = np.array(ts) * 1000
        out[name] = {"images_per_s": len(x) * len(ts) / sum(ts), "p50_ms": float(np.percentile(ms, 50)),
                     "p95_ms": float(np.percentile(ms, 95)), "iterations": len(ts)}
    return out

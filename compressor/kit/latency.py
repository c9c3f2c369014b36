"""Side-by-side CPU latency: models timed in alternation, so machine noise hits all alike.

Shared machines drift (other jobs, frequency scaling); timing model A for a minute and then
model B compares two different machines. We interleave single forward passes after a warm-up,
rotating which model goes first each round (A B C, B C A, ...), and report the median and
min–max per model plus median ratios against the first model (BENCHMARKS.md: compare as
ratios measured side by side, quote medians). :func:`interleaved_times` times any callables
(ONNX Runtime sessions too) in CPU and wall time; :func:`compare_latency` compares models.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def interleaved_samples(
    calls: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 2
) -> dict[str, dict[str, list[float]]]:
    """Process-CPU and wall milliseconds of every timed call of each entry, ``{name: {"cpu_ms":
    [...], "wall_ms": [...]}}``: ``warmup`` untimed rounds, then ``repeats`` rounds of one call
    each, the order rotated every round."""
    names = list(calls)
    samples: dict[str, dict[str, list[float]]] = {n: {"cpu_ms": [], "wall_ms": []} for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls.values():
                call()
        for round_ in range(repeats):
            shift = round_ % len(names)  # rotate who goes first: no position bias
            for name in names[shift:] + names[:shift]:
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                calls[name]()
                samples[name]["cpu_ms"].append((time.process_time() - start_cpu) * 1e3)
                samples[name]["wall_ms"].append((time.perf_counter() - start_wall) * 1e3)
    return samples


def interleaved_times(
    calls: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Median process-CPU and wall milliseconds per call of each entry, timed alternately
    (:func:`interleaved_samples`). CPU time counts only this process: on a shared machine it is
    steadier than wall time."""
    return {
        name: {key: statistics.median(values) for key, values in times.items()}
        for name, times in interleaved_samples(calls, repeats=repeats, warmup=warmup).items()
    }


def compare_latency(
    models: Mapping[str, nn.Module],
    x: Any,
    *,
    repeats: int = 30,
    warmup: int = 3,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, Any]:
    """Median/min/max milliseconds per forward of each model on ``x``, timed alternately.

    Returns ``{name: {"median_ms", "min_ms", "max_ms"}, ..., "speedup": {name: ratio},
    "speedup_min": {name: ratio}}`` where ``speedup[name] = median(first) / median(name)`` and
    ``speedup_min`` is the same ratio of the minima.
    """
    call = forward or (lambda model, inputs: model(inputs))
    for model in models.values():
        model.eval()
    samples = interleaved_samples(
        {name: functools.partial(call, model, x) for name, model in models.items()},
        repeats=repeats,
        warmup=warmup,
    )
    times = {name: samples[name]["wall_ms"] for name in models}
    out: dict[str, Any] = {
        name: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "max_ms": max(values),
        }
        for name, values in times.items()
    }
    first = next(iter(models))
    out["speedup"] = {name: out[first]["median_ms"] / out[name]["median_ms"] for name in models}
    # Ratio of the fastest runs: the least contended estimate on a busy shared host.
    out["speedup_min"] = {name: out[first]["min_ms"] / out[name]["min_ms"] for name in models}
    return out

"""Side-by-side CPU latency: models timed in alternation, so machine noise hits all alike.

Shared machines drift (other jobs, frequency scaling); timing model A for a minute and then
model B compares two different machines. We interleave single forward passes after a warm-up,
rotating which model goes first each round (A B C, B C A, ...), and report the median and
min–max per model plus median ratios against the first model (BENCHMARKS.md: compare as
ratios measured side by side, quote medians).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


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
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                call(model, x)
        names = list(models)
        for round_ in range(repeats):
            shift = round_ % len(names)  # rotate who goes first: no position bias
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                call(models[name], x)
                times[name].append((time.perf_counter() - start) * 1e3)
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

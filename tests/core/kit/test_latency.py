"""Interleaved timing: every entry is called as often, in an order rotated every round."""

from __future__ import annotations

from torch import nn

from compressor.kit.latency import compare_latency, interleaved_samples, interleaved_times


def test_interleaved_samples_rotate_the_order_after_the_warmup() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = interleaved_samples(calls, repeats=3, warmup=1)
    assert order == list("abc" + "abc" + "bca" + "cab")
    assert {name: len(s["cpu_ms"]) for name, s in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(len(s["wall_ms"]) == 3 for s in samples.values())


def test_interleaved_times_are_medians_of_cpu_and_wall_time() -> None:
    times = interleaved_times({"a": lambda: None, "b": lambda: None}, repeats=5, warmup=0)
    assert set(times) == {"a", "b"}
    assert all(set(t) == {"cpu_ms", "wall_ms"} and t["wall_ms"] >= 0 for t in times.values())


def test_compare_latency_runs_every_model_alike_and_ratios_against_the_first() -> None:
    seen: list[str] = []

    def forward(model: nn.Module, x: object) -> None:
        seen.append(type(model).__name__)

    out = compare_latency(
        {"id": nn.Identity(), "relu": nn.ReLU()}, None, repeats=4, warmup=1, forward=forward
    )
    assert seen.count("Identity") == seen.count("ReLU") == 5
    assert out["speedup"]["id"] == 1.0 and out["speedup_min"]["id"] == 1.0
    assert out["id"]["min_ms"] <= out["id"]["median_ms"] <= out["id"]["max_ms"]

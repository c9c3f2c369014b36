"""Schedules are pure functions of the step (METHODS.md §2)."""

from __future__ import annotations

import pytest

from compressor.contract.steps import StepClock
from compressor.host.manager import Plugins

CLOCK = StepClock(steps_per_epoch=10, total_steps=100)


def build(plugins: Plugins, **config: object):  # type: ignore[no-untyped-def]
    registry = plugins.registries.schedules
    entry = registry.get(str(config["kind"]))
    return entry.cls(entry.config.model_validate(config), CLOCK)


@pytest.mark.parametrize("kind", ["linear", "polynomial", "agp", "cubic"])
def test_ramp_hits_initial_at_start_and_final_at_end(plugins: Plugins, kind: str) -> None:
    s = build(plugins, kind=kind, initial=0.1, final=0.9, start=20, end=80)
    assert s(0) == pytest.approx(0.1)
    assert s(20) == pytest.approx(0.1)
    assert s(80) == 0.9
    assert s(99) == 0.9
    values = [s(t) for t in range(100)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_polynomial_formula_exact(plugins: Plugins) -> None:
    s = build(plugins, kind="polynomial", initial=0.0, final=0.8, start=10, end=50, power=2)
    for t in (10, 17, 30, 49):
        expected = 0.8 + (0.0 - 0.8) * (1 - (t - 10) / 40) ** 2
        assert s(t) == pytest.approx(expected, abs=1e-12)


def test_agp_and_cubic_are_power_three(plugins: Plugins) -> None:
    agp = build(plugins, kind="agp", final=0.9, end=40)
    cubic = build(plugins, kind="cubic", final=0.9, end=40)
    poly = build(plugins, kind="polynomial", final=0.9, end=40, power=3)
    assert (
        [agp(t) for t in range(41)] == [cubic(t) for t in range(41)] == [poly(t) for t in range(41)]
    )
    # fast early, slow late
    assert agp(10) - agp(0) > agp(40) - agp(30)


def test_every_holds_value_between_updates_and_end_is_exact(plugins: Plugins) -> None:
    s = build(plugins, kind="cubic", final=0.9, start=0, end=35, every=10)
    assert s(0) == s(9) == 0.0
    assert s(10) == s(19) > 0
    assert s(20) == s(29) > s(19)
    assert s(30) == s(34) < 0.9
    assert s(35) == 0.9


def test_epochs_resolve_to_steps(plugins: Plugins) -> None:
    s = build(plugins, kind="linear", final=1.0, start="1ep", end="2.5ep")
    assert s.span() == (10, 25)


def test_default_end_is_end_of_training(plugins: Plugins) -> None:
    assert build(plugins, kind="linear", final=1.0).span() == (0, 100)


def test_cosine_warmup_then_decay(plugins: Plugins) -> None:
    s = build(plugins, kind="cosine", warmup=10)
    assert s(0) == pytest.approx(0.1)
    assert s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5)
    assert s(100) == 0.0

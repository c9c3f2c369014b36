"""Schedules as pure functions of the optimizer step (METHODS.md §2).

``constant``, ``linear``, ``polynomial`` and its power-3 names ``agp``/``cubic`` (Zhu & Gupta
2017: fast early, slow late), and ``cosine`` (an LR factor with linear warm-up).
Ramps hold their value between updates when ``every`` > 1 and are exactly ``final`` at ``end``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from compressor.plugin_api import (
    ConfigError,
    Schedule,
    StepClock,
    StepSpec,
    TypeConfig,
    epochs_of,
    hookimpl,
    same_unit_order,
)


def check_within(clock: StepClock, step: int, field: str) -> None:
    """A point after the last step would never be reached: refuse it (ConfigError)."""
    if step > clock.total_steps:
        raise ConfigError(
            f"{field} is step {step}, after the last step ({clock.total_steps}): it would never "
            "be reached",
            (field,),
        )


class Constant(Schedule):
    class Config(TypeConfig):
        kind: Literal["constant"]
        value: float = 1.0

    def __call__(self, step: int) -> float:
        return float(self.config.value)


class RampConfig(TypeConfig):
    """A ramp from ``initial`` at ``start`` to ``final`` at ``end`` (default: end of training)."""

    initial: float = 0.0
    final: float
    start: StepSpec = 0
    end: StepSpec | None = None
    every: StepSpec = 1

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: Any, info: ValidationInfo) -> Any:
        start = info.data.get("start")
        if end is not None and start is not None and same_unit_order(start, end) is False:
            raise ValueError(f"end ({end}) is before start ({start})")
        return end

    @field_validator("every")
    @classmethod
    def _positive_every(cls, every: Any) -> Any:
        if every == 0:
            raise ValueError("every must be at least 1 step")
        return every


class Ramp(Schedule):
    """Shared maths of ramps; subclasses give ``shape(fraction)`` from 0 (start) to 1 (end)."""

    def __init__(self, config: Any, clock: StepClock) -> None:
        super().__init__(config, clock)
        self.start = clock.steps(config.start)
        self.end = clock.steps(config.end, default=clock.total_steps)
        if config.every == 0 or epochs_of(config.every) == 0:
            raise ConfigError("every must be positive", ("every",))
        self.every = max(1, clock.steps(config.every))  # a fraction of a step: every step
        if self.end < self.start:
            raise ConfigError(
                f"end (step {self.end}) is before start (step {self.start})", ("end",)
            )
        check_within(clock, self.end, "end")

    def shape(self, fraction: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        c = self.config
        if step >= self.end:
            return float(c.final)
        if step <= self.start:
            return float(c.initial)
        held = self.start + (step - self.start) // self.every * self.every
        fraction = (held - self.start) / (self.end - self.start)
        return float(c.initial + (c.final - c.initial) * self.shape(fraction))

    def milestones(self) -> list[int]:
        points = {self.start, self.end}
        points.update(self.start + round(q * (self.end - self.start)) for q in (0.25, 0.5, 0.75))
        return sorted(points)

    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


class Linear(Ramp):
    class Config(RampConfig):
        kind: Literal["linear"]

    def shape(self, fraction: float) -> float:
        return fraction


class Polynomial(Ramp):
    """``s(t) = final + (initial - final)·(1 - (t - start)/(end - start))^power``."""

    class Config(RampConfig):
        kind: Literal["polynomial"]
        power: float = Field(3.0, gt=0)

    def shape(self, fraction: float) -> float:
        return 1.0 - (1.0 - fraction) ** self.power

    @property
    def power(self) -> float:
        return float(self.config.power)


class AGP(Polynomial):
    """Automated gradual pruning (Zhu & Gupta 2017): the polynomial with power 3."""

    class Config(RampConfig):
        kind: Literal["agp"]

    @property
    def power(self) -> float:
        return 3.0


class Cubic(AGP):
    """Another name for ``agp``."""

    class Config(RampConfig):
        kind: Literal["cubic"]


class Cosine(Schedule):
    """An LR factor: linear warm-up to 1, then half a cosine down to ``final`` at ``end``."""

    class Config(TypeConfig):
        kind: Literal["cosine"]
        warmup: StepSpec = 0
        final: float = Field(0.0, ge=0)
        end: StepSpec | None = None

    def __init__(self, config: Any, clock: StepClock) -> None:
        super().__init__(config, clock)
        self.warmup = clock.steps(config.warmup)
        self.end = clock.steps(config.end, default=clock.total_steps)
        check_within(clock, self.end, "end")
        check_within(clock, self.warmup, "warmup")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step >= self.end:
            return float(self.config.final)
        progress = (step - self.warmup) / max(self.end - self.warmup, 1)
        final = float(self.config.final)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def milestones(self) -> list[int]:
        return sorted({0, self.warmup, (self.warmup + self.end) // 2, self.end})

    def span(self) -> tuple[int, int]:
        return (0, self.end)


@hookimpl
def register_schedules(register: Callable[[type], None]) -> None:
    for schedule in (Constant, Linear, Polynomial, AGP, Cubic, Cosine):
        register(schedule)

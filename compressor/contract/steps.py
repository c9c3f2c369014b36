"""Optimizer steps are the unit of time; epochs are sugar resolved once, at session start.

In a recipe a point in time is an int (optimizer steps) or a string with an epoch unit:
``"2ep"``, ``"2.5 epochs"``. A :class:`StepClock` turns either into steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator

_EPOCHS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ep|epoch|epochs)\s*$")


def _check_spec(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected steps (int) or epochs such as '2ep'")
    if isinstance(value, str):
        if not _EPOCHS.match(value):
            raise ValueError(
                f"'{value}' is neither a step count nor epochs such as '2ep' or '1.5 epochs'"
            )
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("steps must be >= 0")
        return value
    raise ValueError("expected steps (int) or epochs such as '2ep'")


StepSpec = Annotated[int | str, BeforeValidator(_check_spec)]
"""A point in time or a duration: ``int`` steps or ``"<x>ep"`` epochs."""


def epochs_of(spec: int | str) -> float | None:
    """The epoch count of an epoch spec, None for plain steps."""
    if isinstance(spec, str):
        match = _EPOCHS.match(spec)
        assert match is not None
        return float(match.group(1))
    return None


def same_unit_order(start: int | str, end: int | str) -> bool | None:
    """True if ``start <= end`` when both use the same unit, None when it needs a clock."""
    a, b = epochs_of(start), epochs_of(end)
    if a is None and b is None:
        return int(start) <= int(end)
    if a is not None and b is not None:
        return a <= b
    return None


@dataclass(frozen=True)
class StepClock:
    """Resolves step specs for one training run."""

    steps_per_epoch: int
    total_steps: int

    def steps(self, spec: int | str | None, default: int = 0) -> int:
        if spec is None:
            return default
        epochs = epochs_of(spec)
        if epochs is None:
            return int(spec)
        return int(math.floor(epochs * self.steps_per_epoch + 0.5))

    def epoch_of(self, step: int) -> float:
        return step / max(self.steps_per_epoch, 1)

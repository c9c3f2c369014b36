"""Schedules: pure functions of the optimizer step."""

from __future__ import annotations

from typing import Any, ClassVar

from compressor.contract.config import TypeConfig
from compressor.contract.steps import StepClock


class Schedule:
    """A pure function of the optimizer step (a sparsity, a radius or an LR factor)."""

    TAG: ClassVar[str] = "kind"
    Config: ClassVar[type[TypeConfig]] = TypeConfig

    def __init__(self, config: Any, clock: StepClock) -> None:
        self.config = config
        self.clock = clock

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def milestones(self) -> list[int]:
        """Steps worth showing in ``compressor explain`` (start, end, ...)."""
        return [0]

    def span(self) -> tuple[int, int] | None:
        """``(start, end)`` in steps when the schedule ramps, else None."""
        return None

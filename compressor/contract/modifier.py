"""Recipe modifiers: change the model or the loss over training (GMP, ADMM, ...)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from compressor.contract.config import TypeConfig
from compressor.contract.context import CompressionContext
from compressor.contract.errors import Loc


class Modifier:
    """A recipe modifier.

    The engine calls :meth:`update` at step 0 and after every optimizer step, with
    ``context.step`` equal to the number of steps done.
    """

    TAG: ClassVar[str] = "type"
    Config: ClassVar[type[TypeConfig]] = TypeConfig
    #: True for a modifier that lets pruned weights come back (a regrowth method): only then
    #: may a modifier's target sparsity decrease over training, since masks alone never regrow.
    regrows: ClassVar[bool] = False

    def __init__(self, config: Any, context: CompressionContext) -> None:
        self.config = config

    def masked_names(self) -> set[str]:
        """Parameter names this modifier writes masks for (two modifiers may not overlap)."""
        return set()

    def sparsity_decreases(self) -> Loc | None:
        """Where in this modifier's config its target sparsity goes down over training
        (``("schedule", "final")``), or None; the session refuses that unless some modifier
        of the recipe ``regrows``."""
        return None

    def update(self, context: CompressionContext) -> None:
        """Update masks or internal state for step ``context.step``."""

    def penalty(self, context: CompressionContext) -> torch.Tensor | None:
        """A term to add to the loss (e.g. ADMM's augmented Lagrangian), or None."""
        return None

    def after_optimizer_step(self, context: CompressionContext) -> None:
        """Re-impose structure right after each optimizer step (after masks are applied)."""

    def timeline(self) -> list[tuple[int, str]]:
        """``(step, description)`` milestones for ``compressor explain``."""
        return []

    def report(self, context: CompressionContext) -> dict[str, Any]:
        """Metrics for the run report."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

"""Compression operators: masks (and, for projections, values) for named weight tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from compressor.contract.config import OperatorConfig
from compressor.contract.context import CompressionContext
from compressor.contract.errors import ConfigError, Loc
from compressor.contract.selection import Target


class Operator:
    """Computes masks (and, for projections, values) for a set of named weight tensors.

    Operators never modify a model: they return masks and projected tensors; applying them is
    the core's job. Subclasses implement :meth:`compute_masks` (a masking operator) or
    :meth:`compute_project` (a projection with values of its own, e.g. unification); the
    templates :meth:`masks` and :meth:`project` resolve which tensors and which target first.
    """

    TAG: ClassVar[str] = "kind"
    Config: ClassVar[type[OperatorConfig]] = OperatorConfig

    def __init__(self, config: Any) -> None:
        self.config = config
        self.targets: list[Target] = []

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        """Called once with the model, the tensors selected by the config and the run's
        context (None outside a run, e.g. in tests)."""
        self.targets = targets
        self._transposed = {t.name for t in targets if t.transposed}

    def out_in(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (the weight ``name`` or a mask of it) in torch's ``[out, in, *k]``
        orientation: transposed for ``[in, out]`` weights (HF ``Conv1D``). Applying it twice
        gives the stored layout back, so operators that group along the input axis compute on
        ``out_in(w)`` and return ``out_in(result)``."""
        return tensor.t() if name in getattr(self, "_transposed", ()) else tensor

    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern implies (0.5 for 2:4), or None if it takes any target."""
        return None

    def label(self, sparsity: float | None) -> str:
        """How tables and plots name this operator at ``sparsity`` ('0.9', '2:4', ...)."""
        level = self.fixed_sparsity() if sparsity is None else sparsity
        return f"{self.config.kind} {level:g}" if level is not None else str(self.config.kind)

    # -- templates --------------------------------------------------------------------------

    def masks(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Boolean keep-masks (True = kept) for ``weights`` at target ``sparsity``."""
        return self.compute_masks(self.weights_in(weights), self.target(sparsity), generator)

    def project(
        self,
        weights: Mapping[str, torch.Tensor],
        sparsity: float | None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The compressed tensors ``C(w)`` for ``weights`` at target ``sparsity``."""
        return self.compute_project(self.weights_in(weights), self.target(sparsity), generator)

    @property
    def is_projection(self) -> bool:
        """True when :meth:`project` changes kept values too (not just ``w ⊙ M``)."""
        return type(self).compute_project is not Operator.compute_project

    # -- what subclasses implement ----------------------------------------------------------

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """Masks for exactly ``weights`` at ``sparsity`` (projections: their non-zeros)."""
        if not self.is_projection:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither compute_masks nor compute_project"
            )
        return {n: z != 0 for n, z in self.compute_project(weights, sparsity, generator).items()}

    def compute_project(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        """``C(w)`` for exactly ``weights``; masking by default."""
        masks = self.compute_masks(weights, sparsity, generator)
        return {name: weights[name] * masks[name] for name in masks}

    # -- shared rules -----------------------------------------------------------------------

    def weights_in(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The bound targets present in ``weights``, in target order (all of ``weights`` when
        none of them is bound: the operator then works on any dict, e.g. in tests)."""
        names = [t.name for t in self.targets if t.name in weights] or list(weights)
        return {name: weights[name] for name in names}

    def target(self, sparsity: float | None) -> float:
        """``sparsity``, or the pattern's own when None; an error if there is neither."""
        if sparsity is not None:
            return sparsity
        fixed = self.fixed_sparsity()
        if fixed is None:
            raise ValueError(f"the {self.config.kind} operator needs a target sparsity")
        return fixed

    def levels(self, sparsities: Sequence[float], *, loc: Loc = ("sparsities",)) -> list[float]:
        """The targets to run this operator at: its pattern's sparsity, or ``sparsities``.

        Raises ConfigError (located at ``loc``, the config field that gives the targets) when
        the operator needs targets and none are given, or when one contradicts the pattern.
        """
        fixed = self.fixed_sparsity()
        field = loc[-1] if loc else "sparsity"
        if fixed is None:
            if not sparsities:
                raise ConfigError(
                    f"the {self.config.kind} operator needs a target sparsity: set '{field}'", loc
                )
            return [float(s) for s in sparsities]
        wrong = [s for s in sparsities if abs(s - fixed) > 1e-9]
        if wrong:
            raise ConfigError(
                f"the operator's pattern has sparsity {fixed:g}, but {wrong[0]:g} is asked for",
                loc,
            )
        return [fixed]

"""CrAM and CrAM+, the compression-aware minimiser (Peste et al., ICLR 2023; METHODS.md §5).

One step, as the authors' released code does it:

1. pass 1 at the dense ``w`` (BN running statistics update normally) gives ``g``;
2. perturb without normalisation, ``w' = w + rho·g`` (every parameter with a gradient);
3. perturb first, then compress: draw the step's target, ``M = 1[C(w') != 0]``, ``w~ = C(w')``
   (``M ⊙ w'`` for masking operators);
4. pass 2 at ``w~`` with BN running statistics frozen gives ``g_c``; with ``sparse_grad``,
   ``g_c <- M ⊙ g_c``;
5. restore the dense ``w`` exactly; the base optimizer steps with ``g_c`` (CrAM) or
   ``g_c + g`` (CrAM+, ``plus: true``: a sum, not an average).

Saved weights, saved gradients and masks are transient: they never enter ``state_dict()``,
which is the base optimizer's (so resuming restores its momentum).

Targets: ``operator`` + ``sparsities`` (Multi: one sparsity drawn uniformly per step), or
``operators``: one operator drawn uniformly per step, then one of its sparsities (its
``fixed_sparsity()`` for patterns such as N:M, else one of ``sparsities``). Draws come from the
session's generator, seeded alike on every rank, so data-parallel workers compress alike.

``every: k`` > 1 (experimental; TwoPassWrapper does the bookkeeping). Pass 2 (and the mask)
only when ``step % k == 0``. There the compressed-point term ``h = M ⊙ g_c`` (``g_c`` without
``sparse_grad``) is split against the dense ``g``: ``c = <h, g>/||g||²``, ``g_v = h - c·g``,
both stored. In between, pass 1 alone and ``ĥ = c·g + alpha·(||g||/||g_v||)·g_v`` stands in
for ``h``: CrAM+ steps with ``g + ĥ``, CrAM with ``ĥ``. The parallel part keeps the measured
``c`` rather than LookSAM's 1 because ``M ⊙ g_c`` lives on the kept weights only: on the
Q-protocol recipe ``c`` is about 0.3 (0.01–0.74 over steps 100–400), so ``ĥ = g + ...`` would
step about 1.5x further along ``g`` on reusing steps than on full ones. ``ĥ`` is not masked:
no mask is computed on a reusing step, and the last mask's effect is in ``c`` and ``g_v``.
A reusing step still makes the step's draw from the session's generator and discards it, so
the generator advances exactly as with ``every: 1`` (the full steps draw the targets the full
method draws at those steps, and all ranks stay alike); the operator is not called. ``every``
and ``mask_every`` above 1 together are refused: their windows would disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compressor.plugin_api import (
    CompressionContext,
    ConfigError,
    Operator,
    OperatorSpec,
    Sparsity,
    TwoPassConfig,
    TwoPassWrapper,
    default_operator,
    hookimpl,
)


class CrAM(TwoPassWrapper):
    """Two passes and one mask computation per step; the returned loss is pass 1's."""

    class Config(TwoPassConfig):
        name: Literal["cram"]
        rho: float = Field(
            0.05, gt=0, description="unnormalised perturbation w + rho·g (not SAM's rho)"
        )
        plus: bool = Field(True, description="CrAM+: step with g_c + g instead of g_c")
        sparse_grad: bool = Field(True, description="mask the compressed-point gradient")
        sparsities: list[Sparsity] = Field(
            default_factory=list, description="targets; one is drawn uniformly per step"
        )
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        operators: list[OperatorSpec] = Field(  # type: ignore[valid-type]
            default_factory=list,
            description="instead of operator: one drawn uniformly per step (e.g. 2:4 and 4:8)",
        )
        mask_every: int = Field(1, ge=1, description="reuse each mask for this many steps")

        @model_validator(mode="after")
        def _one_way(self) -> Any:
            if self.operators and "operator" in self.model_fields_set:
                raise ValueError("give either 'operator' or 'operators', not both")
            if self.every > 1 and self.mask_every > 1:
                raise ValueError(
                    f"every: {self.every} and mask_every: {self.mask_every} cannot be combined "
                    "(a mask is computed only on steps that run pass 2); keep one of them at 1"
                )
            return self

    def __init__(
        self, config: Any, base: torch.optim.Optimizer, context: CompressionContext
    ) -> None:
        super().__init__(config, base, context)
        sparsities = [float(s) for s in config.sparsities]
        if config.operators:
            operators = [
                context.build_operator(c, at=("operators", i))
                for i, c in enumerate(config.operators)
            ]
        else:
            operators = [context.build_operator(config.operator, at=("operator",))]
        self.choices: list[tuple[Operator, list[float]]] = []
        for operator in operators:
            # One operator: its pattern must agree with 'sparsities'. Several: fixed patterns
            # use their own sparsity and the others share 'sparsities'.
            fixed_in_list = bool(config.operators) and operator.fixed_sparsity() is not None
            self.choices.append((operator, operator.levels([] if fixed_in_list else sparsities)))
        if (
            config.operators
            and sparsities
            and all(op.fixed_sparsity() is not None for op in operators)
        ):
            raise ConfigError(
                "every operator has a fixed pattern, so 'sparsities' would be ignored",
                ("sparsities",),
            )
        self._target_params = list(
            {id(t.param): t.param for op, _ in self.choices for t in op.targets}.values()
        )
        # Transient: the last step's draw and masks (True = kept), never saved.
        self.last_target: tuple[int, float] | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self._mask_params: dict[str, torch.Tensor] = {}

    def describe(self) -> str:
        kind = "CrAM+" if self.config.plus else "CrAM"
        return f"{kind}(rho={self.config.rho:g}{self.every_text()}) over {type(self.base).__name__}"

    # -- the two passes (the skeleton is TwoPassWrapper.step) -------------------------------

    def extra_restored(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        seen = {id(p) for p in params}
        return [p for p in self._target_params if id(p) not in seen]

    def perturb(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """``w' = w + rho·g`` (no normalisation), then ``w~ = C(w')`` and ``M``. ``rho·g`` is
        rounded before the add, as the released code does (a fused add rounds differently)."""
        torch._foreach_add_(params, torch._foreach_mul(grads, float(self.config.rho)))
        self._compress()

    def second_term(self, params: list[torch.Tensor]) -> None:
        """``h = M ⊙ g_c`` with ``sparse_grad``, else ``g_c``."""
        if self.config.sparse_grad:
            for name, mask in self.masks.items():
                grad = self._mask_params[name].grad
                if grad is not None:
                    grad.mul_(mask)

    def combine(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """CrAM+ adds the dense ``g`` to ``h`` (a sum, not a mean); CrAM keeps ``h``."""
        if self.config.plus:
            for p, g in zip(params, grads, strict=True):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)

    def reused_parallel(self, measured: torch.Tensor) -> torch.Tensor:
        """The measured ``c``: ``M ⊙ g_c`` is far from ``g`` along ``g`` (see the module)."""
        return measured

    def skip_second_pass(self) -> None:
        """The step's draw, discarded: the generator advances as on a full step."""
        self.draw()

    def _compress(self) -> None:
        """Turn the perturbed weights into ``w~`` in place and record ``M``."""
        every = int(self.config.mask_every)
        if self.masks and every > 1 and self.context.step % every != 0:
            for name, mask in self.masks.items():
                self._mask_params[name].mul_(mask)
            return
        index, sparsity = self.draw()
        operator = self.choices[index][0]
        self.last_target = (index, sparsity)
        weights = {t.name: t.param for t in operator.targets}
        generator = self.context.generator
        masks: dict[str, torch.Tensor] = {}
        if not operator.is_projection:
            for name, mask in operator.masks(weights, sparsity, generator=generator).items():
                weights[name].mul_(mask)
                masks[name] = mask.to(torch.bool)
        else:  # a projection with values of its own (e.g. unification): w~ = C(w')
            for name, value in operator.project(weights, sparsity, generator=generator).items():
                weights[name].copy_(value)
                masks[name] = value != 0
        self.masks = masks
        self._mask_params = {name: weights[name] for name in masks}

    def draw(self) -> tuple[int, float]:
        """The step's (operator index, sparsity): uniform operator, then uniform sparsity."""
        index = self._uniform(len(self.choices))
        options = self.choices[index][1]
        return index, options[self._uniform(len(options))]

    def _uniform(self, n: int) -> int:
        if n == 1:
            return 0
        return int(torch.randint(n, (1,), generator=self.context.generator).item())


@hookimpl
def register_optimizers(register: Callable[[type], None]) -> None:
    register(CrAM)

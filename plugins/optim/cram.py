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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compressor import hookimpl
from compressor.contract.bases import Operator, OperatorSpec, OptimizerWrapper, Sparsity, TypeConfig
from compressor.contract.errors import ConfigError
from compressor.contract.optim import params_with_grad
from compressor.engine.bn import freeze_bn_stats
from compressor.engine.session import Session


def default_operator() -> dict[str, Any]:
    return {"kind": "magnitude", "scope": "global"}


class CrAM(OptimizerWrapper):
    """Two passes and one mask computation per step; the returned loss is pass 1's."""

    class Config(TypeConfig):
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
            return self

    def __init__(self, config: Any, base: torch.optim.Optimizer, session: Session) -> None:
        super().__init__(config, base, session)
        sparsities = [float(s) for s in config.sparsities]
        if config.operators:
            built = [
                (session.build_operator(c, at=("operators", i)), ("operators", i))
                for i, c in enumerate(config.operators)
            ]
        else:
            built = [(session.build_operator(config.operator, at=("operator",)), ("operator",))]
        self.choices: list[tuple[Operator, list[float]]] = []
        uses_sparsities = False
        for operator, loc in built:
            fixed = operator.fixed_sparsity()
            if fixed is not None:
                if not config.operators and any(abs(s - fixed) > 1e-9 for s in sparsities):
                    raise ConfigError(
                        f"the operator's pattern has sparsity {fixed:g}; leave 'sparsities' out",
                        ("sparsities",),
                    )
                self.choices.append((operator, [fixed]))
            elif not sparsities:
                raise ConfigError("this operator needs target sparsities: set 'sparsities'", loc)
            else:
                uses_sparsities = True
                self.choices.append((operator, sparsities))
        if config.operators and sparsities and not uses_sparsities:
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
        return f"{kind}(rho={self.config.rho:g}) over {type(self.base).__name__}"

    # -- the step ------------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise TypeError("CrAM needs a closure: call optimizer.step(closure)")
        with torch.enable_grad():
            loss = closure()
        params = params_with_grad(self.base)
        if not params:
            return loss
        dense_grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        seen = {id(p) for p in params}
        restore = params + [p for p in self._target_params if id(p) not in seen]
        with torch.no_grad():
            saved = [p.detach().clone() for p in restore]
            torch._foreach_add_(params, dense_grads, alpha=float(self.config.rho))
            self._compress()
        for p in params:
            p.grad = None  # g is kept in dense_grads; pass 2 writes fresh gradients
        try:
            with freeze_bn_stats(self.session.model), torch.enable_grad():
                closure()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(restore, saved)
        with torch.no_grad():
            if self.config.sparse_grad:
                for name, mask in self.masks.items():
                    grad = self._mask_params[name].grad
                    if grad is not None:
                        grad.mul_(mask)
            if self.config.plus:
                for p, g in zip(params, dense_grads, strict=True):
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
        self.base.step()
        return loss

    def _compress(self) -> None:
        """Turn the perturbed weights into ``w~`` in place and record ``M``."""
        every = int(self.config.mask_every)
        if self.masks and every > 1 and self.session.step % every != 0:
            for name, mask in self.masks.items():
                self._mask_params[name].mul_(mask)
            return
        index, sparsity = self.draw()
        operator = self.choices[index][0]
        self.last_target = (index, sparsity)
        weights = {t.name: t.param for t in operator.targets}
        generator = self.session.generator
        masks: dict[str, torch.Tensor] = {}
        if type(operator).project is Operator.project:
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
        return int(torch.randint(n, (1,), generator=self.session.generator).item())


@hookimpl
def register_optimizers(register):  # type: ignore[no-untyped-def]
    register(CrAM)

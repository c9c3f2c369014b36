"""SAM, sharpness-aware minimisation (Foret et al. 2021), as an optimizer wrapper (METHODS.md §4).

One step: pass 1 at ``w`` gives ``g``; ``e = rho·g/(||g||_2 + 1e-12)`` with the global norm
over every parameter that has a gradient; pass 2 at ``w + e`` (BatchNorm running statistics
frozen) gives ``g_sam``; ``w`` is restored exactly and the base optimizer steps with ``g_sam``.
``adaptive: true`` is ASAM (Kwon et al. 2021) as in the widely used reference implementation
(davda54/sam): ``e = rho·w²·g/||w·g||``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from compressor import hookimpl
from compressor.contract.bases import OptimizerWrapper, TypeConfig
from compressor.contract.optim import params_with_grad
from compressor.engine.bn import freeze_bn_stats


class SAM(OptimizerWrapper):
    """Two passes per step; the returned loss is pass 1's (at the unperturbed weights)."""

    class Config(TypeConfig):
        name: Literal["sam"]
        rho: float = Field(0.05, gt=0, description="radius of the normalised perturbation")
        adaptive: bool = Field(False, description="ASAM: scale the perturbation by |w|")

    def describe(self) -> str:
        kind = "ASAM" if self.config.adaptive else "SAM"
        return f"{kind}(rho={self.config.rho:g}) over {type(self.base).__name__}"

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise TypeError("SAM needs a closure: call optimizer.step(closure)")
        with torch.enable_grad():
            loss = closure()
        params = params_with_grad(self.base)
        if not params:
            return loss
        with torch.no_grad():
            grads = [p.grad for p in params]
            saved = [p.detach().clone() for p in params]
            perturbation = self._perturbation(params, grads)  # type: ignore[arg-type]
            torch._foreach_add_(params, perturbation)
        for p in params:
            p.grad = None  # pass 2's gradient replaces g, whatever the closure's zero_grad does
        try:
            with freeze_bn_stats(self.session.model), torch.enable_grad():
                closure()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
        self.base.step()
        return loss

    def _perturbation(
        self, params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        rho = float(self.config.rho)
        if self.config.adaptive:
            scaled = torch._foreach_mul(grads, torch._foreach_abs(params))
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
            e = torch._foreach_mul(scaled, torch._foreach_abs(params))
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            e = [g.clone() for g in grads]
        torch._foreach_mul_(e, rho / (norm + 1e-12))  # a tensor scale: no device sync
        return e


@hookimpl
def register_optimizers(register):  # type: ignore[no-untyped-def]
    register(SAM)

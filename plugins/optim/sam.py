"""SAM, sharpness-aware minimisation (Foret et al. 2021), as an optimizer wrapper (METHODS.md §4).

One step: pass 1 at ``w`` gives ``g``; ``e = rho·g/(||g||_2 + 1e-12)`` with the global norm
over every parameter that has a gradient; pass 2 at ``w + e`` (BatchNorm running statistics
frozen) gives ``g_sam``; ``w`` is restored exactly and the base optimizer steps with ``g_sam``.
``adaptive: true`` is ASAM (Kwon et al. 2021) as in the widely used reference implementation
(davda54/sam): ``e = rho·w²·g/||w·g||``. The two-pass skeleton is
:class:`~compressor.plugin_api.TwoPassWrapper`'s; SAM only says where pass 2 runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from compressor.plugin_api import TwoPassWrapper, TypeConfig, hookimpl


class SAM(TwoPassWrapper):
    """Two passes per step; the returned loss is pass 1's (at the unperturbed weights)."""

    class Config(TypeConfig):
        name: Literal["sam"]
        rho: float = Field(0.05, gt=0, description="radius of the normalised perturbation")
        adaptive: bool = Field(False, description="ASAM: scale the perturbation by |w|")

    def describe(self) -> str:
        kind = "ASAM" if self.config.adaptive else "SAM"
        return f"{kind}(rho={self.config.rho:g}) over {type(self.base).__name__}"

    def perturb(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        torch._foreach_add_(params, self.perturbation(params, grads))

    def perturbation(
        self, params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``e``: ``rho·g/||g||`` (ASAM: ``rho·w²·g/||w·g||``)."""
        rho = float(self.config.rho)
        if self.config.adaptive:
            scaled = torch._foreach_mul(grads, torch._foreach_abs(params))
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
            e = list(torch._foreach_mul(scaled, torch._foreach_abs(params)))
        else:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            e = [g.clone() for g in grads]
        torch._foreach_mul_(e, rho / (norm + 1e-12))  # a tensor scale: no device sync
        return e


@hookimpl
def register_optimizers(register: Callable[[type], None]) -> None:
    register(SAM)

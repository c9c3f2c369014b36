"""SAM, sharpness-aware minimisation (Foret et al. 2021), as an optimizer wrapper (METHODS.md §4).

One step: pass 1 at ``w`` gives ``g``; ``e = rho·g/(||g||_2 + 1e-12)`` with the global norm
over every parameter that has a gradient; pass 2 at ``w + e`` (BatchNorm running statistics
frozen) gives ``g_sam``; ``w`` is restored exactly and the base optimizer steps with ``g_sam``.
``adaptive: true`` is ASAM (Kwon et al. 2021) as in the widely used reference implementation
(davda54/sam): ``e = rho·w²·g/||w·g||``. The two-pass skeleton is
:class:`~compressor.plugin_api.TwoPassWrapper`'s; SAM only says where pass 2 runs.

``every: k`` > 1 (experimental) is LookSAM (Liu et al., CVPR 2022, arXiv 2203.02714): pass 2
only when ``step % k == 0``, storing ``g_v = g_sam - (<g_sam, g>/||g||²)·g`` (one inner
product over every parameter with a gradient); in between the base optimizer steps with
``g + alpha·(||g||/||g_v||)·g_v`` from pass 1 alone. ``alpha`` defaults to 0.7, the default of
the public LookSAM implementations (they give it as the paper's setting, with k = 5; the
paper's tables were not at hand to confirm it). Those implementations split per tensor; the
split here is global, as SAM's norm is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from compressor.plugin_api import TwoPassConfig, TwoPassWrapper, hookimpl


class SAM(TwoPassWrapper):
    """Two passes per step; the returned loss is pass 1's (at the unperturbed weights)."""

    class Config(TwoPassConfig):
        name: Literal["sam"]
        rho: float = Field(0.05, gt=0, description="radius of the normalised perturbation")
        adaptive: bool = Field(False, description="ASAM: scale the perturbation by |w|")

    def describe(self) -> str:
        kind = "ASAM" if self.config.adaptive else "SAM"
        return f"{kind}(rho={self.config.rho:g}{self.every_text()}) over {type(self.base).__name__}"

    def perturb(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        torch._foreach_add_(params, self.perturbation(params, grads))

    def perturbation(
        self, params: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``e``: ``rho·g/||g||`` (ASAM: ``rho·w²·g/||w·g||``)."""
        rho = float(self.config.rho)
        if not self.config.adaptive:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            return list(torch._foreach_mul(grads, rho / (norm + 1e-12)))  # no device sync
        scaled = torch._foreach_mul(grads, torch._foreach_abs(params))
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        e = list(torch._foreach_mul(scaled, torch._foreach_abs(params)))
        torch._foreach_mul_(e, rho / (norm + 1e-12))
        return e


@hookimpl
def register_optimizers(register: Callable[[type], None]) -> None:
    register(SAM)

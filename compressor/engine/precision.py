"""Mixed precision: dynamic loss scaling for fp16 that works with closures run twice.

``torch.amp.GradScaler`` unscales once per optimizer step; SAM- and CrAM-like wrappers read the
gradient of *each* pass, so the session unscales after every backward pass instead, with the
same kernel GradScaler uses, and accumulates whether any pass overflowed. An overflowing step
is skipped whole — the base optimizer's update (:class:`StepGuard`) and that step's compression
update — and the scale backs off; ``growth_interval`` clean steps in a row double it (the
defaults are GradScaler's). With ``train.nonfinite: skip`` the same check runs without
scaling: a step whose gradients are not finite is skipped rather than applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from compressor.contract.optim import DelegatingOptimizer


class LossScaler:
    """Scale the loss before backward, unscale every pass's gradients, skip overflowing steps."""

    def __init__(
        self,
        enabled: bool,
        *,
        check_finite: bool = False,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        self.enabled = enabled
        self.checking = enabled or check_finite
        """Whether gradients are checked each pass (fp16 scaling, or ``nonfinite: skip``)."""
        self.scale = init_scale if enabled else 1.0
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.clean_steps = 0
        self.found_inf = False
        self.skipped_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    @torch.no_grad()
    def unscale(self, params: list[torch.Tensor]) -> None:
        """Divide the gradients of ``params`` by the scale; remember a non-finite one."""
        if not self.checking:
            return
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
        for device, grads in by_device.items():
            found = torch.zeros(1, device=device)
            inverse = torch.full((1,), 1.0 / self.scale, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inverse)
            if bool(found.item()):
                self.found_inf = True
        if self.found_inf:  # nothing of this step may move a weight
            for p in params:
                p.grad = None

    def end_step(self) -> bool:
        """Close the step: adapt the scale; True if the step overflowed (and was skipped)."""
        skipped = self.found_inf
        if not self.checking:
            return False
        if skipped and not self.enabled:
            self.skipped_steps += 1
        elif skipped:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            self.skipped_steps += 1
        elif self.enabled:
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.clean_steps = 0
        self.found_inf = False
        return skipped

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped_steps = int(state["skipped"])


class StepGuard(DelegatingOptimizer):
    """The base optimizer, whose ``step`` does nothing while ``skip()`` says so (an overflow
    found by any pass of the current step)."""

    def __init__(self, base: torch.optim.Optimizer, skip: Callable[[], bool]) -> None:
        super().__init__(base)
        self.skip = skip

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self.skip():
            return None
        return self.base.step(closure)

    def __repr__(self) -> str:
        return repr(self.base)

"""Optimizers that forward their state to the optimizer they wrap (as accelerate's wrapper).

``param_groups``, ``state``, ``defaults``, ``state_dict``, ``load_state_dict`` and
``zero_grad`` all belong to the innermost base optimizer, so torch LR schedulers, gradient
clipping and checkpoints see one ordinary optimizer however many wrappers sit on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class DelegatingOptimizer(torch.optim.Optimizer):
    """Subclasses override :meth:`step`; everything else is the wrapped optimizer's."""

    def __init__(self, base: torch.optim.Optimizer) -> None:
        # Deliberately no super().__init__: this object owns no parameters or state.
        self.base = base

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> Any:
        return self.base.register_step_pre_hook(hook)

    def register_step_post_hook(self, hook: Callable[..., Any]) -> Any:
        return self.base.register_step_post_hook(hook)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return self.base.step(closure)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

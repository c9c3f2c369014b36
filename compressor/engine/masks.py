"""The session's persistent masks: applied to gradients before each step, to weights after.

Masks are computed by operators and owned by modifiers; the MaskSet is where they meet the
model. Zeroing the gradient keeps momentum and Adam moments from moving pruned weights, and
re-applying to the weights after the step undoes decoupled weight decay, so pruned weights
stay exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from compressor.kit.selection import unwrap_model


class MaskSet:
    """Boolean masks by fully-qualified parameter name."""

    def __init__(self, model: nn.Module) -> None:
        # every name of every parameter (tied tensors have several); a mask is stored under
        # the tensor's first name, whichever name it is set by
        self._params: dict[str, nn.Parameter] = {}
        self._canonical: dict[str, str] = {}
        first: dict[int, str] = {}
        for name, param in unwrap_model(model).named_parameters(remove_duplicate=False):
            self._params[name] = param
            self._canonical[name] = first.setdefault(id(param), name)
        self._masks: dict[str, torch.Tensor] = {}
        self.version = 0
        """Counts changes of the masks (data-parallel runs compare them after each change)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._canonical.get(name, name) in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def get(self, name: str) -> torch.Tensor | None:
        return self._masks.get(self._canonical.get(name, name))

    def set(self, name: str, mask: torch.Tensor, *, apply: bool = True) -> None:
        """Store ``mask`` (any dtype; kept as bool) for parameter ``name`` and apply it."""
        param = self._params.get(name)
        if param is None:
            raise KeyError(f"no parameter named {name!r}")
        name = self._canonical[name]
        if mask.shape != param.shape:
            raise ValueError(
                f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(param.shape)}"
            )
        self._masks[name] = mask.to(device=param.device, dtype=torch.bool)
        self.version += 1
        if apply:
            with torch.no_grad():
                param.mul_(self._masks[name])

    def remove(self, name: str) -> None:
        self._masks.pop(self._canonical.get(name, name), None)
        self.version += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Zero masked weights (after every optimizer step)."""
        for name, mask in self._masks.items():
            self._params[name].mul_(mask)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero gradients of masked weights (before every optimizer step)."""
        for name, mask in self._masks.items():
            grad = self._params[name].grad
            if grad is not None:
                grad.mul_(mask)

    def sparsity(self) -> float:
        """Fraction of masked-out entries over the masked tensors."""
        total = sum(m.numel() for m in self._masks.values())
        kept = sum(int(m.sum().item()) for m in self._masks.values())
        return 1.0 - kept / total if total else 0.0

    def tensors(self) -> dict[str, torch.Tensor]:
        """The masks themselves, by name (not copies: do not modify)."""
        return dict(self._masks)

    def state_dict(self) -> dict[str, Any]:
        return {name: mask.clone() for name, mask in self._masks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._masks = {}
        for name, mask in state.items():
            self.set(name, mask, apply=False)

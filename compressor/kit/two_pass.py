"""The two-pass skeleton SAM- and CrAM-like optimizer wrappers share: pass 1, perturb, pass 2
with BatchNorm statistics frozen, exact restore, combine (and the amortised ``every: k`` steps).

An implementation, not an interface: subclasses fill in :meth:`TwoPassWrapper.perturb` and
:meth:`TwoPassWrapper.combine`; the engine only ever sees an ``OptimizerWrapper``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.contract.config import TypeConfig
from compressor.contract.context import CompressionContext
from compressor.contract.optimizer import OptimizerWrapper
from compressor.kit.bn import batchnorm_layers, freeze_bn_stats
from compressor.kit.params import params_with_grad


class TwoPassConfig(TypeConfig):
    """The fields every two-pass wrapper shares: how often the second pass runs."""

    every: int = Field(
        1,
        ge=1,
        description="run pass 2 on every k-th step; in between reuse its last correction "
        "(experimental)",
    )
    alpha: float = Field(
        0.7,
        ge=0,
        description="with every > 1: the reused correction's norm as a fraction of ||g|| "
        "(LookSAM's alpha)",
    )


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``<a, b>`` over all tensors together (one number, on the device: no sync)."""
    return torch.stack(
        [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]
    ).sum()


def _norm(a: list[torch.Tensor]) -> torch.Tensor:
    """``||a||_2`` over all tensors together."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(a)))


class TwoPassWrapper(OptimizerWrapper):
    """Two forward/backward passes per step, the skeleton SAM and CrAM share.

    Pass 1 at the weights ``w`` gives ``g`` (BatchNorm statistics update normally); ``w`` is
    saved, :meth:`perturb` moves the weights; pass 2 runs there with BatchNorm running
    statistics frozen; ``w`` is restored exactly; :meth:`second_term` turns pass 2's gradients
    (in ``p.grad``) into the second-pass term ``h`` and :meth:`combine` combines ``h`` with
    ``g`` into the gradient the base optimizer steps with. The returned loss is pass 1's. Saved
    weights and ``g`` live for one step only.

    Amortised steps (``every: k`` > 1, a :class:`TwoPassConfig` field; experimental). Pass 2
    runs only on steps with ``context.step % k == 0`` (and whenever nothing is stored yet).
    There ``h`` is split against ``g`` (one inner product over every parameter with a
    gradient): ``c = <h, g> / ||g||²`` and ``g_v = h - c·g``, and both are stored. A step in
    between runs pass 1 only and puts in ``h``'s place
    ``ĥ = β·g + alpha·(||g|| / ||g_v||)·g_v`` with the step's own ``g``: LookSAM's rule (Liu
    et al. 2022) with ``β = 1`` (:meth:`reused_parallel`; a method whose ``h`` is not close to
    ``g`` along ``g`` keeps the stored ``c``); then :meth:`combine` as on a full step. ``g_v``,
    ``c`` and the pass counts are in :meth:`state_dict` (so a resumed run reuses what an
    uninterrupted one would). With ``every: 1`` nothing is split or stored and the step, and
    ``state_dict()`` (the base optimizer's), are exactly those of the plain two-pass method.
    """

    _bn: list[_BatchNorm] | None = None

    def __init__(
        self, config: Any, base: torch.optim.Optimizer, context: CompressionContext
    ) -> None:
        super().__init__(config, base, context)
        # A config without TwoPassConfig's fields (a third-party wrapper's) runs every step.
        self.every = int(getattr(config, "every", 1))
        self.alpha = float(getattr(config, "alpha", 0.7))
        self.steps = 0
        """Steps taken (pass 1 ran)."""
        self.second_passes = 0
        """Steps on which pass 2 ran; the rest reused the stored correction."""
        self._unit: dict[int, torch.Tensor] = {}  # id(param) -> g_v / ||g_v||
        self._norm_v: torch.Tensor | None = None  # ||g_v||
        self._parallel: torch.Tensor | None = None  # c; None until a full step stored g_v

    # -- what a method says ----------------------------------------------------------------

    def perturb(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Move ``params`` in place (no grad) to where pass 2 is evaluated."""
        raise NotImplementedError

    def second_term(self, params: list[torch.Tensor]) -> None:
        """Turn pass 2's gradients (in ``p.grad``) into the second-pass term ``h`` in place
        (default: as they are, SAM's ``g_sam``). With ``every > 1`` this ``h`` is what is
        split and reused."""

    def combine(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Set each ``p.grad`` from ``h`` (in ``p.grad``; on a reusing step ``ĥ``) and pass 1's
        ``grads`` (default: keep ``h``, as SAM does)."""

    def extra_restored(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tensors without a gradient that :meth:`perturb` also changes (restored with ``w``)."""
        return []

    def reused_parallel(self, measured: torch.Tensor) -> torch.Tensor | float:
        """``β``, the coefficient of ``g`` in ``ĥ`` on a reusing step, given the ``c`` measured
        at the last full step: LookSAM's 1 (its ``g_sam`` is close to ``g`` along ``g``)."""
        return 1.0

    def skip_second_pass(self) -> None:
        """What a step that reuses (no pass 2) still does; nothing by default."""

    # -- the step -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise TypeError(f"{type(self).__name__} needs a closure: call optimizer.step(closure)")
        with torch.enable_grad():
            loss = closure()
        self.steps += 1
        params = params_with_grad(self.base)
        if not params:
            return loss
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        if self.every > 1 and self._parallel is not None and self.context.step % self.every:
            self.skip_second_pass()
            with torch.no_grad():
                self._reuse(params, grads)
                self.combine(params, grads)
            self.base.step()
            return loss
        restore = params + self.extra_restored(params)
        with torch.no_grad():
            saved = [p.detach().clone() for p in restore]
            self.perturb(params, grads)
        for p in params:
            p.grad = None  # pass 2 writes fresh gradients, whatever the closure's zero_grad does
        if self._bn is None:  # the model's structure is fixed while it trains
            self._bn = batchnorm_layers(self.context.model)
        try:
            with freeze_bn_stats(self.context.model, layers=self._bn), torch.enable_grad():
                closure()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(restore, saved)
        self.second_passes += 1
        with torch.no_grad():
            self.second_term(params)
            if self.every > 1:
                self._store(params, grads)
            self.combine(params, grads)
        self.base.step()
        return loss

    def _store(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """``c = <h, g>/||g||²`` (0 when ``g`` is 0) and ``g_v = h - c·g``, kept as its norm and
        its direction ``g_v/||g_v||`` (0 when ``g_v`` is 0): one buffer, and the reusing
        steps need only ``||g||``."""
        h = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        gg = _dot(grads, grads)
        c = torch.where(gg > 0, _dot(h, grads) / gg, torch.zeros_like(gg))
        g_v = list(torch._foreach_sub(h, torch._foreach_mul(grads, c)))
        norm = _norm(g_v)
        torch._foreach_mul_(g_v, torch.where(norm > 0, 1 / norm, torch.zeros_like(norm)))
        self._unit = {id(p): v for p, v in zip(params, g_v, strict=True)}
        self._norm_v, self._parallel = norm, c

    def _reuse(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """``p.grad = ĥ = β·g + alpha·(||g||/||g_v||)·g_v`` (no correction when ``g_v`` is 0;
        a parameter with no stored ``g_v`` has none)."""
        assert self._parallel is not None
        unit = [self._unit.get(id(p)) for p in params]
        units = [
            u if u is not None else torch.zeros_like(p) for p, u in zip(params, unit, strict=True)
        ]
        correction = torch._foreach_mul(units, self.alpha * _norm(grads))
        beta = self.reused_parallel(self._parallel)
        if isinstance(beta, float) and beta == 1.0:  # LookSAM: g + correction, one add
            h = torch._foreach_add(grads, correction)
        else:
            h = torch._foreach_mul(grads, beta)
            torch._foreach_add_(h, correction)
        for p, value in zip(params, h, strict=True):
            p.grad = value

    # -- state and report -----------------------------------------------------------------

    def _indexed(self) -> list[torch.Tensor]:
        return [p for group in self.base.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state; with ``every > 1`` also ``two_pass``: the stored ``g_v``
        as its direction (``unit``, by parameter index, as torch's optimizers key their state)
        and ``norm``, ``c`` (``parallel``) and the pass counts."""
        state = self.base.state_dict()
        if self.every == 1:
            return state
        index = {id(p): i for i, p in enumerate(self._indexed())}
        return {
            **state,
            "two_pass": {
                "every": self.every,
                "steps": self.steps,
                "second_passes": self.second_passes,
                "parallel": self._parallel,
                "norm": self._norm_v,
                "unit": {index[key]: value for key, value in self._unit.items()},
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The base optimizer's state, and with ``every > 1`` what was stored for reuse (a
        state without it, e.g. from ``every: 1``, makes the next step a full one)."""
        state = dict(state_dict)
        saved = state.pop("two_pass", None)
        self.base.load_state_dict(state)
        if saved is None or self.every == 1:
            return
        params = self._indexed()
        self.steps = int(saved["steps"])
        self.second_passes = int(saved["second_passes"])
        if saved["parallel"] is None:
            return
        device = params[0].device
        self._parallel, self._norm_v = saved["parallel"].to(device), saved["norm"].to(device)
        self._unit = {
            id(params[int(i)]): v.to(params[int(i)].device, params[int(i)].dtype)
            for i, v in saved["unit"].items()
        }

    def every_text(self) -> str:
        """``", every=k, alpha=a"`` for :meth:`describe` when ``every > 1``, else ``""``."""
        return "" if self.every == 1 else f", every={self.every}, alpha={self.alpha:g}"

    def report(self) -> dict[str, Any]:
        """``every``, ``steps`` and ``second_passes`` (with ``every: 1`` the counts are not in
        the checkpoint, so after a resume they count this process's steps)."""
        out = {**super().report(), "every": self.every, "steps": self.steps}
        out["second_passes"] = self.second_passes
        if self.every > 1:
            out["alpha"] = self.alpha
        return out

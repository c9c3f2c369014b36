"""Slow, plain references for the post-training tests (explicit inverses, Python loops)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from compressor.host.manager import load_plugins
from compressor.plugin_api import Operator, select_targets

PLUGINS = load_plugins(autoload=False)


def build(config: dict[str, Any]) -> Operator:
    """An operator from its config dict, unbound."""
    registry = PLUGINS.registries.operators
    entry = registry.get(config["kind"])
    operator: Operator = registry.build(entry.config.model_validate(config))
    return operator


def bound(
    config: dict[str, Any],
    model: nn.Module,
    inputs: Iterable[Any] | None = None,
    **selection: Any,
) -> Operator:
    """An operator bound to ``model`` (no context), calibrated on ``inputs`` if given."""
    operator = build(config)
    if inputs is not None and hasattr(operator, "use_calibration"):
        operator.use_calibration(inputs)
    operator.bind(model, select_targets(model, **selection), None)
    return operator


def weights_of(operator: Operator) -> dict[str, torch.Tensor]:
    return {t.name: t.param for t in operator.targets}


def damped(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    h = hessian.double().clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    return h


def dense_obs(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    choose: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Sequential OBS, one column at a time, with the full inverse of the free columns' Hessian.

    Before column j the free columns are j..cols-1 and their inverse Hessian is
    ``inv(H[j:, j:])`` (computed explicitly, no Cholesky); ``choose(j, W, inv)`` gives column
    j's target value; the exact OBS update moves every free column by
    ``-(w_j - t_j) / inv[0, 0] · inv[0, :]``, which puts column j on its target."""
    w = weight.double().clone()
    h = hessian.double()
    for j in range(w.shape[1]):
        inv = torch.linalg.inv(h[j:, j:])
        target = choose(j, w, inv)
        error = (w[:, j] - target) / inv[0, 0]
        w[:, j:] -= error[:, None] * inv[0, :][None, :]
        w[:, j] = target
    return w


def free_diagonal(hessian: torch.Tensor) -> torch.Tensor:
    """``d_j² = [inv(H[j:, j:])]_00``: the OBS denominators of a left-to-right sweep."""
    h = hessian.double()
    return torch.stack([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(h.shape[0])])


def keep_largest(scores: list[float], keep: int) -> set[int]:
    """Indices of the ``keep`` largest scores, ties to the lower index (by plain sorting)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return set(order[:keep])


def round_keep(n: int, sparsity: float) -> int:
    """``round((1 - s)·n)``, halves up (magnitude's keep count)."""
    import math

    return min(n, max(0, math.floor((1.0 - sparsity) * n + 0.5)))


def sparsegpt_reference(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    block: int,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """SparseGPT's choices made plainly: per block of columns (unstructured: the smallest
    ``w²/d²`` of the block, all rows; N:M: per row in each group of M, at its first column),
    then dense sequential OBS."""
    rows, cols = weight.shape
    d2 = free_diagonal(hessian)
    keep = torch.ones(rows, cols, dtype=torch.bool)

    def pruned_before(c: int) -> int:
        return rows * c - round_keep(rows * c, sparsity)

    def choose(j: int, w: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        if nm is None and j % block == 0:
            stop = min(j + block, cols)
            prune = pruned_before(stop) - pruned_before(j)
            scores = [float(w[r, c] ** 2 / d2[c]) for r in range(rows) for c in range(j, stop)]
            kept = keep_largest(scores, len(scores) - prune)
            width = stop - j
            for i in range(len(scores)):
                keep[i // width, j + i % width] = i in kept
        if nm is not None and j % nm[1] == 0:
            for r in range(rows):
                scores = [float(w[r, c] ** 2 / d2[c]) for c in range(j, j + nm[1])]
                kept = keep_largest(scores, nm[0])
                for i in range(nm[1]):
                    keep[r, j + i] = i in kept
        return torch.where(keep[:, j], w[:, j], torch.zeros_like(w[:, j]))

    return dense_obs(weight, hessian, choose)


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """``||W·X − Ŵ·X||²`` with ``x`` ``[tokens, in]``."""
    diff = (weight.detach().double() - pruned.detach().double()).t()
    return float(((x.detach().double() @ diff) ** 2).sum())


def layer_by_layer(
    operator: Any, weights: dict[str, torch.Tensor], sparsity: float
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The layer-by-layer sequential driver as it was before the block pipeline (a frozen
    copy): for every target, in execution order, a forward of the whole model from its input,
    stopped after the target's pre-hook, with the earlier targets already compressed."""
    import contextlib

    from compressor_plugins.posttrain.calibration import (
        LayerStatistics,
        calibration_mode,
        from_gemm,
        gemm_view,
        layer_columns,
        split_inputs,
    )

    class Stop(Exception):
        pass

    def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        return next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))

    model = operator.model
    inputs = operator.calibration_inputs()
    levels = operator.layer_sparsities(weights, sparsity)
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with calibration_mode(model, operator.config.calibration.bn):
        calls: dict[int, int] = {}
        first: list[int] = []

        def probe(module: nn.Module, args: tuple[Any, ...]) -> None:
            if id(module) not in calls:
                first.append(id(module))
                calls[id(module)] = 0
            calls[id(module)] += 1

        handles = [t.module.register_forward_pre_hook(probe) for t in operator.targets]
        operator.forward(model, split_inputs(inputs[0], 2)[0])
        for handle in handles:
            handle.remove()
        rank = {key: i for i, key in enumerate(first)}
        order = sorted(
            (t for t in operator.targets if t.name in weights), key=lambda t: rank[id(t.module)]
        )
        saved = {t.name: t.param.detach().clone() for t in order}
        try:
            for target in order:
                target.param.copy_(weights[target.name])
            for target in order:
                stored = target.param.detach()
                if operator.layer_skipped(target):
                    results[target.name] = (
                        stored.clone(),
                        torch.ones_like(stored, dtype=torch.bool),
                    )
                    continue
                oriented = operator.out_in(target.name, stored)
                dtype = operator.compute_dtype(stored)
                stats = LayerStatistics(operator.STATISTIC, dtype)
                once = calls[id(target.module)] == 1

                def capture(
                    module: nn.Module,
                    args: tuple[Any, ...],
                    kwargs: dict[str, Any],
                    target: Any = target,
                    stats: Any = stats,
                    once: bool = once,
                ) -> None:
                    stats.add(layer_columns(target, first_tensor(args, kwargs)))
                    if once:
                        raise Stop

                handle = target.module.register_forward_pre_hook(capture, with_kwargs=True)
                try:
                    for batch in inputs:
                        with contextlib.suppress(Stop):
                            operator.forward(model, batch)
                finally:
                    handle.remove()
                value2d, mask2d = operator.compress_layer(
                    target, gemm_view(oriented).to(dtype, copy=True), stats, levels[target.name]
                )
                value = operator.out_in(
                    target.name, from_gemm(value2d.to(stored.dtype), oriented)
                ).contiguous()
                mask = operator.out_in(target.name, from_gemm(mask2d, oriented)).contiguous()
                results[target.name] = (value, mask)
                target.param.copy_(value)
        finally:
            for target in order:
                target.param.copy_(saved[target.name])
    return results

"""The ``channel`` operator: structured pruning of whole output channels (METHODS.md §1).

Channels are pruned per *coupled group* (see :mod:`compressor_plugins.channel.groups`): a conv's
outputs, or every conv feeding one residual sum. In each group of ``n`` channels the operator
keeps ``k = round((1 - s)·n)`` channels (halves up), rounded to the nearest multiple of
``round_to`` and at least ``max(1, round_to)`` (never more than ``n``); ``sparsity`` is thus the
fraction of channels removed *in every group*, not of weights (a layer whose inputs and outputs
are both halved loses ~75% of its weights).

**Scores.** A group channel's weights are every output row that produces it, over all coupled
conv/linear layers (only tensors present in the ``weights`` dict count):
``l1 = Σ|w|``, ``l2 = sqrt(Σ w²)`` over those rows, and ``taylor = |Σ w·g|`` (Molchanov et
al. 2019, first order; ``g`` from each tensor's ``.grad``, else the bound parameter's). Without
gradients ``taylor`` falls back to ``l1`` with one warning. Ties keep the lower index.

**Masks.** For a dropped channel, every tensor in ``weights`` that the group touches gets False
on the channel's positions: producer rows (and biases), *and the consumers' input columns*. BN
weight/bias are masked too if the caller passes them, but GMP/one-shot pass only conv/linear
weights (METHODS.md: BN is never an eligible tensor), so by default BN is left alone: a pruned
channel then outputs BN's constant shift, which no consumer reads because its input columns are
masked. The masked model therefore computes exactly what the physically pruned model computes,
and export can remove the channel together with its BN entries. Every name in ``weights`` gets a
mask (all True when no group touches it), so ``project`` works on any weight dict (CrAM).

**Ignored layers.** Output pruning never touches the layers producing the model's output (the
classifier, found by tracing), layers matching ``ignore`` (globs/``re:`` over module names), or
layers whose weight the selection excludes; a group containing any of them is not pruned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    ChannelGroup,
    CompressionContext,
    ConfigError,
    Operator,
    OperatorConfig,
    Target,
    channel_groups,
    channel_values,
    example_input,
    hookimpl,
    keep_count,
    matches,
    output_layers,
    slot_mask,
    topk_mask,
)


def keep_channels(size: int, sparsity: float, round_to: int) -> int:
    """Channels kept in a group of ``size`` at ``sparsity`` (see the module docstring)."""
    return round_count(keep_count(size, sparsity), size, round_to)


def round_count(keep: int, size: int, round_to: int) -> int:
    """``keep`` rounded to the nearest multiple of ``round_to``, within ``[max(1, r), size]``."""
    if round_to > 1:
        keep = round_to * int(keep / round_to + 0.5)
    return min(size, max(keep, round_to, 1))


def refuse_attention(model: nn.Module) -> None:
    """Attention layers would need their heads pruned as units, which this operator does not
    do: refuse them by name rather than produce an inconsistent model."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) or kind.endswith(
            ("Attention", "SdpaAttention")
        ):
            raise ConfigError(
                f"channel pruning does not prune attention heads, and '{name}' is an attention "
                f"layer ({kind}): use the heads/neurons operators (transformers) or an "
                "unstructured, N:M or block operator for this model"
            )
        if kind == "Conv1D" and hasattr(module, "nf"):  # Hugging Face's transposed linear
            raise ConfigError(
                f"channel pruning does not support Hugging Face Conv1D layers ('{name}')"
            )


class Channel(Operator):
    class Config(OperatorConfig):
        kind: Literal["channel"]
        score: Literal["l1", "l2", "taylor"] = "l1"
        round_to: int = Field(1, ge=1, description="kept widths are multiples of this")
        ignore: list[str] = Field(
            default_factory=list, description="module names never output-pruned (globs, re:)"
        )
        example_input_shape: list[int] | None = Field(
            None, description="input shape without batch axis, for tracing the graph"
        )

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.groups: list[ChannelGroup] = []
        self._params: dict[str, nn.Parameter] = {}
        self._warned = False

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        """Trace the dependency graph once (with the run's example inputs when it has them,
        so token models get token ids) and tabulate the coupled groups."""
        super().bind(model, targets, context)
        refuse_attention(model)
        shape = self.config.example_input_shape
        given = context.example_inputs(1) if context is not None and shape is None else None
        try:
            x = given if isinstance(given, torch.Tensor) else example_input(model, shape)
        except ValueError as exc:
            raise ConfigError(str(exc), ("example_input_shape",)) from None
        target_modules = {t.module for t in targets}
        ignored = set(output_layers(model, x))
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            prunable = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            if prunable and isinstance(weight, nn.Parameter) and module not in target_modules:
                ignored.add(module)
            if any(matches(name, pattern) for pattern in self.config.ignore):
                ignored.add(module)
        try:
            self.groups, _ = channel_groups(model, x, list(ignored))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not self.groups:
            raise ConfigError("no prunable channel group (every group has an ignored layer)")
        self._params = dict(model.named_parameters())

    def _scores(
        self, group: ChannelGroup, weights: Mapping[str, torch.Tensor], taylor: bool
    ) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        for slot in group.scored_slots():
            if slot.name not in weights:
                continue
            w = weights[slot.name]
            rows = channel_values(slot, w, group.size)
            if taylor:
                grad = self._grad(slot.name, w)
                assert grad is not None
                part = (rows * channel_values(slot, grad, group.size)).sum(1)
            elif self.config.score == "l2":
                part = rows.pow(2).sum(1)
            else:
                part = rows.abs().sum(1)
            total = part if total is None else total + part
        if total is None:
            return None
        if taylor:
            return total.abs()
        return total.sqrt() if self.config.score == "l2" else total

    def _grad(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        grad = tensor.grad if isinstance(tensor, torch.Tensor) and tensor.is_leaf else None
        if grad is None and name in self._params:
            grad = self._params[name].grad
        return grad

    def _use_taylor(self, weights: Mapping[str, torch.Tensor]) -> bool:
        if self.config.score != "taylor":
            return False
        names = {s.name for g in self.groups for s in g.scored_slots() if s.name in weights}
        if all(self._grad(name, weights[name]) is not None for name in names):
            return True
        if not self._warned:
            warnings.warn(
                "channel operator: taylor score without gradients; using l1", stacklevel=3
            )
            self._warned = True
        return False

    def keep(
        self, weights: Mapping[str, torch.Tensor], sparsity: float
    ) -> list[tuple[ChannelGroup, torch.Tensor]]:
        """The kept channels of every group that ``weights`` can score."""
        taylor = self._use_taylor(weights)
        kept = []
        for group in self.groups:
            scores = self._scores(group, weights, taylor)
            if scores is None:
                continue
            count = keep_channels(group.size, sparsity, self.config.round_to)
            kept.append((group, topk_mask(scores.float(), count)))
        return kept

    def label(self, sparsity: float | None) -> str:
        return f"channel {self.target(sparsity):g}"

    def weights_in(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor given gets a mask (BN weights included when passed), not only the
        bound targets: a group's coupled tensors are masked together."""
        return dict(weights)

    def compute_masks(
        self,
        weights: dict[str, torch.Tensor],
        sparsity: float,
        generator: torch.Generator | None,
    ) -> dict[str, torch.Tensor]:
        out = {
            name: torch.ones_like(w, dtype=torch.bool, device=w.device)
            for name, w in weights.items()
        }
        if sparsity <= 0.0:
            return out
        for group, keep in self.keep(weights, sparsity):
            for slot in group.slots:
                if slot.name in out:
                    out[slot.name] &= slot_mask(slot, out[slot.name].shape, keep)
        return out


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Channel)

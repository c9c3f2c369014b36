"""The ``heads`` and ``neurons`` operators: structured pruning of Hugging Face transformers.

Siblings of the ``channel`` operator for BERT, GPT-2 (Conv1D) and Llama-style models: a *unit*
is an attention head (q/k/v rows and the o-projection's columns together; with grouped-query
attention a whole key/value head with its query heads) or a feed-forward neuron (the up/gate
rows — BERT's ``intermediate``, GPT-2's ``c_fc`` — and the matching down/``output``/``c_proj``
column). The unit table comes from :func:`compressor.plugin_api.transformer_units`, read from
the module tree: Torch-Pruning's graph tracing fails on HF Llama in the transformers versions
we support (the attention returns a tuple), so it is not used here.

Everything else is the channel operator's: scores (``l1``/``l2`` over the producer rows,
``taylor``), masks on producer rows *and* consumer columns (so the masked model computes what
the physically smaller one computes; biases stay, their output is never read), masks for every
tensor of a unit group, the GMP/one-shot modifiers, exact resume.

**Sparsity** is the fraction of units removed. ``allocation: uniform`` removes the same count
from every layer (``round((1 - s)·n)`` kept, at least ``max(1, round_to)``), so the pruned model
keeps one head count and one ``intermediate_size`` and its HF config stays valid; the final
target must give a whole count (a located error otherwise). ``allocation: global`` ranks every
unit of every layer together (one threshold), keeping at least ``max(1, round_to)`` per layer
and per-layer counts rounded to multiples of ``round_to``.

The operator narrows its bound targets to the weights of the groups it prunes, so a ``heads``
and a ``neurons`` modifier with the default selection never mask the same tensor. A group with a
weight the selection (or ``ignore``) leaves out is not pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    ChannelGroup,
    CompressionContext,
    ConfigError,
    LayoutError,
    OperatorConfig,
    Target,
    UnitGroup,
    hookimpl,
    keep_count,
    matches,
    topk_masks,
    transformer_units,
)
from compressor_plugins.channel.operator import Channel, round_count


class UnitsConfig(OperatorConfig):
    score: Literal["l1", "l2", "taylor"] = "l1"
    allocation: Literal["uniform", "global"] = Field(
        "uniform", description="the same count per layer (HF config stays valid) or one ranking"
    )
    round_to: int = Field(1, ge=1, description="kept counts are multiples of this")
    ignore: list[str] = Field(
        default_factory=list, description="attention/MLP module names never pruned (globs, re:)"
    )


def as_channel_group(group: UnitGroup) -> ChannelGroup:
    """A unit group in the channel operator's terms (scoring and masking are then shared)."""
    return ChannelGroup(group.module, group.size, list(group.slots))


class Units(Channel):
    """Shared by ``heads`` and ``neurons``: the unit table replaces the traced channel groups."""

    UNIT: Literal["heads", "neurons"] = "heads"
    Config = UnitsConfig  # type: ignore[assignment]

    def __init__(self, config: UnitsConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]

    def bind(
        self, model: nn.Module, targets: list[Target], context: CompressionContext | None = None
    ) -> None:
        self.targets = targets
        self._transposed = {t.name for t in targets if t.transposed}
        try:
            found = transformer_units(
                model, "attention" if self.UNIT == "heads" else "feed_forward"
            )
        except LayoutError as exc:
            raise ConfigError(str(exc)) from None
        if not found:
            raise ConfigError(
                f"no {self.UNIT} found: {self.UNIT} pruning knows Llama-style, BERT and GPT-2 "
                "transformers (for other models use the channel operator)"
            )
        selected = {t.name for t in targets} | {a for t in targets for a in t.aliases}
        kept = [
            g
            for g in found
            if g.weight_names() <= selected
            and not any(matches(g.module, pattern) for pattern in self.config.ignore)
        ]
        if not kept:
            raise ConfigError(
                f"every {self.UNIT} group has a weight the selection or 'ignore' leaves out "
                f"(first: '{found[0].module}')"
            )
        r = self.config.round_to
        uneven = [g for g in kept if g.size % r]
        if self.config.allocation == "uniform" and uneven:
            raise ConfigError(
                f"round_to {r} does not divide the {uneven[0].size} {self.UNIT} of "
                f"'{uneven[0].module}'",
                ("round_to",),
            )
        self.units = kept
        self.groups = [as_channel_group(g) for g in kept]
        names = {name for g in kept for name in g.weight_names()}
        self.targets = [t for t in targets if names & {t.name, *t.aliases}]
        self._transposed = {t.name for t in self.targets if t.transposed}
        self._params = dict(model.named_parameters())

    def label(self, sparsity: float | None) -> str:
        return f"{self.UNIT} {self.target(sparsity):g}"

    def levels(
        self, sparsities: Sequence[float], *, loc: tuple[str | int, ...] = ("sparsities",)
    ) -> list[float]:
        """Uniform allocation: the final targets must give a whole count per layer."""
        found = super().levels(sparsities, loc=loc)
        if self.config.allocation != "uniform":
            return found
        r = self.config.round_to
        for group in self.units:
            for s in found:
                exact = (1.0 - s) * group.size
                if abs(exact - round(exact)) > 1e-6 or round(exact) % r:
                    what = self._unit_words(group)
                    raise ConfigError(
                        f"uniform {self.UNIT} pruning at {s:g} keeps {exact:g} of the {what} "
                        f"of '{group.module}': choose a sparsity that keeps a whole count"
                        + (f" (a multiple of round_to {r})" if r > 1 else ""),
                        loc,
                    )
        return found

    def _unit_words(self, group: UnitGroup) -> str:
        if self.UNIT == "heads" and group.group > 1:
            return f"{group.size} key/value groups ({group.group} query heads each)"
        return f"{group.size} {self.UNIT}"

    def keep(
        self, weights: Mapping[str, torch.Tensor], sparsity: float
    ) -> list[tuple[ChannelGroup, torch.Tensor]]:
        if self.config.allocation == "uniform":
            return super().keep(weights, sparsity)
        taylor = self._use_taylor(weights)
        scored = [
            (g, s) for g in self.groups if (s := self._scores(g, weights, taylor)) is not None
        ]
        if not scored:
            return []
        total = sum(g.size for g, _ in scored)
        ranked = topk_masks([s.float() for _, s in scored], keep_count(total, sparsity))
        kept = []
        for (group, scores), chosen in zip(scored, ranked, strict=True):
            count = round_count(int(chosen.sum()), group.size, self.config.round_to)
            kept.append((group, topk_masks([scores.float()], count)[0]))
        return kept


class Heads(Units):
    UNIT = "heads"

    class Config(UnitsConfig):
        kind: Literal["heads"]


class Neurons(Units):
    UNIT = "neurons"

    class Config(UnitsConfig):
        kind: Literal["neurons"]


@hookimpl
def register_operators(register: Callable[[type], None]) -> None:
    register(Heads)
    register(Neurons)

"""Language-model data for post-training compression: token windows and perplexity.

A token stream is cut into non-overlapping windows of ``length`` tokens, which a seeded
permutation orders; the first ``held_out`` windows measure perplexity, the next ``samples``
calibrate, so the two never share a token. Perplexity is ``exp`` of the mean next-token
cross-entropy over every position of the held-out windows (summed in float64, so a model
loaded elsewhere reproduces it).

:class:`TextSession` is the :class:`Session` ``compressor compress`` compresses with: it is
also the evaluation context its exporters are handed (perplexity as the metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor.contract.context import Metric
from compressor.contract.data import DataInfo
from compressor.contract.errors import InputError
from compressor.contract.task import logits_of
from compressor.engine.compress import fixed_source
from compressor.engine.session import Session
from compressor.host.manager import Plugins
from compressor.recipe.schema import Recipe

PERPLEXITY = Metric("perplexity", "perplexity (held-out windows)", higher_is_better=False)


def token_windows(
    ids: torch.Tensor, length: int, samples: int, held_out: int, seed: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(calibration [samples, length], held-out [held_out, length])`` windows of ``ids``
    (module doc); an :class:`InputError` when the text has too few tokens."""
    count = ids.numel() // length
    if count < samples + held_out:
        raise InputError(
            f"{what} has {ids.numel()} tokens: {count} window(s) of {length}, but "
            f"{samples} calibration + {held_out} held-out windows were asked for"
        )
    windows = ids[: count * length].reshape(count, length)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return windows[order[held_out : held_out + samples]], windows[order[:held_out]]


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch: int = 8) -> float:
    """``exp`` of the mean next-token cross-entropy of ``model`` over ``windows``."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, windows.shape[0], batch):
            ids = windows[start : start + batch]
            logits = logits_of(model(ids))[:, :-1].double()
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                )
            )
            tokens += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(total / tokens)


class TextSession(Session):
    """A session calibrated on fixed token windows, which is also the evaluation context an
    exporter needs (perplexity on the held-out windows as the metric)."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        calibration: torch.Tensor,
        held_out: torch.Tensor,
        vocab: int,
        *,
        plugins: Plugins | None = None,
    ) -> None:
        super().__init__(
            model,
            recipe,
            steps_per_epoch=1,
            plugins=plugins,
            example_inputs=lambda batch: calibration[:batch],
            calibration=fixed_source([calibration]),
        )
        self.held_out = held_out
        self._info = DataInfo((calibration.shape[1],), vocab, torch.int64)

    def calibration_batches(
        self, samples: int, seed: int, batches: int, batch_size: int
    ) -> Iterator[Any]:
        batches_ = super().calibration_batches(samples, seed, batches, batch_size)
        assert batches_ is not None  # a TextSession always has its windows
        return batches_

    @property
    def metric(self) -> Metric:
        return PERPLEXITY

    def measure(self, model: nn.Module) -> dict[str, float]:
        return {PERPLEXITY.name: perplexity(model, self.held_out)}

    @property
    def model_spec(self) -> dict[str, Any] | None:
        return None

    @property
    def data_info(self) -> DataInfo | None:
        return self._info

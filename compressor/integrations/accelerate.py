"""``accelerate``: gradient accumulation that never drops a micro-batch.

``accelerator.accumulate(model)`` skips ``optimizer.step()`` on all but every K-th batch, so a
closure handed to those skipped steps never runs: with K=2 half the data is silently unused,
and a two-pass wrapper (SAM, CrAM) would see one micro-batch of K anyway. Here one optimizer
step takes K micro-batches in ONE closure instead::

    model, loader = accelerator.prepare(model, loader)     # len(loader): this process's share
    K = accelerator.gradient_accumulation_steps
    session = Session(model, recipe, steps_per_epoch=math.ceil(len(loader) / K))
    optimizer = accelerator.prepare(session.optimizer())
    for epoch in range(epochs):
        for micro in micro_batches(loader, K):
            loss = accumulate_step(accelerator, model, optimizer, micro, loss_fn)

``accumulate_step`` runs ``loss_fn`` on every micro-batch (twice for two-pass wrappers), each
counted ``1/len(micro)``, calls ``accelerator.backward`` on the session-scaled loss under
``accelerator.no_sync(model)`` for all but the last micro-batch (one all-reduce per pass
under DDP), steps the session optimizer and calls ``session.step_end``. docs/integrations/
accelerate.md has the whole loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.engine.session import SessionOptimizer
from compressor.integrations._common import require, step_closure

require("accelerate", "accelerate", "compressor.integrations.accelerate")

from accelerate import Accelerator  # noqa: E402

T = TypeVar("T")


def micro_batches(loader: Iterable[T], accumulate: int) -> Iterator[list[T]]:
    """The loader's batches in groups of ``accumulate`` (the last group takes what is left):
    one group per optimizer step, so an epoch is ``ceil(len(loader) / accumulate)`` steps."""
    if accumulate < 1:
        raise ValueError("accumulate must be at least 1")
    group: list[T] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulate:
            yield group
            group = []
    if group:
        yield group


def session_optimizer(optimizer: torch.optim.Optimizer) -> SessionOptimizer:
    """The session's optimizer inside ``accelerator.prepare``'s ``AcceleratedOptimizer``."""
    inner: Any = optimizer
    while not isinstance(inner, SessionOptimizer):
        inner = getattr(inner, "optimizer", None)
        if inner is None:
            raise CompressorError(
                "accumulate_step needs the session's optimizer (session.optimizer(...)), "
                "prepared or not"
            )
    return inner


def accumulate_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro: Sequence[Any],
    loss_fn: Callable[[Any], torch.Tensor],
) -> torch.Tensor:
    """One optimizer step over every micro-batch in ``micro``; returns the step's loss (the
    mean over ``micro``; pass 1's for two-pass wrappers) after ``session.step_end``."""
    if not micro:
        raise ValueError("accumulate_step needs at least one micro-batch")
    inner = session_optimizer(optimizer)
    session = inner.session
    if not accelerator.sync_gradients:
        raise CompressorError(
            "accumulate_step runs inside accelerator.accumulate(model), which skips the optimizer "
            "step on all but every K-th call: call it outside; it accumulates the micro-batches "
            "it is given itself"
        )
    if accelerator.scaler is not None:
        raise CompressorError(
            "Accelerator(mixed_precision='fp16') unscales with a GradScaler once per step, which "
            "two-pass wrappers cannot use: use mixed_precision='bf16', or mixed_precision='no' "
            "with train.precision: fp16 in the recipe and torch.autocast in loss_fn (the session "
            "then scales and unscales every pass)"
        )
    # accelerator.backward divides by its gradient_accumulation_steps; each micro-batch of
    # this step must count 1/len(micro), the last, shorter step of an epoch included.
    weight = accelerator.gradient_accumulation_steps / len(micro)

    def backward(batch: Any) -> torch.Tensor:
        loss = loss_fn(batch)
        accelerator.backward(session.scale_loss(loss * weight))
        return loss.detach() / len(micro)

    closure = step_closure(
        micro,
        lambda: inner.zero_grad(set_to_none=True),
        backward,
        lambda: accelerator.no_sync(model),
    )
    loss = torch.as_tensor(inner.step(closure)).detach()
    session.step_end(loss)
    return loss


__all__ = ["accumulate_step", "micro_batches", "session_optimizer"]

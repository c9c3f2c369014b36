"""Lightning: a callback that provides the optimizer, steps the session and checkpoints it.

    compressor = CompressorCallback(recipe)
    class Model(L.LightningModule):
        def configure_optimizers(self):
            return compressor.optimizer(self.parameters())     # builds the session
    L.Trainer(callbacks=[compressor], accumulate_grad_batches=2).fit(Model())

How it runs (docs/integrations/lightning.md):

* **Automatic optimization** (single-pass recipes: SGD, AdamW, GMP, ADMM, ...): Lightning runs
  ``training_step`` and ``backward`` for every micro-batch and steps the session optimizer
  every ``accumulate_grad_batches``; the callback calls ``session.step_end`` after each
  optimizer step (``on_train_batch_end`` when ``trainer.global_step`` moved). A two-pass
  wrapper works here only with ``accumulate_grad_batches=1`` (Lightning hands the step one
  micro-batch's closure, and the wrapper runs it twice).
* **Manual optimization** (SAM, CrAM with accumulation): set
  ``self.automatic_optimization = False`` and return ``compressor.manual_step(self, batch,
  batch_idx, loss_fn)`` from ``training_step``. It collects K = the recipe's
  ``train.accumulate`` micro-batches and runs one optimizer step over all of them in one
  closure (``manual_backward``; DDP gradient sync blocked for all but the last), so both
  passes see every micro-batch; the last step of an epoch takes the micro-batches left.
* The session counts optimizer steps (``steps_per_epoch`` from the trainer), so
  ``session.step == trainer.global_step``; a drift is an error. Step-0 masks are applied at
  ``on_train_start``, before the first micro-batch's forward.
* DDP (``strategy="ddp"``): Lightning shards the data and all-reduces gradients; the masks are
  functions of the synchronised weights and the session's generator, and their digest is
  compared across ranks at every epoch end (a clear error if they ever differ).
* Checkpoints: the callback's ``state_dict`` is the session's (step, masks, compression RNG,
  torch RNG, modifiers; Lightning saves the optimizer's), so ``fit(ckpt_path=...)`` resumes
  the schedule where it stopped.
* Precision: ``32-true`` and ``bf16-mixed`` for everything; ``16-mixed`` for single-pass
  recipes (Lightning's ``GradScaler`` unscales once per step, which two-pass wrappers cannot
  use). Gradient clipping: ``Trainer(gradient_clip_val=...)`` under automatic optimization,
  the recipe's ``train.grad_clip`` (every pass, after masking) under manual optimization.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.engine.session import Session, SessionOptimizer
from compressor.host.manager import Plugins
from compressor.integrations._common import (
    SessionBuilder,
    check_step,
    checkpoint_state,
    loop_recipe,
    require,
    step_closure,
)
from compressor.recipe.schema import Recipe
from compressor.train.distributed import World, check_same_masks

require("lightning", "lightning", "compressor.integrations.lightning")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import ParallelStrategy  # noqa: E402

LOOP = "Lightning"


class CompressorCallback(pl.Callback):  # type: ignore[misc]
    """Compression for a Lightning ``Trainer``: pass it in ``callbacks=[...]`` and return
    :meth:`optimizer` from ``configure_optimizers``. ``self.session`` exists from then on."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        plugins: Plugins | None = None,
        example_inputs: Callable[[int], Any] | None = None,
    ) -> None:
        self.recipe = recipe
        self.session: Session | None = None
        self._builder = SessionBuilder(recipe, plugins, example_inputs)
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None
        self._micro_batches: list[Any] = []
        self.accumulate = 1
        """Micro-batches per optimizer step (``accumulate_grad_batches``, or the recipe's
        ``train.accumulate`` under manual optimization)."""
        self.loss: torch.Tensor | None = None

    # -- building the session when Lightning builds the optimizer -------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def optimizer(
        self,
        params: Iterable[nn.Parameter] | None = None,
        *,
        base: torch.optim.Optimizer | None = None,
    ) -> SessionOptimizer:
        """Build the session (steps counted from the trainer) and return its optimizer; call it
        from ``configure_optimizers``. ``base`` wraps an optimizer you built instead of the
        recipe's ``optimizer:``."""
        trainer = self._trainer
        if trainer is None:
            raise CompressorError(
                "CompressorCallback.optimizer() before the trainer set it up: pass the callback "
                "in Trainer(callbacks=[...]) and call it from configure_optimizers"
            )
        module = trainer.lightning_module
        recipe = self._check(trainer, module)
        per_epoch, total = self._steps(trainer)
        session = self._builder.build(module, recipe, steps_per_epoch=per_epoch, total_steps=total)
        optimizer = session.optimizer(params, base=base)
        self.session = session
        if self._restored is not None:  # Lightning restores callbacks before optimizers
            session.load_state_dict(self._restored)
            self._restored = None
        return optimizer

    def _check(self, trainer: pl.Trainer, module: pl.LightningModule) -> Recipe:
        """The recipe with Lightning's loop settings, or a located error for a conflict."""
        recipe = self.recipe
        train = recipe.config.train
        manual = not module.automatic_optimization
        wrapper = recipe.config.wrapper is not None
        precision = str(trainer.precision)
        owned: dict[str, tuple[Any, str]] = {}
        if manual:
            self.accumulate = int(train.accumulate)
        else:
            self.accumulate = int(trainer.accumulate_grad_batches)
            owned["accumulate"] = (self.accumulate, "Trainer(accumulate_grad_batches)")
            if train.grad_clip is not None:
                raise recipe.error(
                    ("train", "grad_clip"),
                    "under automatic optimization Lightning clips: use Trainer(gradient_clip_val)",
                )
            if wrapper and self.accumulate > 1:
                raise recipe.error(
                    ("wrapper",),
                    f"with accumulate_grad_batches={self.accumulate} Lightning gives the optimizer "
                    "only the last micro-batch's closure, so the wrapper's second pass would miss "
                    "the others: use manual optimization with CompressorCallback.manual_step "
                    "(accumulation from the recipe's train.accumulate)",
                )
        if train.precision == "fp16":
            raise recipe.error(
                ("train", "precision"),
                "Lightning owns mixed precision: Trainer(precision='bf16-mixed' or '16-mixed')",
            )
        if wrapper and precision.startswith("16"):
            raise recipe.error(
                ("wrapper",),
                f"Trainer(precision='{precision}') unscales the gradients once per step with a "
                "GradScaler, which a two-pass wrapper cannot use: use precision='bf16-mixed'",
            )
        owned["precision"] = (
            "bf16" if precision.startswith("bf16") else "fp32",
            f"Trainer(precision='{precision}')",
        )
        return loop_recipe(recipe, LOOP, owned)

    def _steps(self, trainer: pl.Trainer) -> tuple[int, int]:
        """(optimizer steps per epoch, in all) as this trainer will make them."""
        _ = trainer.estimated_stepping_batches  # loads the train dataloader if need be
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise CompressorError(
                "the session counts steps per epoch: the train dataloader needs a length"
            )
        per_epoch = max(1, math.ceil(int(batches) / self.accumulate))
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            total = int(trainer.max_steps)
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                total = min(total, per_epoch * int(trainer.max_epochs))
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            total = per_epoch * int(trainer.max_epochs)
        else:
            raise CompressorError("set Trainer(max_epochs=...) or max_steps for the schedules")
        return per_epoch, total

    # -- the step ---------------------------------------------------------------------------

    def manual_step(
        self,
        module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        loss_fn: Callable[[Any], torch.Tensor],
    ) -> torch.Tensor | None:
        """``training_step`` under manual optimization: collect micro-batches and, at every
        ``self.accumulate``-th (and the epoch's last), step over all of them in one closure.

        ``loss_fn(batch)`` returns one micro-batch's loss; each counts ``1/len(group)``.
        Returns the step's loss (pass 1's for two-pass wrappers), or None while collecting.
        """
        session = self._session()
        trainer = module.trainer
        if module.automatic_optimization:
            raise CompressorError(
                "manual_step needs manual optimization: self.automatic_optimization = False"
            )
        self._micro_batches.append(batch)
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if len(self._micro_batches) < self.accumulate and not last_of_epoch:
            return None
        micro, self._micro_batches = self._micro_batches, []
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise CompressorError("manual_step drives one optimizer: the session's")

        def backward(micro_batch: Any) -> torch.Tensor:
            loss = loss_fn(micro_batch) / len(micro)
            module.manual_backward(session.scale_loss(loss))
            return loss.detach()

        closure = step_closure(
            micro,
            lambda: optimizer.zero_grad(set_to_none=True),
            backward,
            lambda: _no_sync(trainer.strategy),
        )
        loss = optimizer.step(closure=closure)
        self.loss = None if loss is None else torch.as_tensor(loss).detach()
        return self.loss

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session = self._session()
        if session.optimizer_ is None or not any(
            opt is session.optimizer_ for opt in trainer.optimizers
        ):
            raise CompressorError(
                "Lightning does not step the session's optimizer: return "
                "compressor.optimizer(self.parameters()) from configure_optimizers"
            )
        if self.recipe.config.lr_schedule is not None and trainer.lr_scheduler_configs:
            raise self.recipe.error(
                ("lr_schedule",),
                "configure_optimizers returns an LR scheduler too: keep one of the two",
            )
        self._micro_batches = []
        check_step(session, trainer.global_step, LOOP)
        session.begin()  # step-0 masks before the first micro-batch's forward, not after it

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        session = self._session()
        if trainer.global_step == session.step:
            return  # accumulating
        loss = self.loss
        if loss is None and isinstance(outputs, dict):
            loss = outputs.get("loss")
        session.step_end(loss)
        self.loss = None
        check_step(session, trainer.global_step, LOOP)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._micro_batches = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Under DDP every rank must hold the same masks; compared once an epoch (a collective)."""
        session = self._session()
        world = World(trainer.global_rank, trainer.world_size, trainer.local_rank)
        check_same_masks(world, session.masks.tensors(), session.step)

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return checkpoint_state(self.session) if self.session is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.session is not None and self.session.optimizer_ is not None:
            self.session.load_state_dict(state_dict)
        else:
            self._restored = state_dict

    def _session(self) -> Session:
        if self.session is None:
            raise CompressorError(
                "no session yet: return compressor.optimizer(self.parameters()) from "
                "configure_optimizers"
            )
        return self.session


def _no_sync(strategy: Any) -> AbstractContextManager[Any]:
    """No gradient all-reduce in the backward passes of the block (DDP); nothing elsewhere."""
    if isinstance(strategy, ParallelStrategy):
        return strategy.block_backward_sync()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


__all__ = ["CompressorCallback"]

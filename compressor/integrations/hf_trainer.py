"""Hugging Face ``Trainer``: compression recipes, SAM and CrAM included, in ``trainer.train()``.

    trainer = CompressorTrainer(model=model, args=args, train_dataset=train, recipe=recipe)
    trainer.train()                       # or trainer.train(resume_from_checkpoint=True)
    report = trainer.session.finalize()

How it runs (docs/integrations/hf-trainer.md):

* The Trainer's loop is kept: it reads K = ``gradient_accumulation_steps`` micro-batches per
  optimizer step, logs, evaluates and checkpoints as usual. ``training_step`` collects the
  micro-batches and, at the last one of the step, runs the session optimizer with ONE closure
  over all of them (``no_sync`` for all but the last under DDP), so SAM and CrAM compute both
  passes on the whole step's data; single-pass optimizers run the same closure once. The
  Trainer's own ``optimizer.step()`` that follows is then a no-op.
* The session counts optimizer steps (``steps_per_epoch`` from the Trainer), so
  ``session.step == trainer.state.global_step`` always; a drift is an error.
* ``TrainingArguments`` own the loop: accumulation, precision, ``max_grad_norm`` (applied to
  every pass, after masking) and the learning-rate schedule. The recipe owns compression and
  optionally the base optimizer (without ``optimizer:`` the Trainer's own — ``optim``,
  ``learning_rate``, ``weight_decay`` — is wrapped). With ``fp16`` the session scales the loss
  and unscales after every pass (the Trainer's ``GradScaler`` unscales once per step, which
  two-pass wrappers cannot use).
* The session's state goes into every checkpoint folder (``compressor_session.pt``) and
  ``resume_from_checkpoint`` restores it; the Trainer restores the model, optimizer, scheduler,
  RNG and data position itself.

:class:`CompressorCallback` alone serves an unchanged ``Trainer`` (or someone else's
subclass) for single-pass recipes: build the session yourself and pass its optimizer in
``optimizers=(session.optimizer(...), None)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import CompressorError
from compressor.contract.optim import DelegatingOptimizer
from compressor.engine.session import Session, SessionOptimizer
from compressor.host.manager import Plugins
from compressor.integrations._common import (
    SESSION_FILE,
    SessionBuilder,
    check_step,
    checkpoint_state,
    has_wrapper,
    loop_recipe,
    refuse_lr_schedule,
    require,
    step_closure,
)
from compressor.kit.files import atomic_save, load_checkpoint
from compressor.recipe.schema import Recipe

for _package in ("transformers", "accelerate"):  # the Trainer runs on accelerate
    require(_package, "hf,accelerate", "compressor.integrations.hf_trainer")

from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

LOOP = "the Trainer"

if not hasattr(Trainer, "set_initial_training_values"):  # the loop this module knows (5.x)
    raise CompressorError(
        "compressor.integrations.hf_trainer needs transformers 5 or newer (tested with 5.24), "
        f"this is {__import__('transformers').__version__}"
    )


def _session_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` and our step adapter."""
    while not isinstance(optimizer, SessionOptimizer):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None and isinstance(optimizer, DelegatingOptimizer):
            inner = optimizer.base
        if inner is None:
            return optimizer
        optimizer = inner
    return optimizer


def _precision(args: Any) -> str:
    return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"


class CompressorCallback(TrainerCallback):  # type: ignore[misc]
    """Steps the session with the Trainer and keeps its state in the Trainer's checkpoints.

    With the plain ``Trainer`` (single-pass recipes: SGD, AdamW, GMP, ADMM, ...)::

        session = Session(model, recipe, steps_per_epoch=math.ceil(batches_per_epoch / K))
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          optimizers=(session.optimizer(model.parameters()), None),
                          callbacks=[CompressorCallback(session)])

    The callback checks that the Trainer steps the session's optimizer, that the session
    counts the Trainer's optimizer steps, and refuses what the plain Trainer cannot run
    (wrappers, the recipe's fp16, clipping or LR schedule): use :class:`CompressorTrainer`.
    ``resume_from`` names the checkpoint folder when it is not ``output_dir/checkpoint-N``.
    """

    def __init__(self, session: Session | None = None, *, resume_from: str | None = None) -> None:
        self.session = session
        self.resume_from = resume_from
        self.loss: torch.Tensor | None = None
        self.managed = False  # set by CompressorTrainer, which runs the closures itself

    def _session(self) -> Session:
        if self.session is None:
            raise CompressorError("CompressorCallback has no session: CompressorCallback(session)")
        return self.session

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self._session()
        optimizer = _session_optimizer(kwargs.get("optimizer"))
        if optimizer is not session.optimizer_ or session.optimizer_ is None:
            raise CompressorError(
                "the Trainer does not step the session's optimizer: pass "
                "optimizers=(session.optimizer(model.parameters()), None) to the Trainer"
            )
        if not self.managed:
            self._check_plain_trainer(session, args, kwargs.get("train_dataloader"))
        if state.global_step > 0:
            self._restore(session, args, state)
        check_step(session, state.global_step, LOOP)
        session.begin()  # step-0 masks before the first micro-batch's forward, not after it

    def _check_plain_trainer(self, session: Session, args: Any, loader: Any) -> None:
        recipe = session.recipe
        if has_wrapper(session):
            raise recipe.error(
                ("wrapper",),
                "the plain Trainer steps without a closure, which a wrapper (SAM, CrAM) needs: "
                "train with compressor.integrations.hf_trainer.CompressorTrainer",
            )
        train = recipe.config.train
        if train.precision == "fp16":
            raise recipe.error(
                ("train", "precision"),
                "the plain Trainer scales fp16 losses itself (TrainingArguments fp16=True): "
                "remove train.precision from the recipe",
            )
        if train.grad_clip is not None:
            raise recipe.error(
                ("train", "grad_clip"), "the Trainer clips: use TrainingArguments max_grad_norm"
            )
        refuse_lr_schedule(recipe, LOOP, "TrainingArguments lr_scheduler_type")
        loop_recipe(
            recipe,
            LOOP,
            {"accumulate": (args.gradient_accumulation_steps, "gradient_accumulation_steps")},
        )
        if loader is not None and hasattr(loader, "__len__"):
            per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
            if session.clock.steps_per_epoch != per_epoch:
                raise CompressorError(
                    f"Session(steps_per_epoch={session.clock.steps_per_epoch}) but the Trainer "
                    f"makes {per_epoch} optimizer steps per epoch ({len(loader)} micro-batches, "
                    f"gradient_accumulation_steps={args.gradient_accumulation_steps})"
                )

    def _restore(self, session: Session, args: Any, state: Any) -> None:
        folder = self.resume_from or os.path.join(
            args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        )
        path = os.path.join(folder, SESSION_FILE)
        if not os.path.isfile(path):
            raise CompressorError(
                f"resuming at step {state.global_step}, but {path} does not exist: the "
                "checkpoint was not written with CompressorCallback (or pass resume_from=)"
            )
        session.load_state_dict(load_checkpoint(path))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self._session()
        session.step_end(self.loss)
        self.loss = None
        check_step(session, state.global_step, LOOP)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            raise CompressorError(f"the Trainer saved no checkpoint folder {folder}")
        atomic_save(checkpoint_state(self._session()), os.path.join(folder, SESSION_FILE))


class _SteppedInTrainingStep(DelegatingOptimizer):
    """What the Trainer holds as its optimizer: the session optimizer, whose step already ran
    inside ``training_step``; the Trainer's own ``optimizer.step()`` only acknowledges it."""

    def __init__(self, base: SessionOptimizer) -> None:
        super().__init__(base)
        self.stepped = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is not None:
            return self.base.step(closure)
        if not self.stepped:
            raise CompressorError(
                "CompressorTrainer steps its optimizer inside training_step; this step() came "
                "from elsewhere (a Trainer loop this version does not know?)"
            )
        self.stepped = False
        return None


class CompressorTrainerMixin:
    """Mix into a ``Trainer`` subclass (first in the bases) to train with a compression
    recipe; :class:`CompressorTrainer` is ``CompressorTrainerMixin + Trainer``.

    ``recipe`` is required; ``plugins`` and ``example_inputs`` go to the :class:`Session`,
    built when training starts (``self.session``).
    """

    session: Session | None

    def __init__(
        self,
        *args: Any,
        recipe: Recipe,
        plugins: Plugins | None = None,
        example_inputs: Callable[[int], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        refuse_lr_schedule(recipe, LOOP, "TrainingArguments lr_scheduler_type")
        self.recipe = recipe
        self.session = None
        self._builder = SessionBuilder(recipe, plugins, example_inputs)
        self._micro_batches: list[tuple[Any, Any]] = []
        self._steps: tuple[int, int] | None = None
        self._holder: _SteppedInTrainingStep | None = None
        self.compressor_callback = CompressorCallback()
        self.compressor_callback.managed = True
        super().__init__(*args, **kwargs)
        self.add_callback(self.compressor_callback)  # type: ignore[attr-defined]

    # -- set-up: where the Trainer builds its accelerator and optimizer --------------------

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        accelerator = self.accelerator  # type: ignore[attr-defined]
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise CompressorError(
                "CompressorTrainer runs on one device or under DDP; DeepSpeed and FSDP own the "
                "optimizer step"
            )
        # fp16: the session scales the loss and unscales after every pass (SAM and CrAM read
        # each pass's gradients); the Trainer's GradScaler would unscale once per step.
        accelerator.scaler = None

    def set_initial_training_values(self, args: Any, dataloader: Any) -> Any:
        values = super().set_initial_training_values(args, dataloader)  # type: ignore[misc]
        self._steps = (int(values[1]), int(values[6]))  # optimizer steps per epoch, in all
        return values

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"No valid checkpoint found in output directory ({self.args.output_dir})"  # type: ignore[attr-defined]
                )
        self.compressor_callback.resume_from = (
            resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)  # type: ignore[misc]

    def _build_session(self, model: nn.Module) -> Session:
        args = self.args  # type: ignore[attr-defined]
        if self._steps is None:
            raise CompressorError("the Trainer created its optimizer before counting its steps")
        per_epoch, total = self._steps
        owned: dict[str, tuple[Any, str]] = {
            "accumulate": (args.gradient_accumulation_steps, "gradient_accumulation_steps"),
            "precision": (_precision(args), "TrainingArguments fp16/bf16"),
            "grad_clip": (args.max_grad_norm or None, "max_grad_norm"),
        }
        if "seed" not in self.recipe.config.train.model_fields_set:
            owned["seed"] = (args.seed, "seed")
        recipe = loop_recipe(self.recipe, LOOP, owned)
        return self._builder.build(model, recipe, steps_per_epoch=per_epoch, total_steps=total)

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        if self._holder is not None and _session_optimizer(self.optimizer) is self._holder.base:  # type: ignore[has-type]
            return self.optimizer  # type: ignore[has-type]
        opt_model = self.model if model is None else model  # type: ignore[attr-defined]
        session = self._build_session(opt_model)
        if self.recipe.config.optimizer is not None:
            if self.optimizer is not None:  # type: ignore[has-type]
                raise self.recipe.error(
                    ("optimizer",),
                    "both the recipe and Trainer(optimizers=...) give an optimizer: keep one",
                )
            params = [p for p in opt_model.parameters() if p.requires_grad]
            optimizer = session.optimizer(params)
        else:  # the Trainer's own (args.optim, learning_rate, weight decay groups) or the user's
            optimizer = session.optimizer(base=super().create_optimizer(model))  # type: ignore[misc]
        self.session = session
        self.compressor_callback.session = session
        self._holder = _SteppedInTrainingStep(optimizer)
        self.optimizer = self._holder  # accelerate wraps it in an AcceleratedOptimizer
        return self.optimizer

    # -- one optimizer step: all K micro-batches in one closure ----------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Collect the step's micro-batches; at the last one run the optimizer step over all
        of them. Returns 0 for the others and the step's loss (the sum of each micro-batch's
        loss over K, what the Trainer would have summed) at the last, so logs are unchanged."""
        self._micro_batches.append((inputs, num_items_in_batch))
        args = self.args  # type: ignore[attr-defined]
        if not self.accelerator.sync_gradients:  # type: ignore[attr-defined]
            return torch.zeros((), device=args.device)
        micro, self._micro_batches = self._micro_batches, []
        expected = getattr(self, "current_gradient_accumulation_steps", len(micro))
        if len(micro) != expected:
            raise CompressorError(
                f"the Trainer ran {expected} micro-batches in this step but training_step saw "
                f"{len(micro)}: a Trainer loop this version does not know?"
            )
        holder = self._holder
        if holder is None:
            raise CompressorError("CompressorTrainer.training_step before create_optimizer")
        optimizer = holder.base
        assert isinstance(optimizer, SessionOptimizer)
        closure = step_closure(
            micro,
            lambda: optimizer.zero_grad(set_to_none=True),
            lambda batch: self._micro_step(model, *batch),
            lambda: self.accelerator.no_sync(model),  # type: ignore[attr-defined]
        )
        loss = optimizer.step(closure)
        holder.stepped = True
        loss = torch.as_tensor(loss, device=args.device).detach()
        self.compressor_callback.loss = loss
        return loss

    def _micro_step(self, model: nn.Module, inputs: dict[str, Any], items: Any) -> torch.Tensor:
        """Forward and backward of one micro-batch, as ``Trainer.training_step`` does it,
        with the session's loss scaling; returns the loss over K, detached."""
        args = self.args  # type: ignore[attr-defined]
        session = self.session
        assert session is not None
        model.train()
        inputs = self._prepare_inputs(inputs)  # type: ignore[attr-defined]
        with self.compute_loss_context_manager():  # type: ignore[attr-defined]
            loss = self.compute_loss(model, inputs, num_items_in_batch=items)  # type: ignore[attr-defined]
        if args.n_gpu > 1:
            loss = loss.mean()
        scaled_for_accumulation = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_accumulation is None:
            scaled_for_accumulation = (
                getattr(self, "model_accepts_loss_kwargs", False) and items is not None
            ) or getattr(self, "compute_loss_func", None) is not None
        if not scaled_for_accumulation:
            loss = loss / self.current_gradient_accumulation_steps  # type: ignore[attr-defined]
        self.accelerator.backward(session.scale_loss(loss))  # type: ignore[attr-defined]
        return loss.detach()

    # The gradients were clipped in every pass (max_grad_norm, after masking) before the base
    # optimizer stepped; the Trainer's clip comes after our step, so it only reads the norm.
    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        return _grad_norm(model)

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        return _grad_norm(model) if grad_norm is None else grad_norm


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)


class CompressorTrainer(CompressorTrainerMixin, Trainer):  # type: ignore[misc]
    """A ``transformers.Trainer`` that trains with a compression recipe (``recipe=``)."""


__all__ = ["CompressorCallback", "CompressorTrainer", "CompressorTrainerMixin"]

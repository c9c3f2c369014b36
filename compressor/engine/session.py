"""Session: compression for your own training loop, in a few lines.

    session = Session(model, load_recipe("recipes/gmp-mnist1d.yaml"), steps_per_epoch=len(loader))
    optimizer = session.optimizer(model.parameters())
    for x, y in loader:
        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + session.penalty()
            loss.backward()
            return loss
        loss = optimizer.step(closure)      # 1 or 2 passes: the wrapper decides
        session.step_end(loss)              # masks, schedules, observers
    report = session.finalize()

The session owns the step counter, the compression RNG, the persistent masks and every
modifier; its ``state_dict`` is everything needed to resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from compressor.contract.errors import ConfigError, Loc
from compressor.contract.modifier import Modifier
from compressor.contract.operator import Operator
from compressor.contract.optim import DelegatingOptimizer
from compressor.contract.optimizer import OptimizerWrapper
from compressor.contract.schedule import Schedule
from compressor.contract.selection import Target
from compressor.contract.steps import StepClock
from compressor.contract.task import call_model
from compressor.engine.distributed_exit import guard_distributed_exit
from compressor.engine.masks import MaskSet
from compressor.engine.precision import LossScaler, StepGuard
from compressor.host.manager import Plugins, load_plugins
from compressor.kit.params import params_with_grad
from compressor.kit.selection import select, select_targets, sparsity_stats, unwrap_model
from compressor.recipe.schema import Recipe


class SessionOptimizer(DelegatingOptimizer):
    """The optimizer users get: after every backward pass it unscales (fp16) and masks the
    gradients, after every step it masks the weights and lets modifiers re-impose structure."""

    def __init__(self, inner: torch.optim.Optimizer, session: Session) -> None:
        super().__init__(inner)
        self.session = session
        # train.grad_clip: per backward pass, after masking (pruned gradients never count)
        self.grad_clip: float | None = session.recipe.config.train.grad_clip
        self.skipped = False
        """Whether the last step was skipped (an fp16 overflow in one of its passes)."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        self.session.begin()
        masks, scaler = self.session.masks, self.session.scaler
        if closure is None:
            if isinstance(self.base, DelegatingOptimizer) and not isinstance(self.base, StepGuard):
                raise TypeError(
                    f"{type(self.base).__name__} needs a closure: call optimizer.step(closure)"
                )
            scaler.unscale(params_with_grad(self.base))
            masks.mask_grads()
            loss = self.base.step()
        else:

            def masked_closure() -> Any:
                loss = closure()
                scaler.unscale(params_with_grad(self.base))
                masks.mask_grads()
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.session.model.parameters(), self.grad_clip)
                return loss

            loss = self.base.step(masked_closure)
        self.skipped = scaler.end_step()
        masks.apply()
        for modifier in self.session.modifiers:
            modifier.after_optimizer_step(self.session)
        return loss


class Session:
    """Compression state for one training run of ``model`` driven by ``recipe``.

    Implements :class:`~compressor.contract.context.CompressionContext`: modifiers, wrappers
    and observers receive the session typed as that protocol and use nothing else of it.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        *,
        steps_per_epoch: int,
        total_steps: int | None = None,
        plugins: Plugins | None = None,
        example_inputs: Callable[[int], Any] | None = None,
        calibration: Callable[[int, int, int, int], Iterator[Any]] | None = None,
        runs_log: bool = False,
    ) -> None:
        """``steps_per_epoch`` counts optimizer steps (with ``train.accumulate: K``, the
        loader's length divided by K, rounded up). ``example_inputs(batch)`` gives inputs for
        tracing the model (the channel operator needs them); the built-in loop passes real
        ones. ``calibration(samples, seed, batches, batch_size)`` gives calibration batches of
        model inputs for operators that compress from data (Wanda, SparseGPT, GPTQ), with the
        meaning of ``EvaluationContext.calibration_batches``; the built-in loop passes its
        run's. ``plugins``: the loaded plugins to build from and notify (default: the
        installed ones, loaded afresh; there is no process-wide set). A recipe with a ``log:``
        section is refused unless ``runs_log`` (the caller runs its loggers: the built-in
        loop)."""
        if steps_per_epoch <= 0:
            raise ValueError("steps_per_epoch must be positive")
        log = getattr(recipe.config, "log", None)
        if not runs_log and log is not None and log.to:  # refused, never silently ignored
            raise recipe.error(
                ("log",),
                "a Session in your own loop does not run the recipe's log: section (compressor "
                "run does): log from your loop (session.finalize() gives the report) or remove it",
            )
        self.plugins = plugins or load_plugins()
        self.registries = self.plugins.registries
        self.model = unwrap_model(model)  # the user's names, without DDP/compile prefixes
        self.recipe = recipe
        self._compressed: dict[int, Target] = {}  # every tensor an operator was bound to
        train = recipe.config.train
        self.clock = StepClock(steps_per_epoch, total_steps or train.epochs * steps_per_epoch)
        self.step = 0
        self.generator = torch.Generator().manual_seed(train.seed)
        self.masks = MaskSet(model)
        self.scaler = LossScaler(train.precision == "fp16", check_finite=train.nonfinite == "skip")
        self._example_inputs = example_inputs
        self._calibration = calibration
        self.optimizer_: SessionOptimizer | None = None
        self.wrapper_: OptimizerWrapper | None = None
        self.lr_schedule: Schedule | None = None
        if recipe.config.lr_schedule is not None:
            self.lr_schedule = self._located(
                ("lr_schedule",), self.build_schedule, recipe.config.lr_schedule, at=()
            )
            lowest = min(self.lr_schedule(step) for step in self.lr_schedule.milestones())
            if not lowest >= 0:
                raise recipe.error(
                    ("lr_schedule",), f"the LR factor would be {lowest:g}: it must be at least 0"
                )
        self.modifiers: list[Modifier] = [
            self._located(("modifiers", i), self.registries.modifiers.build, cfg, self)
            for i, cfg in enumerate(recipe.config.modifiers)
        ]
        self._check_overlaps()
        self._check_regrowth()
        guard_distributed_exit()  # DDP under torchrun: no abort at interpreter exit
        self._started = False
        self.evaluator: Callable[[], dict[str, float]] | None = None
        self.plugins.notify("session_started", context=self)

    # -- building plugin objects -------------------------------------------------------------

    def _located(self, loc: Loc, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return build(*args, **kwargs)
        except ConfigError as exc:
            raise self.recipe.error((*loc, *exc.loc), exc.message) from None

    def build_operator(
        self,
        config: Any,
        *,
        at: Loc = ("operator",),
        model: nn.Module | None = None,
        context: Any = None,
    ) -> Operator:
        """Instantiate an operator config and bind it to the tensors it selects in ``model``
        (default: the session's model) and to ``context`` (default: this session; a run
        context passes itself, so its operators see its data)."""
        model = self.model if model is None else unwrap_model(model)
        operator: Operator = self.registries.operators.build(config)
        targets = select(model, config)
        if not targets:
            raise ConfigError(
                "selects no tensors in this model (check modules/include/exclude)", at
            )
        try:
            operator.bind(model, targets, self if context is None else context)
        except ConfigError as exc:
            raise ConfigError(exc.message, (*at, *exc.loc)) from None
        if model is self.model:
            self._compressed.update((id(target.param), target) for target in targets)
        return operator

    def build_schedule(self, config: Any, *, at: Loc = ("schedule",)) -> Schedule:
        try:
            schedule: Schedule = self.registries.schedules.build(config, self.clock)
        except ConfigError as exc:
            raise ConfigError(exc.message, (*at, *exc.loc)) from None
        return schedule

    def _check_overlaps(self) -> None:
        owner: dict[str, int] = {}
        for index, modifier in enumerate(self.modifiers):
            for name in sorted(modifier.masked_names()):
                if name in owner:
                    raise self.recipe.error(
                        ("modifiers", index),
                        f"masks '{name}', which modifiers[{owner[name]}] already masks; "
                        "give them disjoint include/exclude patterns",
                    )
                owner[name] = index

    def _check_regrowth(self) -> None:
        if any(modifier.regrows for modifier in self.modifiers):
            return
        for index, modifier in enumerate(self.modifiers):
            loc = modifier.sparsity_decreases()
            if loc is not None:
                raise self.recipe.error(
                    ("modifiers", index, *loc),
                    "the target sparsity decreases over training, but masks never regrow "
                    "pruned weights: make final at least initial (or add a modifier that "
                    "regrows weights)",
                )

    # -- the training-step protocol ----------------------------------------------------------

    def optimizer(
        self,
        params: Iterable[nn.Parameter] | None = None,
        *,
        base: torch.optim.Optimizer | None = None,
    ) -> SessionOptimizer:
        """The optimizer to train with: the recipe's base optimizer — or ``base``, one you
        built yourself — wrapped (SAM, CrAM, ...) if the recipe says so. Its state (the base
        optimizer's) is part of :meth:`state_dict` either way."""
        config = self.recipe.config
        if base is None:
            if config.optimizer is None:
                raise self.recipe.error(
                    (),
                    "missing 'optimizer:' section (or pass your own: session.optimizer(base=...))",
                )
            factory = self.registries.optimizers.build(config.optimizer)
            base = factory.build(
                list(params) if params is not None else list(self.model.parameters())
            )
        for group in base.param_groups:
            group.setdefault("initial_lr", group["lr"])
        inner: torch.optim.Optimizer = base
        if self.scaler.checking:  # an overflow in any pass skips the base optimizer's update
            inner = StepGuard(base, lambda: self.scaler.found_inf)
        if config.wrapper is not None:
            inner = self.wrapper_ = self._located(
                ("wrapper",), self.registries.wrappers.build, config.wrapper, inner, self
            )
        self.optimizer_ = SessionOptimizer(inner, self)
        self._apply_lr()
        return self.optimizer_

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward()`` on: scaled for fp16 (``train.precision``), else as
        it is. The session unscales the gradients after every backward pass itself."""
        return self.scaler.scale_loss(loss)

    def example_inputs(self, batch: int = 1) -> Any:
        """Inputs for tracing the model, or None when the session was given none."""
        return None if self._example_inputs is None else self._example_inputs(batch)

    def calibration_batches(
        self, samples: int, seed: int, batches: int, batch_size: int
    ) -> Iterator[Any] | None:
        """Calibration batches from the ``calibration`` the session was given, else None."""
        if self._calibration is None:
            return None
        return self._calibration(samples, seed, batches, batch_size)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """``model(**inputs)`` for a mapping, else ``model(inputs)``."""
        return call_model(model, inputs)

    def penalty(self) -> torch.Tensor | float:
        """Extra loss terms from modifiers (ADMM), or 0.0."""
        total: torch.Tensor | float = 0.0
        for modifier in self.modifiers:
            term = modifier.penalty(self)
            if term is not None:
                total = total + term
        return total

    def evaluate(self) -> dict[str, float] | None:
        """Test metrics of the model as it is now, if the training loop set ``evaluator``
        (the built-in loop does); modifiers use it to report accuracy around a hard change."""
        return self.evaluator() if self.evaluator is not None else None

    def begin(self) -> None:
        """Apply the step-0 state (first masks, LR). Idempotent; the first optimizer step calls
        it, so model weights and checkpoints can be loaded after building the session."""
        if not self._started:
            self._started = True
            self._update()

    def step_end(self, loss: torch.Tensor | float | None = None) -> None:
        """Call once after every optimizer step."""
        self.begin()
        self.step += 1
        if self.optimizer_ is not None and self.optimizer_.skipped:
            self._apply_lr()  # a skipped step (fp16 overflow) makes no compression update
        else:
            self._update()
        if self.plugins.has("step_finished"):  # float(loss) only if observed
            value = None if loss is None else float(torch.as_tensor(loss).detach())
            self.plugins.notify("step_finished", context=self, step=self.step, loss=value)

    def _update(self) -> None:
        for modifier in self.modifiers:
            modifier.update(self)
        self._apply_lr()

    def _apply_lr(self) -> None:
        if self.lr_schedule is None or self.optimizer_ is None:
            return
        factor = self.lr_schedule(self.step)
        for group in self.optimizer_.param_groups:
            group["lr"] = group["initial_lr"] * factor

    # -- reporting ---------------------------------------------------------------------------

    def sparsity(self) -> dict[str, Any]:
        """Exact zeros, global and per tensor, over the eligible weights (Linear/Conv) and every
        tensor the recipe's operators compress (embeddings included), each counted once; and
        under ``compressed`` over the tensors the modifiers mask alone."""
        targets = {id(target.param): target for target in select_targets(self.model)}
        targets.update(self._compressed)
        stats = sparsity_stats(list(targets.values()))
        # ``compressed``: only the tensors a modifier masks, so an excluded layer does not
        # dilute the figure the recipe asked for
        names = set(self.masks) | {n for m in self.modifiers for n in m.masked_names()}
        compressed = sparsity_stats([t for t in targets.values() if names & {t.name, *t.aliases}])
        stats["compressed"] = {
            "sparsity": compressed["global"],
            "zeros": compressed["zeros"],
            "total": compressed["eligible"],
            "count": len(compressed["per_layer"]),  # type: ignore[arg-type]
        }
        return stats

    def finalize(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build the report (sparsity, modifier metrics, plugins) and notify observers."""
        report: dict[str, Any] = {
            "recipe": self.recipe.name,
            "recipe_hash": self.recipe.hash(),
            "steps": self.step,
            "sparsity": self.sparsity(),
            "modifiers": [
                {"type": getattr(m.config, "type", type(m).__name__), **m.report(self)}
                for m in self.modifiers
            ],
            "plugins": [
                {"name": p.name, "distribution": p.distribution, "version": p.version}
                for p in self.registries.plugins
            ],
        }
        if self.wrapper_ is not None:  # e.g. how many second passes a two-pass wrapper ran
            report["wrapper"] = {
                "name": getattr(self.wrapper_.config, "name", type(self.wrapper_).__name__),
                **self.wrapper_.report(),
            }
        if extra:
            report.update(extra)
        self.plugins.notify("session_finished", context=self, report=report)
        return report

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly; the model's weights are saved by the caller."""
        return {
            "step": self.step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "masks": self.masks.state_dict(),
            "modifiers": [m.state_dict() for m in self.modifiers],
            "optimizer": self.optimizer_.state_dict() if self.optimizer_ is not None else None,
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["modifiers"]) != len(self.modifiers):
            raise ValueError("checkpoint was written by a recipe with a different modifier list")
        self._started = True
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.masks.load_state_dict(state["masks"])
        if state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        for modifier, modifier_state in zip(self.modifiers, state["modifiers"], strict=True):
            modifier.load_state_dict(modifier_state)
        if state.get("optimizer") is not None:
            if self.optimizer_ is None:
                raise RuntimeError("call session.optimizer() before load_state_dict()")
            self.optimizer_.load_state_dict(state["optimizer"])
        self._apply_lr()

    def timeline(self) -> list[tuple[str, list[tuple[int, str]]]]:
        """What happens when, per modifier (for ``compressor explain``)."""
        return [
            (f"modifiers[{i}] {getattr(m.config, 'type', '')}", m.timeline())
            for i, m in enumerate(self.modifiers)
        ]


__all__ = ["Session", "SessionOptimizer"]

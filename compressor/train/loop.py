"""The built-in training loop behind ``compressor run``: short enough to read in one sitting.

It does what a user's own loop would do with a :class:`Session`, plus batches whose order is
a pure function of (seed, epoch) (:mod:`compressor.train.batches`) so a resumed run sees exactly
the batches it would have seen, gradient accumulation and mixed precision, periodic
evaluation through the task, atomic checkpoints (:mod:`compressor.train.checkpoint`), the loss
and clocks (:mod:`compressor.train.meter`), and the run report (:mod:`compressor.train.report`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compressor.contract.data import Data, DatasetBuilder, DataSplits
from compressor.contract.errors import CompressorError, ConfigError
from compressor.contract.evaluation import Evaluator
from compressor.contract.logger import RunInfo
from compressor.contract.task import Task, to_device
from compressor.engine.session import Session, SessionOptimizer
from compressor.host.manager import Plugins, load_plugins
from compressor.recipe.schema import Recipe
from compressor.train.batches import (
    BatchSource,
    LoaderSettings,
    StepBatches,
    batch_source,
    batches_per_epoch,
    on_device,
    sample_count,
)
from compressor.train.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    data_from_record,
    data_record,
    initial_weights,
    resume_key,
)
from compressor.train.context import RunContext
from compressor.train.distributed import World, barrier, device_for, from_environment, process_group
from compressor.train.meter import LossMeter, NonFiniteLoss
from compressor.train.progress import Progress
from compressor.train.report import MODEL, REPORT, History, final_report, format_metric
from compressor.train.runlog import RunLog, check_loggers

__all__ = [
    "CHECKPOINT",
    "MODEL",
    "REPORT",
    "NonFiniteLoss",
    "data_from_record",
    "data_record",
    "Prepared",
    "format_metric",
    "initial_weights",
    "prepare",
    "resume_key",
    "run",
]
"""The loop's public names; several live in the modules named above (CLI, study and restore
import them from here)."""

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prepared:
    """Everything a run needs, built from a recipe, each thing once."""

    data: Data | DataSplits | None
    model: nn.Module
    session: Session
    task: Task
    context: RunContext
    device: torch.device
    evaluators: dict[str, Evaluator]
    """The recipe's ``evaluate:`` evaluators, by name, already checked against the run."""
    init_from: Path | None
    """``train.init_from`` for this seed (checked to exist)."""
    train_size: int = 0


def require_sections(recipe: Recipe) -> None:
    """``compressor run`` needs ``model:`` and ``data:`` (recipes for your own loop do not)."""
    for section in ("model", "data", "optimizer"):
        if getattr(recipe.config, section) is None:
            raise recipe.error(
                (),
                f"missing '{section}:' section: compressor run builds the {section} from it "
                "(only recipes used through Session in your own loop may leave it out)",
            )


def build_task(recipe: Recipe, dataset: DatasetBuilder, plugins: Plugins) -> Task:
    """The recipe's ``task:``, else the one the dataset names."""
    registry = plugins.registries.tasks
    config = recipe.config.task
    if config is None:
        name = dataset.default_task
        if name is None:
            raise recipe.error((), "missing 'task:' section: this dataset names no default task")
        try:
            entry = registry.get(name)
        except KeyError as exc:
            raise recipe.error(("data", "name"), f"its default task: {exc.args[0]}") from None
        config = entry.config.model_validate({"name": name})
    task: Task = registry.build(config)
    return task


def build_model(recipe: Recipe, plugins: Plugins, info: Any) -> nn.Module:
    """The recipe's model; a builder that fails on its config is a located error."""
    try:
        model: nn.Module = plugins.registries.models.build(recipe.config.model).build(info)
    except (CompressorError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise recipe.error(
            ("model",), f"cannot build this model: {type(exc).__name__}: {exc}"
        ) from None
    return model


def steps_per_epoch(
    train_size: int, batch_size: int, accumulate: int = 1, drop_last: bool = False
) -> int:
    """Optimizer steps per epoch: micro-batches per epoch over ``accumulate``, rounded up."""
    return math.ceil(batches_per_epoch(train_size, batch_size, drop_last) / accumulate)


def prepare(
    recipe: Recipe,
    plugins: Plugins | None = None,
    *,
    with_data: bool = True,
    world: World | None = None,
    known: dict[str, Any] | None = None,
) -> Prepared:
    """Build data, task, model and session; without data only the shapes are used (validate,
    explain), and the run context builds the data when first asked. Under data parallelism
    (``world``) every rank reads its slice of each global batch. ``known`` (a checkpoint's
    :func:`data_record`) replaces asking the dataset for its shapes when there is no data."""
    plugins = plugins or load_plugins()
    world = world or World()
    require_sections(recipe)
    config = recipe.config
    torch.manual_seed(config.train.seed)
    dataset = plugins.registries.datasets.build(config.data)
    dataset.folder_of = lambda field: recipe.source.folder(("data", field))
    task = build_task(recipe, dataset, plugins)
    data = dataset.build() if with_data else None
    if data is not None:
        info, train_size = data.info, sample_count(data)
    elif known is not None:
        info, train_size = data_from_record(known)
    else:
        info, train_size = dataset.info(), dataset.train_size()
    init_from = _init_from(recipe)
    device = device_for(world, config.train.device)
    model = build_model(recipe, plugins, info).to(device)
    settings = LoaderSettings.of(config.data, world.rank, world.size)
    if data is not None:
        data = on_device(data, device)
        batches: BatchSource | Callable[[], BatchSource] = batch_source(
            data, settings, config.train.seed
        )
    else:
        batches = lambda: batch_source(dataset.build(), settings, config.train.seed)  # noqa: E731

    def calibration(samples: int, seed: int, count: int, size: int) -> Iterator[Any]:
        # the run context's (built just below; a generator, so nothing runs before it
        # exists): data-aware operators of modifiers and wrappers calibrate on the run's
        # data, exactly as evaluators do
        yield from context.calibration_batches(samples, seed, count, size)

    session = Session(
        model,
        recipe,
        steps_per_epoch=steps_per_epoch(
            train_size,
            settings.batch_size * world.size,
            config.train.accumulate,
            settings.drops_last,
        ),
        plugins=plugins,
        example_inputs=lambda n: _example(batches, task, info, n),
        calibration=calibration,
        runs_log=True,
    )
    spec = config.model.model_dump(mode="json")
    context = RunContext(session, task, batches, model_spec=spec, data_info=info)
    evaluators = build_evaluators(recipe, plugins, context)
    if world.main:  # the one process that logs
        check_loggers(recipe, plugins)
    return Prepared(
        data, model, session, task, context, torch.device(device), evaluators, init_from, train_size
    )


def _init_from(recipe: Recipe) -> Path | None:
    train = recipe.config.train
    if not train.init_from:
        return None
    path = Path(train.init_from.replace("{seed}", str(train.seed)))
    if not path.is_file():
        raise recipe.error(("train", "init_from"), f"{path} does not exist")
    return path


def build_evaluators(recipe: Recipe, plugins: Plugins, context: RunContext) -> dict[str, Evaluator]:
    """The recipe's ``evaluate:`` evaluators, each checked against the run (located errors)."""
    evaluators: dict[str, Evaluator] = {}
    for name, evaluator_config in recipe.config.evaluate:
        if evaluator_config is not None:
            evaluator = plugins.registries.evaluators.build(evaluator_config)
            try:
                evaluator.check(context)
            except ConfigError as exc:
                raise recipe.error(("evaluate", name, *exc.loc), exc.message) from None
            evaluators[name] = evaluator
    return evaluators


def _example(
    batches: BatchSource | Callable[[], BatchSource], task: Task, info: Any, n: int
) -> Any:
    """Real example inputs once data exists (validate has none: zeros of the data's dtype)."""
    if isinstance(batches, BatchSource):
        return to_device(task.inputs(batches.example(n)), "cpu")
    return info.example(n)


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 on the run's device; nothing for fp32."""
    if precision not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST[precision])


def run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    plugins: Plugins | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    on_step: Callable[[Session], None] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Train with the recipe, evaluate, write ``report.json``; returns the report.

    A loss that stops being finite ends the run as failed (:class:`NonFiniteLoss`, naming the
    step) without writing a checkpoint of the broken weights, unless ``train.nonfinite: skip``
    skips such steps instead. Training time is measured as wall and process CPU time inside
    the loop and carried across resumes. Under ``torchrun`` every process trains its slice of
    each global batch (:mod:`compressor.train.distributed`); rank 0 alone evaluates and writes
    files, and the other ranks return ``{"rank": ..., "world_size": ..., "steps": ...}``.

    The recipe's ``log:`` loggers (rank 0) and the run observer hooks receive the metrics
    (:mod:`compressor.train.runlog`); a run that fails closes them as failed, then raises."""
    out = Path(out_dir)
    if not resume and not overwrite and ((out / CHECKPOINT).exists() or (out / REPORT).exists()):
        raise CompressorError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    world = from_environment()
    plugins = plugins or load_plugins()
    runlog = RunLog(plugins)
    with process_group(world, recipe.config.train.device):
        try:
            return _train(
                recipe,
                out,
                world,
                plugins=plugins,
                resume=resume,
                progress=progress if world.main else False,
                on_step=on_step,
                label=label,
                runlog=runlog,
            )
        except BaseException as exc:
            runlog.fail(exc)
            raise


def sync_last(model: nn.Module, micro: int, count: int) -> contextlib.AbstractContextManager[Any]:
    """Under DDP, gradients are all-reduced on the last micro-batch of a step only."""
    if isinstance(model, DistributedDataParallel) and micro < count - 1:
        return model.no_sync()
    return contextlib.nullcontext()


@dataclass
class Pass:
    """One forward and backward pass over a step's micro-batches: the closure the optimizer
    calls (twice for SAM/CrAM). The compression penalty is added once per step."""

    task: Task
    model: nn.Module
    """The model the passes run: DDP's wrapper under data parallelism."""
    session: Session
    optimizer: SessionOptimizer
    device: torch.device
    pinned: bool
    precision: contextlib.AbstractContextManager[Any]

    @classmethod
    def of(
        cls, prepared: Prepared, optimizer: SessionOptimizer, recipe: Recipe, world: World
    ) -> Pass:
        """The run's pass; build it after loading a checkpoint: wrapping the model in DDP
        broadcasts rank 0's weights to the other ranks."""
        train = recipe.config.train
        return cls(
            prepared.task,
            _data_parallel(prepared.model, world, prepared.device),
            prepared.session,
            optimizer,
            prepared.device,
            recipe.config.data.pin_memory,
            autocast(train.precision, train.device),
        )

    def __call__(self, micro: list[Any]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | float = 0.0
        for i, cpu_batch in enumerate(micro):
            batch = to_device(cpu_batch, self.device, non_blocking=self.pinned)
            with sync_last(self.model, i, len(micro)):
                with self.precision:
                    loss = self.task.loss(self.task.forward(self.model, batch), batch)
                if len(micro) > 1:
                    loss = loss / len(micro)
                if i == 0:
                    loss = loss + self.session.penalty()
                self.session.scale_loss(loss).backward()
            total = loss if len(micro) == 1 else total + loss.detach()
        return total  # type: ignore[return-value]


@dataclass(frozen=True)
class Cadence:
    """Where the run stops, and every how many steps it logs, evaluates and checkpoints."""

    last_step: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, recipe: Recipe, session: Session) -> Cadence:
        train, clock = recipe.config.train, session.clock
        return cls(
            last_step=min(clock.total_steps, train.max_steps or clock.total_steps),
            log_every=train.log_every,
            eval_every=max(1, clock.steps(train.eval_every)),
            checkpoint_every=clock.steps(train.checkpoint_every, default=0),
        )

    def due(self, every: int, step: int) -> bool:
        return step % every == 0 or step == self.last_step


def _train(
    recipe: Recipe,
    out: Path,
    world: World,
    *,
    plugins: Plugins,
    resume: bool,
    progress: bool | None,
    on_step: Callable[[Session], None] | None,
    label: str | None,
    runlog: RunLog,
) -> dict[str, Any]:
    started = time.perf_counter()
    prepared = prepare(recipe, plugins, world=world)
    model, session, task, config = prepared.model, prepared.session, prepared.task, recipe.config
    optimizer = session.optimizer()
    meter = LossMeter(world, prepared.device)
    info = prepared.context.data_info
    record = data_record(info, prepared.train_size) if info is not None else None
    checkpoint = Checkpoint(out, recipe, world, record)
    rows = checkpoint.start(model, session, meter, resume=resume, init_from=prepared.init_from)
    history = History(prepared.context, world, runlog, rows)
    session.evaluator = history.test_metrics
    cadence = Cadence.of(recipe, session)
    runlog.open(recipe, _run_info(recipe, out, world, label, session, cadence.last_step))
    steps = StepBatches(
        prepared.context.batches,
        session.clock.steps_per_epoch,
        config.train.accumulate,
        task.prepare if type(task).prepare is not Task.prepare else None,
    )
    forward = Pass.of(prepared, optimizer, recipe, world)
    meter.start()
    with Progress(
        label or recipe.name, total=cadence.last_step, start=session.step, enabled=progress
    ) as bar:
        while session.step < cadence.last_step:
            step = session.step
            micro = steps.of(step)
            model.train()
            loss = optimizer.step(functools.partial(forward, micro))
            session.step_end(loss)
            if not optimizer.skipped:
                meter.add(loss, step, runlog.active)
            if on_step is not None:
                on_step(session)
            now = session.step
            if runlog.due(now, cadence.last_step):
                _log_train(meter, runlog, session, optimizer, world)
            if cadence.due(cadence.log_every, now):
                meter.check(session)
                bar.update(now, epoch=session.clock.epoch_of(now), loss=meter.running())
            if cadence.due(cadence.eval_every, now):
                meter.check(session)
                row = history.evaluate(meter.evaluation_loss())
                if now % cadence.eval_every == 0:
                    meter.reset_evaluation()
                else:  # the run stops here, off the schedule: a resumed run replaces this row
                    row["partial"] = True
                if world.main:
                    bar.log(history.describe(row))
                barrier(world)  # the other ranks wait while rank 0 evaluates
            if cadence.checkpoint_every and now % cadence.checkpoint_every == 0:
                checkpoint.save(model, session, history.rows, meter)
    times = meter.elapsed()
    checkpoint.save(model, session, history.rows, meter)
    if not world.main:
        mine = {"rank": world.rank, "world_size": world.size, "steps": session.step}
        runlog.finish(mine)
        return mine
    return final_report(recipe, out, history, prepared.evaluators, times, started)


def _data_parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model the forward passes run: wrapped in DDP under data parallelism."""
    if not world.distributed:
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _run_info(
    recipe: Recipe, out: Path, world: World, label: str | None, session: Session, last_step: int
) -> RunInfo:
    return RunInfo(
        name=recipe.name,
        label=label or recipe.name,
        out_dir=out,
        config=recipe.to_dict(),
        recipe_hash=recipe.hash(),
        rank=world.rank,
        world_size=world.size,
        resumed_at=session.step,
        steps_per_epoch=session.clock.steps_per_epoch,
        last_step=last_step,
    )


def _log_train(
    meter: LossMeter, runlog: RunLog, session: Session, optimizer: SessionOptimizer, world: World
) -> None:
    """A 'train' row: the loss since the last one (mean over steps and ranks), the LR, the
    sparsity. Every rank comes here (the mean is a collective); rank 0 logs."""
    meter.check(session)  # a diverged loss stops the run, it is not logged
    runlog.log(
        session.step,
        {
            "loss": meter.take_logged(),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "sparsity": session.sparsity()["global"] if world.main else None,
        },
        "train",
    )

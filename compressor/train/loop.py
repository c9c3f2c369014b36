"""The built-in training loop behind ``compressor run``: short enough to read in one sitting.

It does what a user's own loop would do with a :class:`Session`, plus batches whose order is
a pure function of (seed, epoch) (:mod:`compressor.train.batches`) so a resumed run sees exactly
the batches it would have seen, gradient accumulation and mixed precision, periodic
evaluation through the task, atomic checkpoints, and the run report.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compressor.contract.data import Data, DataInfo, DatasetBuilder, DataSplits
from compressor.contract.errors import CompressorError, ConfigError
from compressor.contract.evaluation import Evaluation
from compressor.contract.logger import RunInfo
from compressor.contract.task import Task, to_device
from compressor.engine.session import Session
from compressor.host.manager import Plugins, load_plugins
from compressor.kit.files import atomic_save, atomic_write_json, load_checkpoint
from compressor.recipe.schema import Recipe
from compressor.train.batches import Batches, LoaderSettings, batches_per_epoch, sample_seed
from compressor.train.context import RunContext
from compressor.train.distributed import (
    World,
    barrier,
    check_same_masks,
    device_for,
    from_environment,
    max_over_ranks,
    mean_over_ranks,
    process_group,
)
from compressor.train.progress import Progress
from compressor.train.runlog import RunLog, check_loggers

CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"
MODEL = "model.pt"

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Prepared:
    """Everything a run needs, built from a recipe."""

    data: Data | DataSplits | None
    model: nn.Module
    session: Session
    task: Task
    context: RunContext
    train_size: int = 0


def data_record(info: DataInfo, train_size: int) -> dict[str, Any]:
    """What the data told the model builder (a vocabulary size, a shape), as the checkpoint
    keeps it: a finished run is rebuilt from its folder even where the data has gone."""
    return {
        "input_shape": list(info.input_shape),
        "num_classes": int(info.num_classes),
        "input_dtype": str(info.input_dtype).removeprefix("torch."),
        "train_size": int(train_size),
    }


def data_from_record(record: dict[str, Any]) -> tuple[DataInfo, int]:
    """Inverse of :func:`data_record`."""
    dtype = getattr(torch, record["input_dtype"])
    info = DataInfo(tuple(record["input_shape"]), int(record["num_classes"]), dtype)
    return info, int(record["train_size"])


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
    registries = plugins.registries
    config = recipe.config
    torch.manual_seed(config.train.seed)
    dataset = registries.datasets.build(config.data)
    task = build_task(recipe, dataset, plugins)
    data = dataset.build() if with_data else None
    if data is not None:
        info, train_size = data.info, _train_size(data)
    elif known is not None:
        info, train_size = data_from_record(known)
    else:
        info, train_size = dataset.info(), dataset.train_size()
    if config.train.init_from:
        path = Path(config.train.init_from.replace("{seed}", str(config.train.seed)))
        if not path.is_file():
            raise recipe.error(("train", "init_from"), f"{path} does not exist")
    device = device_for(world, config.train.device)
    model = build_model(recipe, plugins, info).to(device)
    if isinstance(data, DataSplits) and device != "cpu":
        data = data.to(device)
    settings = LoaderSettings.of(config.data, world.rank, world.size)

    def make_batches() -> Batches:
        return Batches(data if data is not None else dataset.build(), settings, config.train.seed)

    batches: Batches | Callable[[], Batches] = make_batches() if data is not None else make_batches

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
    )
    context = RunContext(
        session,
        task,
        batches,
        model_spec=config.model.model_dump(mode="json"),
        data_info=info,
    )
    for name, evaluator_config in config.evaluate:
        if evaluator_config is not None:
            evaluator = registries.evaluators.build(evaluator_config)
            try:
                evaluator.check(context)
            except ConfigError as exc:
                raise recipe.error(("evaluate", name, *exc.loc), exc.message) from None
    if world.main:  # the one process that logs
        check_loggers(recipe, plugins)
    return Prepared(data, model, session, task, context, train_size)


def _train_size(data: Data | DataSplits) -> int:
    return int(data.train_x.shape[0]) if isinstance(data, DataSplits) else len(data.train)  # type: ignore[arg-type]


def _example(batches: Batches | Callable[[], Batches], task: Task, info: Any, n: int) -> Any:
    """Real example inputs once data exists (validate has none: zeros of the data's dtype)."""
    if isinstance(batches, Batches):
        return to_device(task.inputs(batches.example(n)), "cpu")
    return info.example(n)


def initial_weights(template: str, seed: int) -> dict[str, torch.Tensor]:
    """Weights for ``train.init_from``: a state dict or a checkpoint holding one."""
    path = Path(template.replace("{seed}", str(seed)))
    if not path.exists():
        raise CompressorError(f"train.init_from: {path} does not exist")
    state = load_checkpoint(path)
    return state["model"] if isinstance(state, dict) and "model" in state else state  # type: ignore[no-any-return]


def resume_key(recipe: Recipe) -> dict[str, Any]:
    """What must match to resume: the recipe except ``train.max_steps`` (how far to go) and
    ``log:`` (where metrics go)."""
    data = recipe.identity()
    data["train"] = {k: v for k, v in data["train"].items() if k != "max_steps"}
    return data


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 on the run's device; nothing for fp32."""
    if precision not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST[precision])


class StepBatches:
    """The micro-batches of each optimizer step, read epoch by epoch from one iterator (so a
    DataLoader keeps prefetching across steps)."""

    def __init__(self, batches: Batches, steps_per_epoch: int, accumulate: int) -> None:
        self.batches = batches
        self.steps_per_epoch = steps_per_epoch
        self.accumulate = accumulate
        self._epoch: int | None = None
        self._stream: Iterator[Any] = iter(())

    def of(self, step: int) -> list[Any]:
        epoch, j = divmod(step, self.steps_per_epoch)
        start = j * self.accumulate
        stop = min(start + self.accumulate, self.batches.per_epoch)
        if self._epoch != epoch or j == 0:
            self._epoch = epoch
            self._stream = iter(self.batches.train(epoch, start, self.batches.per_epoch))
        return list(itertools.islice(self._stream, stop - start))


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
    checkpoint_path = out / CHECKPOINT
    started = time.perf_counter()
    prepared = prepare(recipe, plugins, world=world)
    model, session, task, context = (
        prepared.model,
        prepared.session,
        prepared.task,
        prepared.context,
    )
    config = recipe.config
    device = torch.device(device_for(world, config.train.device))
    optimizer = session.optimizer()
    history: list[dict[str, Any]] = []
    metric = task.metric
    # time so far (carried across resumes), the loss summed since the last evaluation and
    # since the last logged 'train' row
    clocks: dict[str, float] = {
        "train_s": 0.0,
        "train_cpu_s": 0.0,
        "loss_sum": 0.0,
        "loss_count": 0,
        "log_loss_sum": 0.0,
        "log_loss_count": 0,
    }

    def test_metrics() -> dict[str, float]:
        return {f"test_{k}": v for k, v in context.measure(model).items()}

    session.evaluator = test_metrics

    if config.train.init_from and not (resume and checkpoint_path.exists()):
        model.load_state_dict(initial_weights(config.train.init_from, config.train.seed))
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state["resume_key"] != resume_key(recipe):
            raise CompressorError(
                f"{checkpoint_path} was written by a different recipe; use another --out or drop --resume"
            )
        if state.get("world_size", 1) != world.size:
            raise CompressorError(
                f"{checkpoint_path} was written by {state.get('world_size', 1)} process(es) and "
                f"this run has {world.size}: the global batch, and so every step, would differ; "
                "resume with the same number of processes"
            )
        model.load_state_dict(state["model"])
        session.load_state_dict(state["session"])
        history = [row for row in state["history"] if not row.get("partial")]
        clocks = {**clocks, **state.get("clocks", {})}
    forward_model: nn.Module = model
    if world.distributed:  # after loading: DDP broadcasts rank 0's weights once more
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    clock = session.clock
    last_step = min(clock.total_steps, config.train.max_steps or clock.total_steps)
    eval_every = max(1, clock.steps(config.train.eval_every))
    checkpoint_every = clock.steps(config.train.checkpoint_every, default=0)
    pinned = config.data.pin_memory
    steps = StepBatches(context.batches, clock.steps_per_epoch, config.train.accumulate)
    prepares = type(task).prepare is not Task.prepare
    precision = autocast(config.train.precision, config.train.device)
    resumed_at = session.step
    runlog.open(
        recipe,
        RunInfo(
            name=recipe.name,
            label=label or recipe.name,
            out_dir=out,
            config=recipe.to_dict(),
            recipe_hash=recipe.hash(),
            rank=world.rank,
            world_size=world.size,
            resumed_at=resumed_at,
            steps_per_epoch=clock.steps_per_epoch,
            last_step=last_step,
        ),
    )

    info = context.data_info
    facts = data_record(info, prepared.train_size) if info is not None else None

    def save_checkpoint() -> None:
        check_finite()  # a broken model is never written over a good checkpoint
        if world.main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "session": session.state_dict(),
                    "history": history,
                    "resume_key": resume_key(recipe),
                    "recipe": recipe.to_dict(),
                    "data": facts,
                    "clocks": {**clocks, **elapsed(), **loss_so_far()},
                    "world_size": world.size,
                },
                checkpoint_path,
            )
        barrier(world)  # no rank runs ahead of a checkpoint it might resume from

    def evaluate(train_loss: float | None) -> dict[str, Any]:
        row = {
            "step": session.step,
            "epoch": round(clock.epoch_of(session.step), 4),
            "train_loss": train_loss,
            **(test_metrics() if world.main else {}),
            "sparsity": session.sparsity()["global"],
        }
        history.append(row)
        if session.step > resumed_at:  # a resumed run logged its last step already
            runlog.log(
                session.step,
                {k: v for k, v in row.items() if k not in ("step", "epoch")},
                "test",
            )
        return row

    def micro_batches(step: int) -> list[Any]:
        loaded = steps.of(step)
        if prepares:  # drawn once per step: both passes of SAM/CrAM see the same batch
            loaded = [
                task.prepare(
                    b,
                    torch.Generator().manual_seed(
                        sample_seed(config.train.seed, step, i * world.size + world.rank)
                    ),
                )
                for i, b in enumerate(loaded)
            ]
        return loaded

    running_loss: torch.Tensor | float = float(clocks["loss_sum"])  # summed on the device
    running_count = int(clocks["loss_count"])
    log_loss: torch.Tensor | float = float(clocks["log_loss_sum"])
    log_count = int(clocks["log_loss_count"])
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step
    started_wall, started_cpu = time.perf_counter(), time.process_time()

    def elapsed() -> dict[str, float]:
        return {
            "train_s": clocks["train_s"] + time.perf_counter() - started_wall,
            "train_cpu_s": clocks["train_cpu_s"] + time.process_time() - started_cpu,
        }

    def loss_so_far() -> dict[str, float]:
        return {
            "loss_sum": float(running_loss),
            "loss_count": running_count,
            "log_loss_sum": float(log_loss),
            "log_loss_count": log_count,
        }

    def log_train() -> None:
        """A 'train' row: the loss since the last one (mean over steps and ranks), the LR, the
        sparsity. Every rank comes here (the mean is a collective); rank 0 logs."""
        nonlocal log_loss, log_count
        check_finite()  # a diverged loss stops the run, it is not logged
        loss = None
        if log_count:
            total = torch.as_tensor(log_loss, dtype=torch.float64, device=device)
            loss = float(mean_over_ranks(world, total)) / log_count
        runlog.log(
            session.step,
            {
                "loss": loss,
                "lr": float(optimizer.param_groups[0]["lr"]),
                "sparsity": session.sparsity()["global"] if world.main else None,
            },
            "train",
        )
        log_loss, log_count = 0.0, 0

    def mean_loss() -> float | None:
        """The loss since the last evaluation, averaged over the steps (and the ranks)."""
        if not running_count:
            return None
        total = torch.as_tensor(running_loss, dtype=torch.float64, device=device)
        return float(mean_over_ranks(world, total)) / running_count

    def check_finite() -> None:
        """Synchronise once (at logging, evaluation and checkpoints), never per step; under
        data parallelism also check that every rank holds the same masks."""
        bad = int(max_over_ranks(world, first_bad))
        if bad >= 0:
            raise NonFiniteLoss(bad)
        check_same_masks(world, session.masks.tensors(), session.step)

    with Progress(
        label or recipe.name, total=last_step, start=session.step, enabled=progress
    ) as bar:
        while session.step < last_step:
            micro = micro_batches(session.step)
            model.train()

            def closure(micro: list[Any] = micro) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                total: torch.Tensor | float = 0.0
                for i, cpu_batch in enumerate(micro):
                    batch = to_device(cpu_batch, device, non_blocking=pinned)
                    with sync_last(forward_model, i, len(micro)):
                        with precision:
                            loss = task.loss(task.forward(forward_model, batch), batch)
                        if len(micro) > 1:
                            loss = loss / len(micro)
                        if i == 0:
                            loss = loss + session.penalty()
                        session.scale_loss(loss).backward()
                    total = loss if len(micro) == 1 else total + loss.detach()
                return total  # type: ignore[return-value]

            loss = optimizer.step(closure)
            step = session.step
            session.step_end(loss)
            if not optimizer.skipped:
                detached = loss.detach()
                first_bad = torch.where(
                    (first_bad < 0) & ~torch.isfinite(detached), step + 1, first_bad
                )
                running_loss = running_loss + detached
                running_count += 1
                if runlog.active:
                    log_loss = log_loss + detached
                    log_count += 1
            if on_step is not None:
                on_step(session)
            if runlog.due(session.step, last_step):
                log_train()
            if session.step % config.train.log_every == 0 or session.step == last_step:
                check_finite()
                bar.update(
                    session.step,
                    epoch=clock.epoch_of(session.step),
                    loss=float(running_loss) / max(running_count, 1),
                )
            scheduled = session.step % eval_every == 0
            if scheduled or session.step == last_step:
                check_finite()
                row = evaluate(mean_loss())
                if scheduled:
                    running_loss, running_count = 0.0, 0
                else:  # the run stops here, off the schedule: a resumed run replaces this row
                    row["partial"] = True
                if world.main:
                    bar.log(
                        f"step {row['step']} (epoch {row['epoch']:.2f}): {metric.title} "
                        f"{format_metric(row[f'test_{metric.name}'], metric.percent)}, "
                        f"sparsity {row['sparsity']:.4f}"
                    )
                barrier(world)  # the other ranks wait while rank 0 evaluates
            if checkpoint_every and session.step % checkpoint_every == 0:
                save_checkpoint()
    times = elapsed()
    save_checkpoint()
    if not world.main:
        mine = {"rank": world.rank, "world_size": world.size, "steps": session.step}
        runlog.finish(mine)
        return mine
    atomic_save(model.state_dict(), out / MODEL)

    if not history or history[-1]["step"] != session.step:
        evaluate(None)
    evaluations: dict[str, Any] = {}
    for name, evaluator_config in config.evaluate:
        if evaluator_config is not None:
            evaluator = plugins.registries.evaluators.build(evaluator_config)
            evaluations[name] = evaluator.run(context, model).to_dict()
    runlog.log(
        session.step,
        {
            f"{name}:{key}": value
            for name, result in evaluations.items()
            for key, value in Evaluation.from_dict(result).metrics.items()
        },
        "evaluate",
    )

    final = history[-1]
    extra: dict[str, Any] = {}
    if world.distributed:
        extra["distributed"] = {
            "world_size": world.size,
            "global_batch_size": config.data.batch_size * world.size,
            "evaluated_by": "rank 0",
        }
    report = session.finalize(
        {
            "metric": asdict(metric),
            "metrics": {k: v for k, v in final.items() if k.startswith("test_")},
            "evaluations": evaluations,
            "history": history,
            "steps_per_epoch": clock.steps_per_epoch,
            "skipped_steps": session.scaler.skipped_steps,
            "train_time_s": times["train_s"],
            "train_cpu_s": times["train_cpu_s"],
            "wall_time_s": time.perf_counter() - started,
            "seed": config.train.seed,
            "recipe_config": recipe.to_dict(),
            **extra,
        }
    )
    atomic_write_json(report, out / REPORT)
    runlog.finish(report)
    return report


class NonFiniteLoss(CompressorError):
    """The training loss stopped being a finite number: the run failed at ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(
            f"the training loss is not finite (NaN or infinite) at step {step}; the run stopped "
            "and the last checkpoint before it is intact (train.nonfinite: skip skips such steps)"
        )
        self.step = step


def format_metric(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"

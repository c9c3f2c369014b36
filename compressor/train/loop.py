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

from compressor.contract.data import Data, DatasetBuilder, DataSplits
from compressor.contract.errors import CompressorError, ConfigError
from compressor.contract.files import atomic_save, atomic_write_json, load_checkpoint
from compressor.contract.task import Task, to_device
from compressor.engine.session import Session
from compressor.host.manager import Plugins, default_plugins
from compressor.recipe.schema import Recipe
from compressor.train.batches import Batches, LoaderSettings, batches_per_epoch, sample_seed
from compressor.train.context import RunContext
from compressor.train.progress import Progress

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


def require_sections(recipe: Recipe) -> None:
    """``compressor run`` needs ``model:`` and ``data:`` (recipes for your own loop do not)."""
    for section in ("model", "data"):
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


def steps_per_epoch(
    train_size: int, batch_size: int, accumulate: int = 1, drop_last: bool = False
) -> int:
    """Optimizer steps per epoch: micro-batches per epoch over ``accumulate``, rounded up."""
    return math.ceil(batches_per_epoch(train_size, batch_size, drop_last) / accumulate)


def prepare(recipe: Recipe, plugins: Plugins | None = None, *, with_data: bool = True) -> Prepared:
    """Build data, task, model and session; without data only the shapes are used (validate,
    explain), and the run context builds the data when first asked."""
    plugins = plugins or default_plugins()
    require_sections(recipe)
    registries = plugins.registries
    config = recipe.config
    torch.manual_seed(config.train.seed)
    dataset = registries.datasets.build(config.data)
    task = build_task(recipe, dataset, plugins)
    data = dataset.build() if with_data else None
    info = data.info if data is not None else dataset.info()
    train_size = _train_size(data) if data is not None else dataset.train_size()
    model = registries.models.build(config.model).build(info).to(config.train.device)
    if isinstance(data, DataSplits) and config.train.device != "cpu":
        data = data.to(config.train.device)
    settings = LoaderSettings.of(config.data)

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
            train_size, settings.batch_size, config.train.accumulate, settings.drop_last
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
    return Prepared(data, model, session, task, context)


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
    """What must match to resume: the recipe except ``train.max_steps`` (how far to go)."""
    data = recipe.to_dict()
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
) -> dict[str, Any]:
    """Train with the recipe, evaluate, write ``report.json``; returns the report."""
    out = Path(out_dir)
    checkpoint_path = out / CHECKPOINT
    if not resume and not overwrite and (checkpoint_path.exists() or (out / REPORT).exists()):
        raise CompressorError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    started = time.perf_counter()
    plugins = plugins or default_plugins()
    prepared = prepare(recipe, plugins)
    model, session, task, context = (
        prepared.model,
        prepared.session,
        prepared.task,
        prepared.context,
    )
    config = recipe.config
    optimizer = session.optimizer()
    history: list[dict[str, Any]] = []
    metric = task.metric

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
        model.load_state_dict(state["model"])
        session.load_state_dict(state["session"])
        history = list(state["history"])

    clock = session.clock
    last_step = min(clock.total_steps, config.train.max_steps or clock.total_steps)
    eval_every = max(1, clock.steps(config.train.eval_every))
    checkpoint_every = clock.steps(config.train.checkpoint_every, default=0)
    device = torch.device(config.train.device)
    pinned = config.data.pin_memory
    steps = StepBatches(context.batches, clock.steps_per_epoch, config.train.accumulate)
    prepares = type(task).prepare is not Task.prepare
    precision = autocast(config.train.precision, config.train.device)

    def save_checkpoint() -> None:
        atomic_save(
            {
                "model": model.state_dict(),
                "session": session.state_dict(),
                "history": history,
                "resume_key": resume_key(recipe),
                "recipe": recipe.to_dict(),
            },
            checkpoint_path,
        )

    def evaluate(train_loss: float | None) -> dict[str, Any]:
        row = {
            "step": session.step,
            "epoch": round(clock.epoch_of(session.step), 4),
            "train_loss": train_loss,
            **test_metrics(),
            "sparsity": session.sparsity()["global"],
        }
        history.append(row)
        return row

    def micro_batches(step: int) -> list[Any]:
        loaded = steps.of(step)
        if prepares:  # drawn once per step: both passes of SAM/CrAM see the same batch
            loaded = [
                task.prepare(
                    b, torch.Generator().manual_seed(sample_seed(config.train.seed, step, i))
                )
                for i, b in enumerate(loaded)
            ]
        return loaded

    running_loss: torch.Tensor | float = 0.0  # summed on the device: no sync per step
    running_count = 0
    train_started = time.perf_counter()
    with Progress(recipe.name, total=last_step, start=session.step, enabled=progress) as bar:
        while session.step < last_step:
            micro = micro_batches(session.step)
            model.train()

            def closure(micro: list[Any] = micro) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                total: torch.Tensor | float = 0.0
                for i, cpu_batch in enumerate(micro):
                    batch = to_device(cpu_batch, device, non_blocking=pinned)
                    with precision:
                        loss = task.loss(task.forward(model, batch), batch)
                    if len(micro) > 1:
                        loss = loss / len(micro)
                    if i == 0:
                        loss = loss + session.penalty()
                    session.scale_loss(loss).backward()
                    total = loss if len(micro) == 1 else total + loss.detach()
                return total  # type: ignore[return-value]

            loss = optimizer.step(closure)
            session.step_end(loss)
            running_loss = running_loss + loss.detach()
            running_count += 1
            if on_step is not None:
                on_step(session)
            if session.step % config.train.log_every == 0 or session.step == last_step:
                bar.update(
                    session.step,
                    epoch=clock.epoch_of(session.step),
                    loss=float(running_loss) / running_count,
                )
            if session.step % eval_every == 0 or session.step == last_step:
                row = evaluate(float(running_loss) / max(running_count, 1))
                running_loss, running_count = 0.0, 0
                bar.log(
                    f"step {row['step']} (epoch {row['epoch']:.2f}): {metric.title} "
                    f"{format_metric(row[f'test_{metric.name}'], metric.percent)}, "
                    f"sparsity {row['sparsity']:.4f}"
                )
            if checkpoint_every and session.step % checkpoint_every == 0:
                save_checkpoint()
    train_time = time.perf_counter() - train_started
    save_checkpoint()
    atomic_save(model.state_dict(), out / MODEL)

    if not history or history[-1]["step"] != session.step:
        evaluate(None)
    evaluations: dict[str, Any] = {}
    for name, evaluator_config in config.evaluate:
        if evaluator_config is not None:
            evaluator = plugins.registries.evaluators.build(evaluator_config)
            evaluations[name] = evaluator.run(context, model).to_dict()

    final = history[-1]
    report = session.finalize(
        {
            "metric": asdict(metric),
            "metrics": {k: v for k, v in final.items() if k.startswith("test_")},
            "evaluations": evaluations,
            "history": history,
            "steps_per_epoch": clock.steps_per_epoch,
            "skipped_steps": session.scaler.skipped_steps,
            "train_time_s": train_time,
            "wall_time_s": time.perf_counter() - started,
            "seed": config.train.seed,
            "recipe_config": recipe.to_dict(),
        }
    )
    atomic_write_json(report, out / REPORT)
    return report


def format_metric(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}%" if percent else f"{value:.4g}"

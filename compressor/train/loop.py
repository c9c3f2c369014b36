"""The built-in training loop behind ``compressor run``: short enough to read in one sitting.

It does what a user's own loop would do with a :class:`Session`, plus data shuffling that is a
pure function of (seed, epoch) so a resumed run sees exactly the batches it would have seen,
periodic evaluation, atomic checkpoints, and the run report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressor.contract.data import DataSplits
from compressor.contract.errors import CompressorError, ConfigError
from compressor.contract.files import atomic_save, atomic_write_json, load_checkpoint
from compressor.engine.session import Session
from compressor.host.manager import Plugins, default_plugins
from compressor.recipe.schema import Recipe
from compressor.train.context import RunContext
from compressor.train.metrics import accuracy
from compressor.train.progress import Progress

CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"
MODEL = "model.pt"


@dataclass
class Prepared:
    """Everything a run needs, built from a recipe."""

    data: DataSplits | None
    model: nn.Module
    session: Session


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return max(1, math.ceil(train_size / batch_size))


def prepare(recipe: Recipe, plugins: Plugins | None = None, *, with_data: bool = True) -> Prepared:
    """Build data, model and session; without data only the shapes are used (validate, explain)."""
    plugins = plugins or default_plugins()
    registries = plugins.registries
    config = recipe.config
    torch.manual_seed(config.train.seed)
    dataset = registries.datasets.build(config.data)
    data = dataset.build() if with_data else None
    info = data.info if data is not None else dataset.info()
    train_size = len(data.train_x) if data is not None else dataset.train_size()
    model = registries.models.build(config.model).build(info).to(config.train.device)
    if data is not None and config.train.device != "cpu":
        data = _to_device(data, config.train.device)
    session = Session(
        model,
        recipe,
        steps_per_epoch=steps_per_epoch(train_size, config.data.batch_size),
        plugins=plugins,
    )
    for name, evaluator_config in config.evaluate:
        if evaluator_config is not None:
            evaluator = registries.evaluators.build(evaluator_config)
            try:
                evaluator.check(session)
            except ConfigError as exc:
                raise recipe.error(("evaluate", name, *exc.loc), exc.message) from None
    return Prepared(data, model, session)


def run_context(
    recipe: Recipe,
    session: Session,
    data: DataSplits | Callable[[], DataSplits],
    plugins: Plugins,
) -> RunContext:
    """The evaluation context of a run: its session, data and what rebuilds its model."""
    config = recipe.config
    return RunContext(
        session,
        data,
        eval_batch_size=config.data.eval_batch_size,
        model_spec=config.model.model_dump(mode="json"),
        data_info=plugins.registries.datasets.build(config.data).info(),
    )


def _to_device(data: DataSplits, device: str) -> DataSplits:
    return DataSplits(
        data.train_x.to(device),
        data.train_y.to(device),
        data.test_x.to(device),
        data.test_y.to(device),
        data.info,
    )


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


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
    model, session, data = prepared.model, prepared.session, prepared.data
    assert data is not None
    config = recipe.config
    optimizer = session.optimizer()
    history: list[dict[str, Any]] = []

    def test_metrics() -> dict[str, float]:
        acc, loss = accuracy(model, data.test_x, data.test_y, config.data.eval_batch_size)
        return {"test_accuracy": acc, "test_loss": loss}

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
    batch_size = config.data.batch_size
    n = len(data.train_x)

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
        acc, loss = accuracy(model, data.test_x, data.test_y, config.data.eval_batch_size)
        row = {
            "step": session.step,
            "epoch": round(clock.epoch_of(session.step), 4),
            "train_loss": train_loss,
            "test_accuracy": acc,
            "test_loss": loss,
            "sparsity": session.sparsity()["global"],
        }
        history.append(row)
        return row

    order = epoch_order(config.train.seed, session.step // clock.steps_per_epoch, n)
    running_loss: torch.Tensor | float = 0.0  # summed on the device: no sync per step
    running_count = 0
    train_started = time.perf_counter()
    with Progress(recipe.name, total=last_step, start=session.step, enabled=progress) as bar:
        while session.step < last_step:
            epoch, index = divmod(session.step, clock.steps_per_epoch)
            if index == 0:
                order = epoch_order(config.train.seed, epoch, n)
            batch = order[index * batch_size : (index + 1) * batch_size]
            x, y = data.train_x[batch], data.train_y[batch]
            model.train()

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y) + session.penalty()
                loss.backward()
                return loss

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
                    f"step {row['step']} (epoch {row['epoch']:.2f}): test accuracy "
                    f"{100 * row['test_accuracy']:.2f}%, sparsity {row['sparsity']:.4f}"
                )
            if checkpoint_every and session.step % checkpoint_every == 0:
                save_checkpoint()
    train_time = time.perf_counter() - train_started
    save_checkpoint()
    atomic_save(model.state_dict(), out / MODEL)

    if not history or history[-1]["step"] != session.step:
        evaluate(None)
    context = run_context(recipe, session, data, plugins)
    evaluations: dict[str, Any] = {}
    for name, evaluator_config in config.evaluate:
        if evaluator_config is not None:
            evaluator = plugins.registries.evaluators.build(evaluator_config)
            evaluations[name] = evaluator.run(context, model).to_dict()

    final = history[-1]
    report = session.finalize(
        {
            "metric": asdict(context.metric),
            "metrics": {"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"]},
            "evaluations": evaluations,
            "history": history,
            "steps_per_epoch": clock.steps_per_epoch,
            "train_time_s": train_time,
            "wall_time_s": time.perf_counter() - started,
            "seed": config.train.seed,
            "recipe_config": recipe.to_dict(),
        }
    )
    atomic_write_json(report, out / REPORT)
    return report

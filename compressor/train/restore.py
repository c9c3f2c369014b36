"""Rebuild a finished run from its folder: recipe, trained weights, session state, data."""

from __future__ import annotations

from pathlib import Path

from compressor.contract.errors import InputError
from compressor.host.manager import Plugins, load_plugins
from compressor.kit.files import load_checkpoint
from compressor.recipe.schema import OUTCOME_NEUTRAL, validate_source
from compressor.recipe.source import Source
from compressor.train.context import RunContext
from compressor.train.loop import CHECKPOINT, prepare


def restore_run(run_dir: str | Path, plugins: Plugins | None = None) -> RunContext:
    """The run context of the finished run in ``run_dir`` (data built on first use)."""
    plugins = plugins or load_plugins()
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder: give the folder of a finished run")
    if not path.exists():
        raise InputError(f"{path} not found: is {run_dir} a run folder?")
    state = load_checkpoint(path)
    # where the run logged is no part of it: its loggers' plugins need not be loaded now
    data = {k: v for k, v in state["recipe"].items() if k not in OUTCOME_NEUTRAL}
    recipe = validate_source(Source(str(path), data), plugins.registries)
    # the shapes the data gave the model, as recorded (older checkpoints: ask the dataset)
    prepared = prepare(recipe, plugins, with_data=False, known=state.get("data"))
    prepared.model.load_state_dict(state["model"])
    prepared.session.optimizer()
    prepared.session.load_state_dict(state["session"])
    return prepared.context

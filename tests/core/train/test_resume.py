"""Checkpoint and resume: N steps + resume + N steps == 2N steps straight (CPU, exact)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor.contract.errors import CompressorError
from compressor.host.manager import Plugins
from compressor.kit.files import load_checkpoint as load
from compressor.train.loop import run
from tests.conftest import TINY_RECIPE, make_recipe

GMP = TINY_RECIPE.replace("train: {epochs: 2", "train: {epochs: 3") + (
    "lr_schedule: {kind: cosine, warmup: 2}\n"
    "modifiers:\n  - type: gmp\n    schedule: {kind: cubic, final: 0.75, start: 1, end: 2ep, every: 2}\n"
)


def _run(plugins: Plugins, out: Path, max_steps: int, *, resume: bool = False) -> dict:  # type: ignore[type-arg]
    recipe = make_recipe(GMP.replace("seed: 0,", f"seed: 0, max_steps: {max_steps},"), plugins)
    return run(recipe, out, plugins=plugins, resume=resume, progress=False)


def test_resume_continues_exactly(plugins: Plugins, tmp_path: Path) -> None:
    _run(plugins, tmp_path / "straight", 10)
    _run(plugins, tmp_path / "split", 5)
    _run(plugins, tmp_path / "split", 10, resume=True)
    a, b = load(tmp_path / "straight" / "checkpoint.pt"), load(tmp_path / "split" / "checkpoint.pt")
    assert a["session"]["step"] == b["session"]["step"] == 10
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["session"]["masks"].keys() == b["session"]["masks"].keys() != set()
    for key in a["session"]["masks"]:
        assert torch.equal(a["session"]["masks"][key], b["session"]["masks"][key])
    state_a, state_b = a["session"]["optimizer"]["state"], b["session"]["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key]["momentum_buffer"], state_b[key]["momentum_buffer"])
    assert a["session"]["optimizer"]["param_groups"] == b["session"]["optimizer"]["param_groups"]
    assert a["session"]["modifiers"] == b["session"]["modifiers"]


def test_a_second_run_into_the_same_folder_is_refused(plugins: Plugins, tmp_path: Path) -> None:
    _run(plugins, tmp_path / "r", 2)
    before = (tmp_path / "r" / "report.json").read_bytes()
    with pytest.raises(CompressorError, match="already holds a run"):
        _run(plugins, tmp_path / "r", 2)
    assert (tmp_path / "r" / "report.json").read_bytes() == before


def test_resume_with_another_recipe_is_refused(plugins: Plugins, tmp_path: Path) -> None:
    _run(plugins, tmp_path / "r", 2)
    other = make_recipe(GMP.replace("final: 0.75", "final: 0.5"), plugins)
    with pytest.raises(CompressorError, match="different recipe"):
        run(other, tmp_path / "r", plugins=plugins, resume=True, progress=False)


def test_failed_run_leaves_earlier_checkpoint_intact(plugins: Plugins, tmp_path: Path) -> None:
    _run(plugins, tmp_path / "r", 4)
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()

    def explode(session: object) -> None:
        raise RuntimeError("boom")

    recipe = make_recipe(GMP.replace("seed: 0,", "seed: 0, max_steps: 8,"), plugins)
    with pytest.raises(RuntimeError, match="boom"):
        run(recipe, tmp_path / "r", plugins=plugins, resume=True, progress=False, on_step=explode)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_init_from_starts_from_saved_weights(plugins: Plugins, tmp_path: Path) -> None:
    _run(plugins, tmp_path / "dense", 4)
    dense = load(tmp_path / "dense" / "model.pt")
    template = str(tmp_path / "d{seed}" / "model.pt")
    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "model.pt").write_bytes((tmp_path / "dense" / "model.pt").read_bytes())
    recipe = make_recipe(
        TINY_RECIPE.replace("seed: 0,", f"seed: 0, max_steps: 1, init_from: '{template}',"), plugins
    )
    seen: list[dict[str, torch.Tensor]] = []
    run(
        recipe,
        tmp_path / "ft",
        plugins=plugins,
        progress=False,
        on_step=lambda s: seen.append({k: v.clone() for k, v in s.model.state_dict().items()}),
    )
    fresh = make_recipe(TINY_RECIPE.replace("seed: 0,", "seed: 0, max_steps: 1,"), plugins)
    other: list[dict[str, torch.Tensor]] = []
    run(
        fresh,
        tmp_path / "scratch",
        plugins=plugins,
        progress=False,
        on_step=lambda s: other.append({k: v.clone() for k, v in s.model.state_dict().items()}),
    )
    # one SGD step from the loaded weights stays close to them, unlike a fresh initialisation
    distance = sum(float((seen[0][k] - dense[k]).abs().sum()) for k in dense)
    fresh_distance = sum(float((other[0][k] - dense[k]).abs().sum()) for k in dense)
    assert distance < fresh_distance / 5
    missing = make_recipe(
        TINY_RECIPE.replace("seed: 0,", "seed: 0, init_from: nowhere.pt,"), plugins
    )
    with pytest.raises(CompressorError, match="nowhere.pt does not exist"):
        run(missing, tmp_path / "x", plugins=plugins, progress=False)

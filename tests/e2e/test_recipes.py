"""Every recipe in recipes/ validates and runs a few steps (data shrunk for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.host.manager import Plugins
from compressor.recipe.schema import apply_overrides, validate_source
from compressor.recipe.source import read_yaml
from compressor.train.loop import run
from tests.support import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_smoke_runs(path: Path, plugins: Plugins, tmp_path: Path) -> None:
    source = read_yaml(path)
    recipe = validate_source(source, plugins.registries)  # the shipped file, unchanged
    smoke = ["train.max_steps=3"]
    if "samples" in source.data.get("data", {}):
        smoke.append("data.samples=1000")
    source.data = apply_overrides(source.data, smoke)
    recipe = validate_source(source, plugins.registries)
    report = run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    assert report["steps"] == 3
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0

"""Every recipe in recipes/ validates and runs a few steps (data shrunk for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.host.manager import Plugins
from compressor.recipe.schema import apply_overrides, validate_source
from compressor.recipe.source import read_yaml
from compressor.train.loop import run
from tests.support import ROOT
from tests.support.vision import torchvision_missing, write_imagefolder

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
VISION = {
    "imagefolder",
    "cifar10",
}  # datasets of plugins/zoo/vision.py: smoke-run needs torchvision


def _marked(path: Path) -> object:
    vision = read_yaml(path).data.get("data", {}).get("name") in VISION
    return pytest.param(path, marks=[pytest.mark.vision] if vision else [])


def test_there_are_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("path", [_marked(p) for p in RECIPES], ids=lambda p: p.name)
def test_recipe_validates_and_smoke_runs(path: Path, plugins: Plugins, tmp_path: Path) -> None:
    source = read_yaml(path)
    recipe = validate_source(source, plugins.registries)  # the shipped file, unchanged
    smoke = ["train.max_steps=3"]
    data = source.data.get("data", {})
    if "samples" in data:
        smoke.append("data.samples=1000")
    if data.get("name") == "imagefolder":  # the user's folder: a tiny generated one instead
        missing = torchvision_missing()
        if missing:
            pytest.skip(f"validated; smoke run {missing}")
        root = write_imagefolder(tmp_path / "images")
        smoke += [f"data.root={root}", "data.image_size=32", "data.batch_size=8"]
        smoke.append("data.num_workers=0")
    source.data = apply_overrides(source.data, smoke)
    recipe = validate_source(source, plugins.registries)
    report = run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    assert report["steps"] == 3
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0

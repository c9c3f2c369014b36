"""The SGD/SAM/CrAM example recipes validate and take a training step on their model."""

from __future__ import annotations

import pytest
import torch

from compressor import Session, load_recipe
from compressor.host.manager import Plugins
from tests.support import ROOT
from tests.support.cram import make_closure

RECIPES = ROOT / "recipes"
NAMES = ["sgd-mnist1d", "sam-mnist1d", "cram-mnist1d", "cram-plus-multi-mnist1d"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_and_steps(name: str, plugins: Plugins) -> None:
    torch.manual_seed(0)
    recipe = load_recipe(RECIPES / f"{name}.yaml", registries=plugins.registries)
    registries = plugins.registries
    data = registries.datasets.build(recipe.config.data)
    model = registries.models.build(recipe.config.model).build(data.info())
    session = Session(model, recipe, steps_per_epoch=125, plugins=plugins)
    optimizer = session.optimizer()
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = optimizer.step(make_closure(model, optimizer, x, y))
    session.step_end(loss.detach())
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert recipe.config.evaluate.oneshot.sparsities == [0.5, 0.7, 0.8, 0.9, 0.95]


def test_docs_example_is_the_shipped_recipe() -> None:
    """docs/methods/cram.md's first YAML block validates and equals the recipe file."""
    import yaml

    doc = (RECIPES.parent / "docs" / "methods" / "cram.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    shipped = yaml.safe_load((RECIPES / "cram-plus-multi-mnist1d.yaml").read_text())
    assert yaml.safe_load(block) == shipped

"""Shared fixtures: tiny models and recipes, one thread, built-in plugins only."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor.host.manager import Plugins, load_plugins  # noqa: E402
from compressor.recipe.schema import Recipe, recipe_from_text  # noqa: E402

TINY_RECIPE = """\
version: 1
name: tiny
model: {name: mlp, hidden: [16]}
data: {name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3, batch_size: 16}
train: {epochs: 2, seed: 0, eval_every: 1ep, checkpoint_every: 1ep}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-3}
"""


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    return load_plugins(autoload=False)


def make_recipe(text: str, plugins: Plugins | None = None) -> Recipe:
    return recipe_from_text(
        text, "test.yaml", registries=(plugins or load_plugins(autoload=False)).registries
    )


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep generated datasets out of the user's cache, but share them across tests."""
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))

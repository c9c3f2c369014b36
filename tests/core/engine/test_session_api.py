"""The public Session API as README.md documents it: plugins, base=, and the log: section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor import Session, load_recipe
from compressor.contract.errors import RecipeError
from compressor.host.manager import load_plugins

RECIPE = """\
version: 1
name: own-loop
model: {name: mlp}
data: {name: synthetic}
modifiers:
  - {type: halve, include: ['0.weight']}
"""
PLUGIN = """\
from typing import Literal
import torch
from compressor.plugin_api import Modifier, SelectionConfig, hookimpl
class Halve(Modifier):
    '''Masks the first half of each selected weight's rows at step 0.'''
    class Config(SelectionConfig):
        type: Literal['halve']
    def update(self, context):
        if context.step == 0:
            weight = context.model.get_parameter('0.weight')
            mask = torch.ones_like(weight)
            mask[: weight.shape[0] // 2] = 0
            context.masks.set('0.weight', mask)
@hookimpl
def register_modifiers(register):
    register(Halve)
"""


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_a_plugin_file_and_a_base_optimizer_in_a_session(tmp_path: Path) -> None:
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "r.yaml").write_text(RECIPE)
    plugins = load_plugins([tmp_path / "my_plugin.py"], autoload=False)
    recipe = load_recipe(tmp_path / "r.yaml", registries=plugins.registries)
    net = model()
    session = Session(net, recipe, steps_per_epoch=2, plugins=plugins)
    optimizer = session.optimizer(base=torch.optim.SGD(net.parameters(), lr=0.1))
    x = torch.randn(8, 4)
    for _ in range(2):
        optimizer.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        session.step_end(loss)
    assert torch.count_nonzero(net[0].weight[:2]) == 0  # masked rows stay zero
    assert session.finalize()["sparsity"]["compressed"]["sparsity"] == 0.5


def test_a_session_refuses_the_log_section_it_would_not_run(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "version: 1\nname: own-loop\nmodel: {name: mlp}\ndata: {name: synthetic}\n"
        "log: {to: [{name: csv}]}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"r\.yaml:5:\d+: log: a Session in your own loop"):
        Session(model(), recipe, steps_per_epoch=2)

"""Calibration data for operators: the session's (given by the loop or the user) and the run
context's are the same batches, and an operator built through a context is bound to it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.host.manager import Plugins
from compressor.plugin_api import Operator, OperatorConfig
from compressor.train.loop import prepare
from tests.conftest import TINY_RECIPE, make_recipe


def test_a_session_has_calibration_only_when_given(plugins: Plugins) -> None:
    recipe = make_recipe("name: own-loop\noptimizer: {name: sgd}\n", plugins)
    model = nn.Linear(4, 2)
    assert Session(model, recipe, steps_per_epoch=1).calibration_batches(8, 0, 1, 8) is None
    asked = []

    def calibration(*args: int) -> Any:
        asked.append(args)
        return iter([torch.ones(2, 4)])

    session = Session(model, recipe, steps_per_epoch=1, calibration=calibration)
    batches = session.calibration_batches(8, 3, 2, 4)
    assert asked == [(8, 3, 2, 4)]
    assert torch.equal(next(iter(batches)), torch.ones(2, 4))  # type: ignore[arg-type]
    assert torch.equal(session.forward(model, torch.ones(1, 4)), model(torch.ones(1, 4)))


def test_the_loops_session_calibrates_on_the_run_contexts_data(plugins: Plugins) -> None:
    prepared = prepare(make_recipe(TINY_RECIPE, plugins), plugins, with_data=False)
    from_session = list(prepared.session.calibration_batches(20, 1, 3, 8))  # type: ignore[arg-type]
    from_context = list(prepared.context.calibration_batches(20, 1, 3, 8))
    assert len(from_session) == 3
    assert all(torch.equal(a, b) for a, b in zip(from_session, from_context, strict=True))


class Recorder(Operator):
    class Config(OperatorConfig):
        pass

    def bind(self, model: nn.Module, targets: Any, context: Any = None) -> None:
        super().bind(model, targets, context)
        self.bound_to = context


def test_operators_built_through_a_context_are_bound_to_it(
    plugins: Plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare(make_recipe(TINY_RECIPE, plugins), plugins, with_data=False)
    session, context = prepared.session, prepared.context
    monkeypatch.setattr(session.registries.operators, "build", Recorder)
    config = Recorder.Config()
    built_by_context = context.build_operator(config)
    built_by_session = session.build_operator(config)
    assert built_by_context.bound_to is context  # type: ignore[attr-defined]
    assert built_by_session.bound_to is session  # type: ignore[attr-defined]

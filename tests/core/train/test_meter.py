"""The loss meter: exact means since the last evaluation and the last logged row, the first
non-finite step, and a state that a resumed run continues from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.engine.session import Session
from compressor.train.distributed import World
from compressor.train.meter import LossMeter, NonFiniteLoss
from tests.conftest import make_recipe


@pytest.fixture
def session() -> Session:
    recipe = make_recipe("version: 1\nname: m\noptimizer: {name: sgd, lr: 0.1}\n")
    return Session(nn.Linear(2, 2), recipe, steps_per_epoch=4)


def test_means_since_the_evaluation_and_since_the_row(session: Session) -> None:
    meter = LossMeter(World(), torch.device("cpu"))
    assert meter.evaluation_loss() is None and meter.take_logged() is None
    meter.add(torch.tensor(1.0), 0, logged=True)
    meter.add(torch.tensor(2.0), 1, logged=False)
    meter.add(torch.tensor(4.5), 2, logged=True)
    assert meter.evaluation_loss() == 7.5 / 3 and meter.running() == 7.5 / 3
    assert meter.take_logged() == 5.5 / 2
    assert meter.take_logged() is None  # taken: the next row starts afresh
    meter.reset_evaluation()
    assert meter.evaluation_loss() is None and meter.running() == 0.0
    meter.check(session)


def test_the_first_non_finite_step_is_named_at_the_check(session: Session) -> None:
    meter = LossMeter(World(), torch.device("cpu"))
    meter.add(torch.tensor(1.0), 0, logged=False)
    meter.add(torch.tensor(float("nan")), 1, logged=False)
    meter.add(torch.tensor(float("inf")), 2, logged=False)
    with pytest.raises(NonFiniteLoss, match="at step 2") as error:
        meter.check(session)
    assert error.value.step == 2


def test_a_resumed_meter_continues_the_sums_and_the_clocks() -> None:
    meter = LossMeter(World(), torch.device("cpu"))
    meter.add(torch.tensor(1.25), 0, logged=True)
    meter.add(torch.tensor(2.0), 1, logged=False)
    state = meter.state_dict()
    assert {k: state[k] for k in ("loss_sum", "loss_count", "log_loss_sum", "log_loss_count")} == {
        "loss_sum": 3.25,
        "loss_count": 2,
        "log_loss_sum": 1.25,
        "log_loss_count": 1,
    }
    resumed = LossMeter(World(), torch.device("cpu"))
    resumed.load_state_dict({**state, "train_s": 100.0, "train_cpu_s": 50.0})
    resumed.add(torch.tensor(0.75), 2, logged=True)
    assert resumed.evaluation_loss() == 4.0 / 3 and resumed.take_logged() == 2.0 / 2
    elapsed = resumed.elapsed()
    assert elapsed["train_s"] >= 100.0 and elapsed["train_cpu_s"] >= 50.0

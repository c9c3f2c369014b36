"""A Session in a process group registers the exit guard (issue 25: a rank aborted at
interpreter exit while gloo still held a collective launched inside ``backward()``);
``bench/torchrun_stress.py`` measures the aborts themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from compressor import Session
from compressor.engine import distributed_exit
from compressor.recipe.schema import recipe_from_text

RECIPE = "name: own-loop\ntrain: {epochs: 1}\noptimizer: {name: sgd, lr: 0.1}\n"


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], Any]]:
    """The exit handlers registered from now on (none for real)."""
    handlers: list[Callable[[], Any]] = []

    def unregister(handler: Callable[[], Any]) -> None:
        handlers[:] = [h for h in handlers if h is not handler]

    monkeypatch.setattr(distributed_exit.atexit, "register", handlers.append)
    monkeypatch.setattr(distributed_exit.atexit, "unregister", unregister)
    return handlers


@pytest.fixture
def group_of_one(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def session() -> Session:
    return Session(torch.nn.Linear(4, 2), recipe_from_text(RECIPE), steps_per_epoch=1)


def test_no_guard_outside_a_process_group(registered: list[Callable[[], Any]]) -> None:
    session()
    assert registered == []


def test_a_session_in_a_process_group_registers_the_guard_once(
    registered: list[Callable[[], Any]], group_of_one: None
) -> None:
    session()
    session()
    assert registered == [distributed_exit.settle_before_exit]


def test_the_guard_yields_to_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(distributed_exit.time, "sleep", slept.append)
    distributed_exit.settle_before_exit()
    assert slept == [distributed_exit.SETTLE_S] and distributed_exit.SETTLE_S > 0

"""How a run leaves the process group (issue 25: a rank aborted at interpreter exit).

A finished rank waits for the others at a barrier, frees what still refers to the group and
only then destroys it; a failed rank destroys it at once (it cannot wait for peers)."""

from __future__ import annotations

from typing import Any

import pytest

from compressor.train import distributed
from compressor.train.distributed import World, process_group


class FakeDist:
    """Records the calls ``process_group`` makes on ``torch.distributed``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_initialized(self) -> bool:
        return False

    def init_process_group(self, backend: str, **_: Any) -> None:
        self.calls.append(f"init {backend}")

    def barrier(self) -> None:
        self.calls.append("barrier")

    def destroy_process_group(self) -> None:
        self.calls.append("destroy")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDist:
    fake = FakeDist()
    monkeypatch.setattr(distributed, "dist", fake)
    monkeypatch.setattr(distributed.gc, "collect", lambda: fake.calls.append("gc") or 0)
    return fake


def test_a_finished_rank_waits_for_all_then_frees_then_destroys(fake: FakeDist) -> None:
    with process_group(World(1, 2), "cpu"):
        fake.calls.append("train")
    assert fake.calls == ["init gloo", "train", "barrier", "gc", "destroy"]


def test_a_failed_rank_destroys_without_waiting(fake: FakeDist) -> None:
    with pytest.raises(RuntimeError, match="boom"), process_group(World(0, 2), "cpu"):
        raise RuntimeError("boom")
    assert fake.calls == ["init gloo", "destroy"]


def test_one_process_joins_no_group(fake: FakeDist) -> None:
    with process_group(World(), "cpu"):
        pass
    assert fake.calls == []

"""What every integration shares: optional imports and the one-closure step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from compressor.contract.errors import CompressorError
from compressor.integrations._common import require, step_closure
from tests.support import ROOT


def test_a_missing_extra_is_one_line_naming_it() -> None:
    with pytest.raises(CompressorError, match=r"pip install 'compressor\[hf,accelerate\]'"):
        require("no_such_package_for_this_test", "hf,accelerate", "an integration")


def test_importing_the_package_imports_no_framework() -> None:
    code = (
        "import sys, compressor.integrations; "
        "print([m for m in ('transformers', 'lightning', 'accelerate') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_step_closure_runs_every_micro_batch_and_syncs_only_the_last() -> None:
    events: list[str] = []

    class NoSync:
        def __enter__(self) -> None:
            events.append("no_sync")

        def __exit__(self, *exc: object) -> None:
            events.append("sync again")

    def backward(batch: int) -> torch.Tensor:
        events.append(f"batch {batch}")
        return torch.tensor(float(batch))

    closure = step_closure([1, 2, 3], lambda: events.append("zero_grad"), backward, NoSync)
    assert float(closure()) == 6.0
    assert events == [
        "zero_grad",
        "no_sync", "batch 1", "sync again",
        "no_sync", "batch 2", "sync again",
        "batch 3",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one micro-batch"):
        step_closure([], lambda: None, backward, NoSync)

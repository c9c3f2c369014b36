"""The benchmark scripts run (smoke size) and report exact results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.parametrize("script", ["mask_speed", "overhead", "step_cost"])
def test_bench_smoke(script: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # a table was printed
    if script == "mask_speed":
        data = json.loads((ROOT / "bench" / "results" / "mask_speed-smoke.json").read_text())
        assert data["exact"] is True

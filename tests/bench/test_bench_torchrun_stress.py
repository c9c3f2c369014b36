"""bench/torchrun_stress.py --smoke: two launches of each kind of two-process torchrun job.

Checks the plumbing (every kind launches, exits 0 and is counted; the JSON is written), not the
abort rate: that needs ≥ 50 launches and is run by hand (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_torchrun_stress_smoke(tmp_path: Path) -> None:
    result = tmp_path / "stress.json"
    command = [sys.executable, str(ROOT / "bench" / "torchrun_stress.py"), "--smoke"]
    command += ["--json", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads(result.read_text())
    assert payload["smoke"] is True
    assert set(payload["kinds"]) == {"run", "session", "plain"}
    for row in payload["kinds"].values():
        assert row == {"launches": 2, "nonzero": 0, "aborts": 0, "failures": []}
    assert "kind        launches  non-zero    aborts" in done.stdout

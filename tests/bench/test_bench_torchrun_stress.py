"""bench/torchrun_stress.py --smoke: two launches of each kind of two-process torchrun job.

Checks the plumbing (every kind launches and is counted, a failed launch is recorded with its
exit code and output, the script's exit status says whether any failed; the JSON is written),
not the abort rate: that needs ≥ 50 launches and is run by hand (issue 25), and the Session +
DDP kind still aborts in a few launches out of 50, so a smoke run may record one."""

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
    payload = json.loads(result.read_text())
    assert payload["smoke"] is True
    assert set(payload["kinds"]) == {"run", "session", "plain"}
    rows = payload["kinds"].values()
    for row in rows:
        assert row["launches"] == 2
        assert row["nonzero"] == len(row["failures"]) and row["aborts"] <= row["nonzero"]
        assert all(f["code"] != 0 and f["tail"] for f in row["failures"])
    failed = sum(row["nonzero"] for row in rows)
    assert done.returncode == (1 if failed else 0), done.stdout[-3000:] + done.stderr[-3000:]
    assert failed < 6, done.stdout[-3000:]  # most launches succeed: the jobs really run
    assert "kind        launches  non-zero    aborts" in done.stdout

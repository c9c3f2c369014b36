"""bench/deploy.py --smoke: both halves of BENCHMARKS.md D at toy size (tiny CNN, one seed).

Checks the plumbing, not the numbers: the study trains and its deployment evaluation lands in
the store, the four runtimes are timed at both batch sizes, every bar gets a PASS/MISS with a
margin, and the result file is written; ``--sessions 2`` times the speed half in two processes
and judges on the median of their ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def test_deploy_smoke(tmp_path: Path) -> None:
    out, result = tmp_path / "study", tmp_path / "deploy.json"
    command = [sys.executable, str(ROOT / "bench" / "deploy.py"), "--smoke"]
    command += ["--out", str(out), "--json", str(result), "--sessions", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "FAILED" not in done.stdout, done.stdout
    payload = json.loads(result.read_text())
    assert payload["smoke"] is True
    assert payload["seeds_done"] == {"SGD": [0], "CrAM+ Multi": [0]}
    for label in ("SGD", "CrAM+ Multi"):
        row = payload["accuracy"][label]["per_seed"]["0"]
        assert 0 <= row["int8"] <= 100 and row["delta"] == row["int8"] - row["float"]
    for batch in ("batch1", "batch4"):
        assert set(payload["speed"][batch]) == {
            "torch",
            "ort_fp32",
            "ort_int8",
            "channel50_fp32",
            "channel50_int8",
            "unstructured90_fp32",
        }
    assert payload["speed"]["checks"]["fp32_relative_diff"] <= 1e-4
    params = payload["speed"]["checks"]["channel50_params"]
    assert params["pruned"] < params["dense"]  # the pruned graph is physically smaller
    assert len(payload["sessions"]) == 2  # two fresh processes; bars on the median ratio
    for key, value in payload["ratios"]["batch1"].items():
        both = sorted(one["ratios"]["batch1"][key] for one in payload["sessions"])
        assert value == pytest.approx(sum(both) / 2)
    assert "median of 2 sessions" in done.stdout
    assert len(payload["bars"]) == 7
    assert {b["status"] for b in payload["bars"]} <= {"PASS", "MISS"}
    assert "| channel50_int8 |" in done.stdout and "Bars" in done.stdout

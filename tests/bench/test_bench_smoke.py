"""bench/robustness.py --smoke: the Q study end to end at toy size (all recipes, seed 0).

Checks the plumbing, not the numbers: every recipe of bench/studies/q-protocol.yaml runs
(including the ADMM baseline started from the SGD run's weights), the tables print, every bar
gets a PASS/MISS with a margin, and the result file is written. About 10 s of CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_robustness_smoke(tmp_path: Path) -> None:
    out, result = tmp_path / "study", tmp_path / "robustness.json"
    command = [sys.executable, str(ROOT / "bench" / "robustness.py"), "--smoke"]
    command += ["--out", str(out), "--json", str(result)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "FAILED" not in done.stdout, done.stdout
    payload = json.loads(result.read_text())
    assert payload["smoke"] is True
    assert all(seeds == [0] for seeds in payload["seeds_done"].values()), payload["seeds_done"]
    assert "ADMM one-shot + FT" in payload["seeds_done"]
    assert {b["status"] for b in payload["bars"]} <= {"PASS", "MISS"}
    assert all("margin" in b for b in payload["bars"])
    assert len(payload["bars"]) == 9
    assert "| SGD | 0 |" in done.stdout and "Bars" in done.stdout
    admm = payload["admm"]["ADMM 4x4 50%+25%"]["per_seed"]["0"]
    assert admm["pruned_of_target"] == 1.0 and admm["unified_of_target"] == 1.0

    # --report-only reads the same store without training anything.
    again = subprocess.run([*command, "--report-only"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(result.read_text())["bars"] == payload["bars"]


def test_q_post_smoke(tmp_path: Path) -> None:
    """bench/q_post.py --smoke: both recipes of bench/studies/q-post.yaml at toy size, every
    one-shot target measured, and the CrAM+ · SparseGPT verdict table written."""
    out, result = tmp_path / "study", tmp_path / "q_post.json"
    command = [sys.executable, str(ROOT / "bench" / "q_post.py"), "--smoke"]
    command += ["--out", str(out), "--json", str(result), "--set", "train.max_steps=3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "FAILED" not in done.stdout, done.stdout
    payload = json.loads(result.read_text())
    assert payload["seeds_done"] == {"SGD": [0], "CrAM+ Multi": [0]}
    for training in ("SGD", "CrAM+ Multi"):
        sparsity = payload["sparsity"][training]
        assert all(row["0.9"]["n"] == 1 for row in sparsity.values())
        assert sparsity["SparseGPT"]["2:4"]["n"] == 1
        assert all(
            payload["quantization"][training][q]["n"] == 1 for q in ("rtn int4", "gptq int8")
        )
    verdicts = payload["cram_plus_sparsegpt"]
    assert len(verdicts) == 6 + 5
    assert {v["verdict"].split(" ")[0] for v in verdicts} <= {"beats"}

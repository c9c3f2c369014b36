"""kill -9 in the middle of ``compressor run``, then ``--resume``: the final weights equal an
uninterrupted run's to the last bit (GMP, CrAM+, ADMM).

A plugin pauses the run after step ``PAUSE_AT`` (between two checkpoints) and says so in a
marker file; the test then sends SIGKILL from outside, so the process dies with no chance to
clean up, exactly as ``kill -9`` would do it. Every run loads the plugin (only the first one
pauses), so the three runs are the same program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compressor.kit.files import load_checkpoint

PAUSE_AT = 6
CHECKPOINT_EVERY = 4

PAUSE = """\
import os, time
from pathlib import Path
from compressor.plugin_api import hookimpl

@hookimpl
def step_finished(context, step, loss):
    marker = os.environ.get("PAUSE_MARKER")
    if marker and step == int(os.environ["PAUSE_AT"]):
        Path(marker).write_text(str(step))
        time.sleep(600)  # killed long before
"""

BASE = f"""\
version: 1
name: killed
model: {{name: mlp, hidden: [16]}}
data: {{name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3, batch_size: 16}}
train: {{epochs: 4, seed: 0, eval_every: 1ep, checkpoint_every: {CHECKPOINT_EVERY}}}
optimizer: {{name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 1.0e-3}}
lr_schedule: {{kind: cosine, warmup: 2}}
"""

RECIPES = {
    "gmp": BASE
    + "modifiers:\n  - type: gmp\n"
    + "    schedule: {kind: cubic, final: 0.75, start: 1, end: 3ep, every: 2}\n",
    "cram-plus": BASE
    + "wrapper: {name: cram, rho: 0.05, plus: true, sparsities: [0.5, 0.7],\n"
    + "          operator: {kind: magnitude, scope: global}}\n",
    "admm": BASE
    + "modifiers:\n  - {type: admm, block: [2, 2], prune_ratio: 0.5, unify_ratio: 0.25,\n"
    + "     update_every: 2, finish_at: 10}\n",
}


def compressor_run(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "compressor.cli", "--plugin", "pause.py", "run", "recipe.yaml"]
        + ["--quiet", *args],
        cwd=folder,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PAUSE_AT": str(PAUSE_AT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finished(process: subprocess.Popen[bytes]) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_run_killed_mid_training_resumes_bit_exactly(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPES[name])
    (tmp_path / "pause.py").write_text(PAUSE)
    finished(compressor_run(tmp_path, "--out", "straight"))

    marker = tmp_path / "paused"
    monkeypatch.setenv("PAUSE_MARKER", str(marker))
    killed = compressor_run(tmp_path, "--out", "killed")
    deadline = time.monotonic() + 600
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == str(PAUSE_AT)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    out = tmp_path / "killed"
    assert not (out / "report.json").exists() and not (out / "model.pt").exists()
    assert load_checkpoint(out / "checkpoint.pt")["session"]["step"] == CHECKPOINT_EVERY

    monkeypatch.delenv("PAUSE_MARKER")
    finished(compressor_run(tmp_path, "--out", "killed", "--resume"))
    straight, resumed = (
        load_checkpoint(tmp_path / "straight" / "model.pt"),
        load_checkpoint(out / "model.pt"),
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    reports = [
        json.loads((tmp_path / run / "report.json").read_text()) for run in ("straight", "killed")
    ]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["history"] == reports[1]["history"]
    assert reports[0]["sparsity"] == reports[1]["sparsity"]

"""``compressor run`` under ``torchrun``: two CPU processes (gloo) train one run.

Every rank must end with the same weights and masks, only rank 0 writes the run folder, a
model without BatchNorm trains exactly as one process reading the same global batch, and a
run resumed under ``torchrun`` equals one that was never interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.contract.errors import CompressorError
from tests.conftest import make_recipe

ROOT = Path(__file__).resolve().parents[3]
RANK_STATE = ROOT / "tests" / "support" / "rank_state.py"

BASE = """\
version: 1
name: ddp
model: {name: mlp, hidden: [32]}
data: {name: synthetic, samples: 256, test_samples: 64, features: 8, classes: 3,
       batch_size: BATCH, drop_last: true}
train: {epochs: 3, seed: 3, eval_every: 1ep, checkpoint_every: 1ep}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
"""
# 256 training samples: global batches of 32 (2 ranks × 16) divide them evenly
GMP = """modifiers:
  - type: gmp
    operator: {kind: magnitude, scope: global}
    schedule: {kind: cubic, final: 0.75, end: 2ep, every: 3}
"""
CRAM_PLUS = """wrapper:
  name: cram
  rho: 0.05
  plus: true
  operator: {kind: magnitude, scope: global}
  sparsities: [0.5, 0.7]
"""


def write(tmp: Path, name: str, body: str, batch: int) -> Path:
    text = BASE.replace("BATCH", str(batch)) + body
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def launch(
    recipe: Path, out: Path, *, ranks: int, extra: tuple[str, ...] = (), last_step: int = -1
) -> subprocess.CompletedProcess[str]:
    states = out.parent / f"{out.name}-ranks"
    states.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COMPRESSOR_TEST_RANK_DIR": str(states),
        "COMPRESSOR_TEST_LAST_STEP": str(last_step),
    }
    cli = ["-m", "compressor.cli", "--plugin", str(RANK_STATE), "run", str(recipe),
           "--out", str(out), "--quiet", *extra]  # fmt: skip
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", *cli]  # fmt: skip
    else:
        command = [sys.executable, *cli]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rank_states(out: Path) -> list[dict[str, Any]]:
    folder = out.parent / f"{out.name}-ranks"
    return [torch.load(p) for p in sorted(folder.glob("rank*.pt"))]


STEPS = 3 * 256 // 32  # epochs × global batches of 2 × 16 per epoch


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GMP and CrAM+ on two ranks, each once (the tests below read the folders)."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = {}
    for name, body in (("gmp", GMP), ("cram_plus", CRAM_PLUS)):
        recipe = write(tmp, name, body, 16)
        out[name] = tmp / name
        launch(recipe, out[name], ranks=2, last_step=STEPS)
    return out


@pytest.mark.parametrize("method", ["gmp", "cram_plus"])
def test_every_rank_ends_with_the_same_weights_and_masks(
    runs: dict[str, Path], method: str
) -> None:
    states = rank_states(runs[method])
    assert len(states) == 2
    first, second = states
    assert first["masks"].keys() == second["masks"].keys()
    assert bool(first["masks"]) == (method == "gmp")  # CrAM+ keeps no masks: it trains dense
    for name in first["masks"]:
        assert torch.equal(first["masks"][name], second["masks"][name]), name
    for name, tensor in first["weights"].items():
        assert torch.equal(tensor, second["weights"][name]), name


@pytest.mark.parametrize("method", ["gmp", "cram_plus"])
def test_one_run_folder_written_by_rank_zero(runs: dict[str, Path], method: str) -> None:
    import json

    out = runs[method]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.pt", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["distributed"] == {
        "world_size": 2, "global_batch_size": 32, "evaluated_by": "rank 0"
    }  # fmt: skip
    assert report["steps"] == STEPS and report["steps_per_epoch"] == 8
    assert [row["step"] for row in report["history"]] == [8, 16, 24]
    sparsity = 0.75 if method == "gmp" else 0.0  # CrAM+ trains dense, compresses per step
    assert report["sparsity"]["global"] == pytest.approx(sparsity, abs=0.01)


@pytest.mark.parametrize("method", ["gmp", "cram_plus"])
def test_without_batchnorm_two_ranks_equal_one_process_with_the_global_batch(
    runs: dict[str, Path], method: str, tmp_path: Path
) -> None:
    body = GMP if method == "gmp" else CRAM_PLUS
    single = tmp_path / "single"
    launch(write(tmp_path, method, body, 32), single, ranks=1)
    one = torch.load(single / "model.pt")
    two = torch.load(runs[method] / "model.pt")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=0, atol=1e-5, msg=name)
        assert torch.equal(two[name] == 0, tensor == 0) or "bias" in name, name


def test_a_run_resumed_under_torchrun_equals_an_uninterrupted_one(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    recipe = write(tmp_path, "gmp", GMP, 16)
    out = tmp_path / "resumed"
    launch(recipe, out, ranks=2, extra=("--set", "train.max_steps=8"))
    launch(recipe, out, ranks=2, extra=("--resume",))
    resumed, straight = torch.load(out / "model.pt"), torch.load(runs["gmp"] / "model.pt")
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_resuming_with_another_number_of_processes_is_refused(
    runs: dict[str, Path], tmp_path: Path, plugins: Any
) -> None:
    import shutil

    from compressor.train.loop import run

    out = tmp_path / "copy"
    shutil.copytree(runs["gmp"], out)
    recipe = make_recipe((runs["gmp"].parent / "gmp.yaml").read_text(), plugins)
    with pytest.raises(CompressorError, match="written by 2 process"):
        run(recipe, out, plugins=plugins, resume=True)


def _differing_masks(rank: int, size: int, init: str, errors: Any) -> None:
    import torch.distributed as dist

    from compressor.train.distributed import World, check_same_masks

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        mask = torch.tensor([True, bool(rank)])  # rank 1 keeps a weight rank 0 pruned
        check_same_masks(World(rank, size), {"fc.weight": mask}, step=7)
    except CompressorError as exc:
        errors.put(str(exc))
    finally:
        dist.destroy_process_group()


def test_masks_that_differ_between_ranks_stop_the_run(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_differing_masks, args=(2, init, errors), nprocs=2, start_method="spawn")
    messages = [errors.get(), errors.get()]
    assert all("the masks differ between ranks after step 7" in m for m in messages)


def test_the_command_in_docs_distributed_runs(tmp_path: Path) -> None:
    """docs/distributed.md's command, shortened to 2 steps."""
    import re
    import shlex

    page = (ROOT / "docs" / "distributed.md").read_text()
    (line,) = re.findall(r"^torchrun .*$", page, re.M)
    argv = shlex.split(line)
    assert argv[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    argv = [str(ROOT / a) if a.startswith("recipes/") else a for a in argv]
    argv += ["--quiet", "--set", "train.max_steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout
    assert (tmp_path / "runs" / "gmp-ddp" / "report.json").is_file()

"""Failed runs are marked failed and lose nothing; files and checkpoints fail cleanly (issue 12)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from compressor.cli.main import main
from compressor.contract.errors import CompressorError
from compressor.host.manager import Plugins
from compressor.kit import files
from compressor.kit.files import atomic_save, atomic_write_json, load_checkpoint
from compressor.study.runner import STORE
from compressor.study.store import Store
from compressor.train.loop import NonFiniteLoss, run
from tests.conftest import TINY_RECIPE, make_recipe

DIVERGING = TINY_RECIPE.replace("lr: 0.1", "lr: 1.0e+30").replace(
    "train: {epochs: 2", "train: {epochs: 4"
)


def test_a_diverging_run_fails_at_its_step_and_keeps_the_good_checkpoint(
    plugins: Plugins, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    good = make_recipe(
        TINY_RECIPE.replace("train: {epochs: 2,", "train: {epochs: 4, max_steps: 4,"), plugins
    )
    run(good, out, plugins=plugins, progress=False)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(NonFiniteLoss) as info:
        run(make_recipe(DIVERGING, plugins), tmp_path / "diverged", plugins=plugins, progress=False)
    assert 1 <= info.value.step <= 16 and "at step" in str(info.value)
    assert not (tmp_path / "diverged" / "report.json").exists()
    checkpoint = tmp_path / "diverged" / "checkpoint.pt"
    if checkpoint.exists():  # written before the loss broke: finite weights only
        state = load_checkpoint(checkpoint)
        assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert (out / "checkpoint.pt").read_bytes() == before


def test_skip_policy_trains_on_past_non_finite_steps(plugins: Plugins, tmp_path: Path) -> None:
    recipe = make_recipe(DIVERGING.replace("seed: 0,", "seed: 0, nonfinite: skip,"), plugins)
    report = run(recipe, tmp_path / "run", plugins=plugins, progress=False)
    assert report["skipped_steps"] >= 1
    assert all(torch.isfinite(v).all() for v in torch.load(tmp_path / "run" / "model.pt").values())
    text = (tmp_path / "run" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_a_failed_run_in_a_study_is_recorded_and_the_study_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text(TINY_RECIPE.replace("name: tiny", "name: good"))
    (tmp_path / "bad.yaml").write_text(DIVERGING.replace("name: tiny", "name: bad"))
    (tmp_path / "study.yaml").write_text("name: s\nrecipes: [bad.yaml, good.yaml]\n")
    code = main(
        ["compare", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "out"), "--quiet"]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "1 of 2 runs failed: bad/seed0: the training loss is not finite" in captured.err
    store = Store(tmp_path / "out" / STORE)
    status = {row.key: (row.status, row.error) for row in store.runs()}
    assert status["good/seed0"][0] == "done"
    assert status["bad/seed0"][0] == "failed" and "at step" in (status["bad/seed0"][1] or "")


@pytest.mark.parametrize("kind", ["empty", "truncated", "pickled-code", "folder"])
def test_unreadable_checkpoints_are_one_line_naming_the_file(
    plugins: Plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    out = tmp_path / "run"
    run(make_recipe(TINY_RECIPE, plugins), out, plugins=plugins, progress=False)
    checkpoint = out / "checkpoint.pt"
    if kind == "empty":
        checkpoint.write_bytes(b"")
    elif kind == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    elif kind == "pickled-code":

        class Evil:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                return (os.system, ("touch pwned",))

        torch.save({"model": Evil()}, checkpoint)
    else:
        checkpoint.unlink()
        checkpoint.mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    for argv in (["evaluate", str(out)], ["export", str(out), "--format", "state_dict"],
                 ["run", str(recipe), "--out", str(out), "--resume", "--quiet"]):  # fmt: skip
        assert main(argv) == 1, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(checkpoint) in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_full_disk_is_one_line_and_the_previous_file_is_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(
        CompressorError, match="No space left on device; the previous file is intact"
    ):
        atomic_save({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.glob(".*.tmp")) == []


def test_written_files_follow_the_umask_and_stale_temp_files_go(tmp_path: Path) -> None:
    stale = tmp_path / ".report.json.abc123.tmp"
    stale.write_text("left by a kill")
    atomic_write_json({"x": float("nan"), "y": [1.0, float("inf")]}, tmp_path / "report.json")
    mode = stat.S_IMODE((tmp_path / "report.json").stat().st_mode)
    assert mode == 0o666 & ~files._UMASK
    assert not stale.exists()
    assert json.loads((tmp_path / "report.json").read_text()) == {"x": None, "y": [1.0, None]}


def test_train_time_and_loss_carry_across_resume(plugins: Plugins, tmp_path: Path) -> None:
    text = TINY_RECIPE.replace("train: {epochs: 2,", "train: {epochs: 4,").replace(
        "eval_every: 1ep", "eval_every: 4"
    )

    def go(steps: int, out: str, resume: bool = False) -> dict:  # type: ignore[type-arg]
        recipe = make_recipe(text.replace("seed: 0,", f"seed: 0, max_steps: {steps},"), plugins)
        return run(recipe, tmp_path / out, plugins=plugins, resume=resume, progress=False)

    straight = go(8, "straight")
    go(3, "split")  # stops between two evaluations
    first = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["clocks"]
    resumed = go(8, "split", resume=True)
    assert resumed["train_cpu_s"] > first["train_cpu_s"] > 0
    assert resumed["train_time_s"] > first["train_s"]
    rows = lambda r: [(h["step"], h["train_loss"]) for h in r["history"]]  # noqa: E731
    assert rows(resumed) == rows(straight)  # the loss since the last evaluation survived


def test_a_second_compare_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    from compressor.study.runner import StudyLock

    lock = StudyLock(tmp_path)
    try:
        with pytest.raises(CompressorError, match="another compare is running"):
            StudyLock(tmp_path)
    finally:
        lock.release()
    StudyLock(tmp_path).release()  # free again

"""The loop's data paths, gradient accumulation and mixed precision (issue 11)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor import Session
from compressor.contract.errors import RecipeError
from compressor.host.manager import Plugins, load_plugins
from compressor.kit.files import load_checkpoint
from compressor.train.loop import prepare, run
from tests.conftest import make_recipe
from tests.support import ROOT

BASE = """\
name: d
model: {name: mlp, hidden: [16]}
data: DATA
train: {epochs: 4, seed: 0, eval_every: 1ep, checkpoint_every: 1ep TRAIN}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
modifiers:
  - {type: gmp, schedule: {kind: cubic, final: 0.5, start: 1, end: 1ep}}
"""
IN_MEMORY = (
    "{name: synthetic, samples: 64, test_samples: 32, features: 8, classes: 3, batch_size: 16}"
)
DATASET = "{name: synthetic_dataset, batch_size: 16 EXTRA}"


@pytest.fixture(scope="module")
def with_datasets() -> Plugins:
    return load_plugins([ROOT / "tests" / "support" / "datasets.py"], autoload=False)


def recipe(plugins: Plugins, data: str, train: str = "", extra: str = "") -> object:
    text = BASE.replace("DATA", data.replace(" EXTRA", extra)).replace(" TRAIN", train)
    return make_recipe(text, plugins)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]  # type: ignore[no-any-return]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_dataloader_path_trains_exactly_like_in_memory_tensors(
    with_datasets: Plugins, tmp_path: Path
) -> None:
    run(
        recipe(with_datasets, IN_MEMORY),
        tmp_path / "tensors",
        plugins=with_datasets,
        progress=False,
    )
    run(recipe(with_datasets, DATASET), tmp_path / "loader", plugins=with_datasets, progress=False)
    assert same(weights(tmp_path / "tensors"), weights(tmp_path / "loader"))


def test_resume_is_exact_with_two_workers_and_random_augmentation(
    with_datasets: Plugins, tmp_path: Path
) -> None:
    data = DATASET.replace(" EXTRA", ", num_workers: 2, augment: 0.5 EXTRA")

    def go(out: str, steps: int, resume: bool = False) -> None:
        r = recipe(with_datasets, data, f", max_steps: {steps}")
        run(r, tmp_path / out, plugins=with_datasets, resume=resume, progress=False)  # type: ignore[arg-type]

    go("straight", 10)
    go("split", 5)  # stops mid-epoch (4 steps per epoch)
    go("split", 10, resume=True)
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "split"))
    go("other", 10)  # and the augmentation really is random: a different seed differs
    noisy = recipe(with_datasets, data.replace("augment: 0.5", "augment: 0.0"), ", max_steps: 10")
    run(noisy, tmp_path / "clean", plugins=with_datasets, progress=False)  # type: ignore[arg-type]
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "other"))
    assert not same(weights(tmp_path / "straight"), weights(tmp_path / "clean"))


def test_accumulation_counts_optimizer_steps(plugins: Plugins) -> None:
    r = recipe(plugins, IN_MEMORY, ", accumulate: 3")
    session = prepare(r, plugins, with_data=False).session  # type: ignore[arg-type]
    assert session.clock.steps_per_epoch == 2  # 4 batches of 16 per epoch, 3 per step: ceil
    assert session.modifiers[0].end == 2  # 'end: 1ep' is the first epoch's last optimizer step


def test_accumulating_two_batches_equals_one_twice_as_large(
    plugins: Plugins, tmp_path: Path
) -> None:
    plain = BASE.replace("momentum: 0.9", "momentum: 0.0").split("modifiers:")[0]
    small = plain.replace("DATA", IN_MEMORY).replace(" TRAIN", ", accumulate: 2, max_steps: 4")
    large = plain.replace("DATA", IN_MEMORY.replace("batch_size: 16", "batch_size: 32"))
    run(make_recipe(small, plugins), tmp_path / "acc", plugins=plugins, progress=False)
    run(
        make_recipe(large.replace(" TRAIN", ", max_steps: 4"), plugins),
        tmp_path / "big",
        plugins=plugins,
        progress=False,
    )
    a, b = weights(tmp_path / "acc"), weights(tmp_path / "big")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_resume_is_exact_with_accumulation(plugins: Plugins, tmp_path: Path) -> None:
    def go(out: str, steps: int, resume: bool = False) -> None:
        r = recipe(plugins, IN_MEMORY, f", accumulate: 2, max_steps: {steps}")
        run(r, tmp_path / out, plugins=plugins, resume=resume, progress=False)  # type: ignore[arg-type]

    go("straight", 5)
    go("split", 3)
    go("split", 5, resume=True)
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "split"))


def test_bf16_autocast_trains_on_the_cpu(plugins: Plugins, tmp_path: Path) -> None:
    r = recipe(plugins, IN_MEMORY, ", precision: bf16, max_steps: 6")
    report = run(r, tmp_path / "bf16", plugins=plugins, progress=False)  # type: ignore[arg-type]
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0
    assert all(
        row["train_loss"] is None or row["train_loss"] == row["train_loss"]
        for row in report["history"]
    )


def _sam_session(plugins: Plugins, precision: str, model: nn.Module) -> Session:
    text = (
        f"name: p\ntrain: {{epochs: 1, precision: {precision}}}\n"
        "optimizer: {name: sgd, lr: 0.1, momentum: 0.9}\nwrapper: {name: sam, rho: 0.05}\n"
        "modifiers:\n  - {type: gmp, schedule: {kind: linear, final: 0.5, start: 0, end: 3}}\n"
    )
    return Session(model, make_recipe(text, plugins), steps_per_epoch=4, plugins=plugins)


def test_fp16_loss_scaling_is_exact_through_both_sam_passes(plugins: Plugins) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    results = []
    for precision in ("fp32", "fp16"):
        model = copy.deepcopy(base)
        session = _sam_session(plugins, precision, model)
        optimizer = session.optimizer()
        for _ in range(3):

            def closure(
                optimizer: torch.optim.Optimizer = optimizer,
                model: nn.Module = model,
                session: Session = session,
            ) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                session.scale_loss(loss).backward()  # scaled by 2**16, unscaled per pass
                return loss

            session.step_end(optimizer.step(closure))
        results.append(model.state_dict())
    assert same(*results)  # power-of-two scaling: bit for bit the fp32 steps


def test_an_overflowing_step_is_skipped_whole(plugins: Plugins) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    session = _sam_session(plugins, "fp16", model)
    optimizer = session.optimizer()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    blow_up = {"pass": -1}
    calls = {"n": 0}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if calls["n"] == blow_up["pass"]:
            loss = loss * float("inf")
        calls["n"] += 1
        session.scale_loss(loss).backward()
        return loss

    session.step_end(optimizer.step(closure))  # step 1: fine, masks at 1/6
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {n: session.masks.get(n).clone() for n in session.masks}  # type: ignore[union-attr]
    scale = session.scaler.scale
    blow_up["pass"] = calls["n"] + 1  # SAM's second pass of step 2 overflows
    session.step_end(optimizer.step(closure))
    assert optimizer.skipped and session.step == 2
    assert same(before, model.state_dict())  # no weight moved (SAM restored w; no base step)
    assert all(torch.equal(masks[n], session.masks.get(n)) for n in masks)  # no GMP update
    assert session.scaler.scale == scale / 2 and session.scaler.skipped_steps == 1
    session.step_end(optimizer.step(closure))  # step 3: trains again, GMP catches up
    assert not optimizer.skipped and not same(before, model.state_dict())
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=0.02)


def test_session_recipes_need_no_model_or_data(plugins: Plugins, tmp_path: Path) -> None:
    text = (
        "name: own-loop\noptimizer: {name: sgd}\nmodifiers:\n  - {type: oneshot, sparsity: 0.5}\n"
    )
    r = make_recipe(text, plugins)
    model = nn.Sequential(nn.Linear(4, 4))
    session = Session(model, r, steps_per_epoch=1, plugins=plugins)
    session.begin()
    assert session.sparsity()["global"] == pytest.approx(0.5)
    with pytest.raises(RecipeError, match="missing 'model:' section: compressor run builds"):
        run(r, tmp_path / "x", plugins=plugins, progress=False)


class Draws(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A sample is the random number its loading drew (what an augmentation would draw)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> float:
        return float(torch.rand(()))


def test_seeded_reads_a_batch_under_per_sample_seeds_and_plain_datasets_plainly() -> None:
    from compressor.train.batches import Seeded

    keys = [(3, 1), (3, 5), (3, 2)]
    seeded = Seeded(Draws(), seed=7)
    torch.manual_seed(0)
    batch = seeded.__getitems__(keys)
    after = torch.rand(())
    torch.manual_seed(123)  # another training RNG state: the same samples, one at a time
    assert [seeded[key] for key in keys] == batch
    torch.manual_seed(0)
    assert torch.equal(torch.rand(()), after), "the training RNG is restored after the batch"
    plain = Seeded(Draws(), seed=7, random=False)  # a dataset that draws nothing: no seeding
    torch.manual_seed(0)
    expected = [float(torch.rand(())) for _ in keys]
    torch.manual_seed(0)
    assert plain.__getitems__(keys) == expected != batch

"""Lightning: automatic optimization with accumulate_grad_batches, CrAM+ under manual
optimization with accumulation, resume from a Lightning checkpoint, DDP on CPU.

48 samples, batch 4: 12 micro-batches an epoch; with accumulation 2, 6 optimizer steps an
epoch, 12 in two. Sample i's first feature is i, so the model sees which samples it used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning", reason="the lightning extra is not installed")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from compressor.contract.errors import RecipeError  # noqa: E402
from compressor.integrations.lightning import CompressorCallback  # noqa: E402
from tests.conftest import make_recipe  # noqa: E402
from tests.support.bert import tiny_bert_config  # noqa: E402
from tests.support.ranks import CountingAllReduce  # noqa: E402

SAMPLES, BATCH = 48, 4
GMP = """
name: lightning-gmp
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""
CRAM = """
name: lightning-cram
train: {accumulate: 2}
optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
wrapper: {name: cram, rho: 0.05, sparsities: [0.5, 0.7]}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""


def data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 8, generator=g)
    x[:, 0] = torch.arange(SAMPLES, dtype=torch.float32)  # the sample's index
    y = (x[:, 1] > 0).long()
    return torch.utils.data.TensorDataset(x, y)


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A permutation that is a pure function of the epoch (Lightning calls set_epoch), so a
    resumed run reads what the uninterrupted one read; Lightning keeps no RNG state."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return SAMPLES

    def __iter__(self) -> Any:
        return iter(
            torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        )


def quiet_trainer(**settings: Any) -> pl.Trainer:
    """A CPU trainer without progress bar, summary, logger or checkpoints unless asked."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
    }
    return pl.Trainer(**{**defaults, **settings})


class Classifier(pl.LightningModule):
    def __init__(self, compressor: CompressorCallback, manual: bool, shuffle: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        )
        self.compressor = compressor
        self.automatic_optimization = not manual
        self.shuffle = shuffle
        self.seen: list[list[int]] = []

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        self.seen.append(x[:, 0].long().tolist())
        return F.cross_entropy(self.net(x * torch.tensor([0.0] + [1.0] * 7)), y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.automatic_optimization:
            return self.loss(batch)
        return self.compressor.manual_step(self, batch, batch_idx, self.loss)

    def configure_optimizers(self) -> Any:
        return self.compressor.optimizer(self.parameters())

    def train_dataloader(self) -> Any:
        sampler = EpochShuffle() if self.shuffle else None
        return torch.utils.data.DataLoader(data(), batch_size=BATCH, sampler=sampler)


class StopAfterFirstEpoch(pl.Callback):
    """An interruption: checkpoint at the end of epoch 1 and stop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


class Record(pl.Callback):
    """After the compressor callback: the session after each optimizer step."""

    def __init__(self, compressor: CompressorCallback) -> None:
        self.compressor = compressor
        self.after_step: list[tuple[int, int, float | None]] = []
        self.last = 0

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.last = trainer.global_step  # a resumed run starts past 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        session = self.compressor.session
        assert session is not None
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            self.after_step.append(
                (trainer.global_step, session.step, session.modifiers[0].current)
            )


def fit(
    recipe: str,
    *,
    manual: bool,
    accumulate: int = 1,
    ckpt: Path | None = None,
    callbacks: tuple[pl.Callback, ...] = (),
    shuffle: bool = False,
    **trainer_kwargs: Any,
) -> tuple[Classifier, CompressorCallback, pl.Trainer]:
    compressor = CompressorCallback(make_recipe(recipe))
    module = Classifier(compressor, manual, shuffle)
    trainer = quiet_trainer(
        max_epochs=2,
        devices=1,
        accumulate_grad_batches=accumulate,
        callbacks=[compressor, *callbacks],
        **trainer_kwargs,
    )
    trainer.fit(module, ckpt_path=ckpt)
    return module, compressor, trainer


def cubic(step: int) -> float:
    return 0.5 * (1 - (1 - min(step, 4) / 4) ** 3)


def assert_same_run(a: tuple[Classifier, CompressorCallback, Any], b: Any) -> None:
    (module_a, comp_a, _), (module_b, comp_b, _) = a, b
    for name, weight in module_a.state_dict().items():
        assert torch.equal(weight, module_b.state_dict()[name]), name
    state_a, state_b = comp_a.session.state_dict(), comp_b.session.state_dict()
    assert state_a["step"] == state_b["step"]
    assert torch.equal(state_a["generator"], state_b["generator"])
    assert state_a["modifiers"] == state_b["modifiers"]
    for name, mask in state_a["masks"].items():
        assert torch.equal(mask, state_b["masks"][name]), name


def test_automatic_optimization_with_accumulate_grad_batches(tmp_path: Path) -> None:
    compressor = CompressorCallback(make_recipe(GMP))
    record = Record(compressor)
    module = Classifier(compressor, manual=False)
    trainer = quiet_trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        callbacks=[compressor, record],
    )
    trainer.fit(module)
    session = compressor.session
    assert session is not None and trainer.global_step == session.step == 12
    assert session.clock.steps_per_epoch == 6 and session.clock.total_steps == 12
    assert [step for step, _, _ in record.after_step] == list(range(1, 13))
    for global_step, step, current in record.after_step:  # the schedule in optimizer steps
        assert step == global_step and current == pytest.approx(cubic(step))
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    assert sorted(i for ids in module.seen for i in ids) == sorted(list(range(SAMPLES)) * 2)


def test_automatic_resume_from_a_lightning_checkpoint_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """The issue's bug: after a resume session.step was 16 against Lightning's 32 and the
    schedule ran again. Shuffled data, by a sampler Lightning sets the epoch of."""
    full = fit(GMP, manual=False, accumulate=2, shuffle=True)
    ckpt = tmp_path / "epoch1.ckpt"
    first = fit(
        GMP, manual=False, accumulate=2, shuffle=True, callbacks=(StopAfterFirstEpoch(ckpt),)
    )
    assert first[1].session is not None and first[1].session.step == first[2].global_step == 6
    resumed = fit(GMP, manual=False, accumulate=2, shuffle=True, ckpt=ckpt)
    assert resumed[2].global_step == resumed[1].session.step == 12  # type: ignore[union-attr]
    assert len(resumed[0].seen) == 12  # epoch 2's micro-batches only
    assert_same_run(full, resumed)


def test_cram_under_manual_optimization_sees_every_micro_batch_in_both_passes() -> None:
    module, compressor, trainer = fit(CRAM, manual=True)
    session = compressor.session
    assert session is not None and trainer.global_step == session.step == 12
    assert compressor.accumulate == 2 and session.clock.steps_per_epoch == 6
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    seen = module.seen
    assert len(seen) == 12 * 2 * 2  # steps x passes x micro-batches
    for step in range(12):
        assert seen[4 * step : 4 * step + 2] == seen[4 * step + 2 : 4 * step + 4]
    for epoch in range(2):
        passes = seen[epoch * 24 : (epoch + 1) * 24]
        used = sorted(i for j, ids in enumerate(passes) if j % 4 < 2 for i in ids)
        assert used == list(range(SAMPLES))


def test_manual_resume_from_a_lightning_checkpoint_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    full = fit(CRAM, manual=True)
    ckpt = tmp_path / "epoch1.ckpt"
    fit(CRAM, manual=True, callbacks=(StopAfterFirstEpoch(ckpt),))
    resumed = fit(CRAM, manual=True, ckpt=ckpt)
    assert resumed[2].global_step == 12 and len(resumed[0].seen) == 6 * 2 * 2
    assert_same_run(full, resumed)


def test_sam_without_accumulation_is_the_same_in_automatic_and_manual_optimization() -> None:
    """accumulate 1: Lightning's own closure, run twice by SAM, gives manual_step's result."""
    sam = "name: s\noptimizer: {name: sgd, lr: 0.1}\nwrapper: {name: sam, rho: 0.05}\n"
    automatic = fit(sam, manual=False)
    manual = fit(sam, manual=True)
    assert automatic[2].global_step == manual[2].global_step == 24
    assert len(automatic[0].seen) == len(manual[0].seen) == 48  # two passes per step
    assert_same_run(automatic, manual)


def test_what_lightning_cannot_run_is_a_located_error() -> None:
    with pytest.raises(RecipeError, match="manual_step"):  # SAM/CrAM + accumulate_grad_batches
        fit(CRAM.replace("train: {accumulate: 2}\n", ""), manual=False, accumulate=2)
    with pytest.raises(RecipeError, match=r"train\.accumulate.*accumulate_grad_batches"):
        fit(GMP + "train: {accumulate: 4}\n", manual=False, accumulate=2)
    with pytest.raises(RecipeError, match=r"train\.precision.*Lightning owns mixed precision"):
        fit(CRAM.replace("{accumulate: 2}", "{accumulate: 2, precision: fp16}"), manual=True)
    # (Trainer(precision='16-mixed') with a wrapper is refused too; on CPU Lightning turns
    # 16-mixed into bf16-mixed, so that refusal needs a GPU to be seen.)


def test_step_zero_masks_are_in_place_before_the_first_forward() -> None:
    """A schedule that starts at 50%: Lightning's first micro-batch (automatic optimization
    runs it before any optimizer step) already sees the pruned weights."""
    pruned_at_start = GMP.replace("initial: 0.0", "initial: 0.5")
    compressor = CompressorCallback(make_recipe(pruned_at_start))
    module = Classifier(compressor, manual=False)
    zeros: list[float] = []
    module.net.register_forward_pre_hook(
        lambda net, args: zeros.append(compressor.session.sparsity()["global"])  # type: ignore[union-attr]
    )
    trainer = quiet_trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        callbacks=[compressor],
    )
    trainer.fit(module)
    assert zeros[0] == pytest.approx(0.5, abs=0.01)


def test_an_lr_schedule_in_both_places_is_refused() -> None:
    class WithScheduler(Classifier):
        def configure_optimizers(self) -> Any:
            optimizer = self.compressor.optimizer(self.parameters())
            return {
                "optimizer": optimizer,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1),
            }

    compressor = CompressorCallback(make_recipe(GMP + "lr_schedule: {kind: cosine}\n"))
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[compressor],
    )
    with pytest.raises(RecipeError, match="lr_schedule.*keep one of the two"):
        trainer.fit(WithScheduler(compressor, manual=False))


# -- the acceptance test: CrAM+ on a tiny random-init BERT, accumulation 2 -------------------

MLM_SAMPLES, MLM_BATCH, MASK_ID = 24, 4, 3
BERT_CRAM = """
name: lightning-bert-cram
train: {accumulate: 2}
optimizer: {name: adamw, lr: 0.001}
wrapper: {name: cram, rho: 0.05, sparsities: [0.5, 0.7]}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""


class MaskedTokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Fixed masked-LM examples (the masking is drawn once, here): token 0 is the sample's
    index, so the loss function sees which samples each pass used."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(MLM_SAMPLES, 64, (MLM_SAMPLES, 12), generator=g)
        ids[:, 0] = torch.arange(MLM_SAMPLES)
        masked = torch.rand(ids.shape, generator=g) < 0.25
        masked[:, 0] = False
        masked[:, 1] = True  # every sample has a target
        self.labels = torch.where(masked, ids, torch.full_like(ids, -100))
        self.ids = torch.where(masked, torch.full_like(ids, MASK_ID), ids)

    def __len__(self) -> int:
        return MLM_SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class EpochPermutation(torch.utils.data.Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class MaskedLM(pl.LightningModule):
    """A random-init BERT for masked LM under manual optimization: SAM/CrAM with accumulation
    go through ``manual_step``, which hands CrAM one closure over both micro-batches."""

    def __init__(self, compressor: CompressorCallback) -> None:
        super().__init__()
        from transformers import BertForMaskedLM

        torch.manual_seed(0)
        self.bert = BertForMaskedLM(tiny_bert_config())
        self.compressor = compressor
        self.automatic_optimization = False
        self.seen: list[list[int]] = []

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen.append(batch["input_ids"][:, 0].tolist())
        return self.bert(**batch).loss  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.compressor.manual_step(self, batch, batch_idx, self.loss)

    def configure_optimizers(self) -> Any:
        return self.compressor.optimizer(self.parameters())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.bert(**batch).loss)

    def val_dataloader(self) -> Any:  # validation (and a resumed run's sanity check) in the way
        return torch.utils.data.DataLoader(MaskedTokens(), batch_size=8)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(
            MaskedTokens(),
            batch_size=MLM_BATCH,
            sampler=EpochPermutation(MLM_SAMPLES),
            # its own generator: each epoch's iter() then draws no number from the torch RNG
            # that BERT's dropout uses (docs/integrations/lightning.md, exact resume)
            generator=torch.Generator(),
        )


def fit_bert(
    tmp_path: Path, *callbacks: pl.Callback, ckpt: Path | None = None
) -> tuple[MaskedLM, CompressorCallback, pl.Trainer, Record]:
    compressor = CompressorCallback(make_recipe(BERT_CRAM))
    record = Record(compressor)
    module = MaskedLM(compressor)
    trainer = quiet_trainer(
        max_epochs=2,
        devices=1,
        callbacks=[compressor, record, *callbacks],
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        default_root_dir=tmp_path,
    )
    trainer.fit(module, ckpt_path=ckpt)
    return module, compressor, trainer, record


class StopAtEpochEnd(pl.Callback):
    """The interruption: stop after the first epoch (ModelCheckpoint, last, saves it)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def test_cram_plus_on_bert_with_accumulation_resumes_from_a_lightning_checkpoint_exactly(
    tmp_path: Path,
) -> None:
    """24 samples, batch 4, accumulation 2: 3 optimizer steps an epoch, 6 in all.

    Compared exactly (torch.equal), not to a tolerance: on CPU the resumed run performs the
    same float operations in the same order as the uninterrupted one, from state restored
    bit for bit (weights and AdamW state by Lightning; step, masks, CrAM's generator and the
    torch RNG behind BERT's dropout by the session), so any difference is a lost state."""
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    full = fit_bert(tmp_path / "full")
    module, compressor, trainer, record = full
    session = compressor.session
    assert session is not None and trainer.global_step == session.step == 6
    assert session.clock.steps_per_epoch == 3 and session.clock.total_steps == 6
    # the schedule in optimizer steps: s(t) at step t (in micro-batches it would be s(2t))
    assert [step for step, _, _ in record.after_step] == list(range(1, 7))
    for global_step, step, current in record.after_step:
        assert step == global_step and current == pytest.approx(cubic(step))
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    assert len(module.seen) == 6 * 2 * 2  # steps x CrAM's passes x micro-batches
    for step in range(6):  # pass 2 sees the same two micro-batches as pass 1
        assert module.seen[4 * step : 4 * step + 2] == module.seen[4 * step + 2 : 4 * step + 4]

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    first = fit_bert(tmp_path / "first", StopAtEpochEnd(), checkpoints)
    assert first[1].session is not None and first[1].session.step == first[2].global_step == 3
    (ckpt,) = (tmp_path / "ckpt").glob("*.ckpt")
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if "CompressorCallback" in k]
    assert state["step"] == 3 and state["masks"] and state["optimizer"] is None

    resumed = fit_bert(tmp_path / "resumed", ckpt=ckpt)
    assert resumed[2].global_step == 6 and len(resumed[0].seen) == 3 * 2 * 2  # epoch 2 only
    assert [step for step, _, _ in resumed[3].after_step] == [4, 5, 6]
    assert_same_run(full[:3], resumed[:3])
    a, b = session.state_dict(), resumed[1].session.state_dict()  # type: ignore[union-attr]
    for index, value in a["optimizer"]["state"].items():
        for key, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][index][key]), (index, key)


# -- DDP on CPU: two processes (gloo), forked so that it runs inside pytest ------------------


class Report(pl.Callback):
    """Each rank writes what it ended with; a DDP comm hook counts the all-reduces."""

    def __init__(self, compressor: CompressorCallback, folder: Path) -> None:
        self.compressor, self.folder = compressor, folder
        self.allreduces = CountingAllReduce()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.model.register_comm_hook(None, self.allreduces.hook)  # type: ignore[union-attr]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session = self.compressor.session
        assert session is not None
        torch.save(
            {
                "rank": trainer.global_rank,
                "world": trainer.world_size,
                "global_step": trainer.global_step,
                "step": session.step,
                "steps_per_epoch": session.clock.steps_per_epoch,
                "weights": pl_module.state_dict(),
                "masks": session.state_dict()["masks"],
                "seen": pl_module.seen,  # type: ignore[attr-defined]
                "allreduces": self.allreduces.count,
            },
            self.folder / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("recipe,manual,accumulate", [(CRAM, True, 1), (GMP, False, 2)])
def test_ddp_on_two_cpu_processes(
    tmp_path: Path, recipe: str, manual: bool, accumulate: int
) -> None:
    compressor = CompressorCallback(make_recipe(recipe))
    module = Classifier(compressor, manual)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    trainer = quiet_trainer(
        max_epochs=2,
        devices=2,
        strategy="ddp_fork",
        accumulate_grad_batches=accumulate,
        callbacks=[compressor, Report(compressor, tmp_path)],
    )
    trainer.fit(module)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for report in ranks:  # each rank reads 6 of an epoch's 12 micro-batches: 3 steps
        assert report["world"] == 2 and report["steps_per_epoch"] == 3
        assert report["global_step"] == report["step"] == 6
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    assert ranks[0]["masks"].keys() == ranks[1]["masks"].keys() and ranks[0]["masks"]
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name
    passes = 2 if manual else 1
    used = sorted(
        i for r in ranks for j, ids in enumerate(r["seen"]) if j % (2 * passes) < 2 for i in ids
    )
    assert used == sorted(list(range(SAMPLES)) * 2)  # the ranks split the data, nothing lost
    # one all-reduce per pass and step (a tiny model is one bucket): the first micro-batch of
    # each step accumulates locally (no_sync), only the last one synchronises
    assert [r["allreduces"] for r in ranks] == [6 * passes] * 2


class CorruptMasksOnRank1(pl.Callback):
    """Listed before the compressor callback: one rank's masks drift before the check."""

    def __init__(self, compressor: CompressorCallback) -> None:
        self.compressor = compressor

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session = self.compressor.session
        assert session is not None
        if trainer.global_rank == 1:
            name, mask = next(iter(session.masks.tensors().items()))
            session.masks.set(name, ~mask)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_ranks_whose_masks_differ_stop_with_a_clear_error() -> None:
    compressor = CompressorCallback(make_recipe(GMP))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    trainer = quiet_trainer(
        max_epochs=1,
        devices=2,
        strategy="ddp_fork",
        callbacks=[CorruptMasksOnRank1(compressor), compressor],
    )
    with pytest.raises(Exception, match="the masks differ between ranks after step 6"):
        trainer.fit(Classifier(compressor, manual=False))

"""Hugging Face Trainer: CrAM+ on a tiny random-init BERT, gradient accumulation 2.

24 samples, batch 4: 6 micro-batches an epoch, 3 optimizer steps an epoch, 6 in all. Sample i
starts with token i, so a forward hook sees which samples every pass used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
pytest.importorskip("accelerate", reason="the accelerate extra is not installed")

from transformers import (  # noqa: E402
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from compressor import Session  # noqa: E402
from compressor.contract.errors import CompressorError, RecipeError  # noqa: E402
from compressor.integrations.hf_trainer import (  # noqa: E402
    CompressorCallback,
    CompressorTrainer,
)
from compressor.kit.files import load_checkpoint  # noqa: E402
from tests.conftest import make_recipe  # noqa: E402
from tests.support.bert import tiny_bert_config  # noqa: E402
from tests.support.ranks import CountingAllReduce, run_forked  # noqa: E402

SAMPLES, BATCH, K = 24, 4, 2
STEPS_PER_EPOCH = SAMPLES // BATCH // K  # 3
CRAM = """
name: hf-cram
wrapper: {name: cram, rho: 0.05, sparsities: [0.5, 0.7]}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""


class Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(24, 64, (SAMPLES, 12), generator=g)
        self.ids[:, 0] = torch.arange(SAMPLES)  # the sample's index, seen by the hook
        self.labels = torch.randint(0, 2, (SAMPLES,), generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=2))


def arguments(out: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "use_cpu": True,
        "report_to": [],
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": K,
        "num_train_epochs": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(**settings)


class Record(TrainerCallback):  # type: ignore[misc]
    """Added after the trainer's own callbacks: sees the session after its step_end."""

    def __init__(self, trainer: CompressorTrainer) -> None:
        self.trainer = trainer
        self.after_step: list[tuple[int, int, float | None, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self.trainer.session
        assert session is not None
        gmp = session.modifiers[0]
        self.after_step.append(
            (state.global_step, session.step, gmp.current, session.sparsity()["global"])
        )


def cram_trainer(out: Path, **overrides: Any) -> tuple[CompressorTrainer, list[list[int]]]:
    model = tiny_bert()
    seen: list[list[int]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][:, 0].tolist()),
        with_kwargs=True,
    )
    trainer = CompressorTrainer(
        model=model,
        args=arguments(out, **overrides),
        train_dataset=Tokens(),
        recipe=make_recipe(CRAM),
    )
    return trainer, seen


def cubic(step: int) -> float:
    return 0.5 * (1 - (1 - min(step, 4) / 4) ** 3)


def test_cram_counts_optimizer_steps_and_both_passes_see_every_micro_batch(
    tmp_path: Path,
) -> None:
    trainer, seen = cram_trainer(tmp_path)
    record = Record(trainer)
    trainer.add_callback(record)
    trainer.train()
    session = trainer.session
    assert session is not None
    assert trainer.state.global_step == session.step == 2 * STEPS_PER_EPOCH
    # the schedule runs in optimizer steps: at step t the target is s(t), not s(K·t)
    for global_step, step, current, sparsity in record.after_step:
        assert step == global_step
        assert current == pytest.approx(cubic(step))
        assert sparsity == pytest.approx(cubic(step), abs=1e-3)
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    # each step: pass 1 over both micro-batches, pass 2 over the same two
    assert len(seen) == 2 * STEPS_PER_EPOCH * 2 * K
    for step in range(2 * STEPS_PER_EPOCH):
        first, second = seen[4 * step : 4 * step + 2], seen[4 * step + 2 : 4 * step + 4]
        assert first == second
    for epoch in range(2):  # every sample once per epoch, in pass 1 and in pass 2
        passes = seen[epoch * 12 : (epoch + 1) * 12]
        used = sorted(i for j, ids in enumerate(passes) if j % 4 < 2 for i in ids)
        assert used == list(range(SAMPLES))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 * STEPS_PER_EPOCH
    assert all(0.5 < loss < 3.0 for loss in losses)  # logged as the Trainer logs it


def test_resume_from_a_trainer_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full, _ = cram_trainer(tmp_path / "full", save_strategy="steps", save_steps=2)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"  # mid-epoch: 1 step into epoch 2
    assert (checkpoint / "compressor_session.pt").is_file()
    saved = load_checkpoint(checkpoint / "compressor_session.pt")
    assert saved["step"] == 4 and saved["optimizer"] is None  # the Trainer saves that itself

    resumed, seen = cram_trainer(tmp_path / "resumed", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6 and len(seen) == 2 * 2 * K  # steps 5 and 6 only
    a, b = full.session, resumed.session
    assert a is not None and b is not None and a.step == b.step == 6
    for name, weight in full.model.state_dict().items():
        assert torch.equal(weight, resumed.model.state_dict()[name]), name
    state_a, state_b = a.state_dict(), b.state_dict()
    assert torch.equal(state_a["generator"], state_b["generator"])
    assert state_a["modifiers"] == state_b["modifiers"]
    assert state_a["masks"].keys() == state_b["masks"].keys()
    for name, mask in state_a["masks"].items():
        assert torch.equal(mask, state_b["masks"][name]), name
    for name, value in state_a["optimizer"]["state"].items():
        for key, tensor in value.items():
            assert torch.equal(tensor, state_b["optimizer"]["state"][name][key]), (name, key)


def test_single_pass_recipes_train_and_log_exactly_as_the_plain_trainer(tmp_path: Path) -> None:
    """No wrapper, no modifier, the Trainer's own AdamW wrapped: the same run, bit for bit
    (max_grad_norm=1.0 clips here, inside the session's closure instead of after it)."""
    plain = Trainer(model=tiny_bert(), args=arguments(tmp_path / "p"), train_dataset=Tokens())
    plain.train()
    ours = CompressorTrainer(
        model=tiny_bert(),
        args=arguments(tmp_path / "c"),
        train_dataset=Tokens(),
        recipe=make_recipe("name: plain"),
    )
    ours.train()
    for name, weight in plain.model.state_dict().items():
        assert torch.equal(weight, ours.model.state_dict()[name]), name
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, ours)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    grad_norms = [e["grad_norm"] for e in ours.state.log_history if "grad_norm" in e]
    assert len(grad_norms) == 6 and all(0 < g <= 1.0 + 1e-5 for g in grad_norms)  # after clip


def test_fp16_loss_scaling_is_the_sessions_and_unscales_every_pass(tmp_path: Path) -> None:
    """On CPU the Trainer's fp16 has no autocast: the session's ×65536 scaling, unscaled
    after each of CrAM's passes, must give the fp32 run exactly (powers of two are exact)."""
    fp32, _ = cram_trainer(tmp_path / "fp32")
    fp32.train()
    fp16, _ = cram_trainer(tmp_path / "fp16", fp16=True)
    fp16.train()
    assert fp16.accelerator.scaler is None
    assert fp16.session is not None and fp16.session.scaler.enabled
    assert fp16.session.scaler.scale == 2.0**16 and fp16.session.scaler.skipped_steps == 0
    for name, weight in fp32.model.state_dict().items():
        assert torch.equal(weight, fp16.model.state_dict()[name]), name


def test_bf16_autocast_trains_cram(tmp_path: Path) -> None:
    trainer, seen = cram_trainer(tmp_path, bf16=True)
    trainer.train()
    assert trainer.session is not None and trainer.session.step == 2 * STEPS_PER_EPOCH
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert len(seen) == 2 * STEPS_PER_EPOCH * 2 * K
    assert trainer.session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)


GMP_SGD = """
name: hf-gmp
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
modifiers:
  - type: gmp
    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}
"""


def plain_trainer(
    out: Path, recipe: str, resume_from: str | None = None, **overrides: Any
) -> tuple[Trainer, Session]:
    model = tiny_bert()
    session = Session(model, make_recipe(recipe), steps_per_epoch=STEPS_PER_EPOCH)
    trainer = Trainer(
        model=model,
        args=arguments(out, **overrides),
        train_dataset=Tokens(),
        optimizers=(session.optimizer(model.parameters()), None),
        callbacks=[CompressorCallback(session, resume_from=resume_from)],
    )
    return trainer, session


def test_callback_with_the_plain_trainer_steps_and_resumes(tmp_path: Path) -> None:
    full, session = plain_trainer(tmp_path / "full", GMP_SGD, save_strategy="steps", save_steps=2)
    full.train()
    assert full.state.global_step == session.step == 6
    assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    checkpoint = str(tmp_path / "full" / "checkpoint-2")
    resumed, again = plain_trainer(tmp_path / "elsewhere", GMP_SGD, resume_from=checkpoint)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert again.step == 6
    for name, weight in full.model.state_dict().items():
        assert torch.equal(weight, resumed.model.state_dict()[name]), name


def test_step_zero_masks_are_in_place_before_the_first_forward(tmp_path: Path) -> None:
    """The plain Trainer runs a step's first micro-batch before any optimizer step: with a
    schedule that starts at 50% it already sees the pruned weights."""
    trainer, session = plain_trainer(tmp_path, GMP_SGD.replace("initial: 0.0", "initial: 0.5"))
    zeros: list[float] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: zeros.append(session.sparsity()["global"])
    )
    trainer.train()
    assert zeros[0] == pytest.approx(0.5, abs=1e-3)


def test_the_plain_trainer_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    trainer, _ = plain_trainer(tmp_path / "cram", GMP_SGD + "wrapper: {name: sam, rho: 0.05}\n")
    with pytest.raises(RecipeError, match="CompressorTrainer"):
        trainer.train()
    model = tiny_bert()
    session = Session(model, make_recipe(GMP_SGD), steps_per_epoch=6)  # micro-batches: wrong
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path / "spe"),
        train_dataset=Tokens(),
        optimizers=(session.optimizer(), None),
        callbacks=[CompressorCallback(session)],
    )
    with pytest.raises(CompressorError, match="makes 3 optimizer steps per epoch"):
        trainer.train()


def test_recipe_settings_the_trainer_owns_are_errors_when_they_disagree(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="lr_schedule"):
        CompressorTrainer(
            model=tiny_bert(),
            args=arguments(tmp_path),
            train_dataset=Tokens(),
            recipe=make_recipe("name: x\nlr_schedule: {kind: cosine}"),
        )
    trainer = CompressorTrainer(
        model=tiny_bert(),
        args=arguments(tmp_path),
        train_dataset=Tokens(),
        recipe=make_recipe("name: x\ntrain: {accumulate: 4}"),
    )
    with pytest.raises(RecipeError, match=r"train\.accumulate.*gradient_accumulation_steps"):
        trainer.train()


# -- DDP on CPU: two forked processes (gloo) -----------------------------------------------


def _rank(rank: int, folder: Path) -> None:
    trainer, seen = cram_trainer(folder / "out", ddp_backend="gloo")
    hook = CountingAllReduce()

    class CommHook(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trainer.model_wrapped.register_comm_hook(None, hook.hook)

    trainer.add_callback(CommHook())
    trainer.train()
    session = trainer.session
    assert session is not None
    torch.save(
        {
            "world": trainer.args.world_size,
            "step": session.step,
            "global_step": trainer.state.global_step,
            "weights": trainer.model.state_dict(),
            "masks": session.masks.state_dict(),
            "seen": seen,
            "allreduces": hook.count,
        },
        folder / f"rank{rank}.pt",
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_on_two_cpu_processes_all_reduces_once_per_pass(tmp_path: Path) -> None:
    ranks = run_forked(_rank, tmp_path)
    for report in ranks:  # 12 samples a rank, batch 4, K 2: steps of 2 and 1 micro-batches
        assert report["world"] == 2
        assert report["step"] == report["global_step"] == 4
        assert report["allreduces"] == 4 * 2  # one per pass: no_sync for all but the last
    for epoch in range(2):  # each step's two passes see its micro-batches; nothing is lost
        used = []
        for report in ranks:
            a, b, a2, b2, c, c2 = report["seen"][6 * epoch : 6 * epoch + 6]
            assert (a, b, c) == (a2, b2, c2)
            used += a + b + c
        assert sorted(used) == list(range(SAMPLES))
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name

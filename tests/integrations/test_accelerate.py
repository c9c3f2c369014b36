"""accelerate with gradient_accumulation_steps=2: every micro-batch is used, SAM and CrAM too.

The probe model has one weight per sample and the loss of a micro-batch is the mean of its
samples' weights, so after plain SGD (lr 1) each weight has moved by exactly the gradient its
sample contributed: 1/8 for a sample in a step of 2 micro-batches of 4, 0 for one never used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("accelerate", reason="the accelerate extra is not installed")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from compressor import Session  # noqa: E402
from compressor.contract.errors import CompressorError  # noqa: E402
from compressor.integrations.accelerate import accumulate_step, micro_batches  # noqa: E402
from tests.conftest import make_recipe  # noqa: E402
from tests.support.ranks import CountingAllReduce, run_forked  # noqa: E402

K, BATCH = 2, 4
SGD = "name: probe\noptimizer: {name: sgd, lr: 1.0}\n"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    """accelerate keeps its state in process-wide singletons: one Accelerator per test."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Probe(torch.nn.Module):
    """One weight per sample; the forward records which samples it saw."""

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(samples))
        self.seen: list[list[int]] = []

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        self.seen.append(index.tolist())
        return self.weight[index].mean()


def probe_run(samples: int) -> tuple[Probe, Session]:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    model = Probe(samples)
    loader = torch.utils.data.DataLoader(torch.arange(samples), batch_size=BATCH)
    model, loader = accelerator.prepare(model, loader)
    session = Session(model, make_recipe(SGD), steps_per_epoch=math.ceil(len(loader) / K))
    optimizer = accelerator.prepare(session.optimizer())
    for micro in micro_batches(loader, K):
        accumulate_step(accelerator, model, optimizer, micro, model)
    return model, session


def test_all_32_of_32_micro_batches_contribute_their_gradient() -> None:
    model, session = probe_run(128)  # 32 micro-batches of 4: 16 optimizer steps
    assert session.step == 16
    assert len(model.seen) == 32
    assert sorted(i for ids in model.seen for i in ids) == list(range(128))
    # every sample's gradient, weighted 1/(K * BATCH), exactly (powers of two)
    assert torch.equal(model.weight.detach(), torch.full((128,), -1 / (K * BATCH)))


def test_the_shorter_last_step_of_an_epoch_weighs_its_micro_batches_by_their_number() -> None:
    model, session = probe_run(36)  # 9 micro-batches: 4 steps of 2, then one of 1
    assert session.step == 5 and len(model.seen) == 9
    expected = torch.full((36,), -1 / (K * BATCH))
    expected[32:] = -1 / BATCH
    assert torch.equal(model.weight.detach(), expected)


def test_the_closure_pattern_under_accelerator_accumulate_drops_half_the_micro_batches() -> None:
    """What accumulate_step replaces (the issue's report): accumulate() skips the optimizer
    step, and with it the closure, on all but every K-th micro-batch."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    model = Probe(128)
    loader = torch.utils.data.DataLoader(torch.arange(128), batch_size=BATCH)
    session = Session(model, make_recipe(SGD), steps_per_epoch=16)
    model, optimizer, loader = accelerator.prepare(model, session.optimizer(), loader)
    for index in loader:
        with accelerator.accumulate(model):

            def closure(index: torch.Tensor = index) -> torch.Tensor:
                optimizer.zero_grad()
                loss = model(index)
                accelerator.backward(loss)
                return loss

            optimizer.step(closure)
    assert len(model.seen) == 16  # 16 of 32
    assert int((model.weight.detach() == 0).sum()) == 64  # half the samples never counted


def test_accumulate_step_inside_accelerator_accumulate_is_refused() -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    model = Probe(8)
    session = Session(model, make_recipe(SGD), steps_per_epoch=1)
    model, optimizer = accelerator.prepare(model, session.optimizer())
    batches = [torch.arange(4), torch.arange(4, 8)]
    with (
        pytest.raises(CompressorError, match="call it outside"),
        accelerator.accumulate(model),
    ):
        accumulate_step(accelerator, model, optimizer, batches, model)


# -- SAM and CrAM: both passes over both micro-batches ---------------------------------------

SAMPLES = 64
WRAPPED = {
    "sam": "wrapper: {name: sam, rho: 0.05}\n",
    "cram": "wrapper: {name: cram, rho: 0.05, sparsities: [0.5, 0.7]}\n"
    "modifiers:\n  - type: gmp\n"
    "    schedule: {kind: cubic, initial: 0.0, final: 0.5, start: 0, end: 4, every: 1}\n",
}


def data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 8, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long(), torch.arange(SAMPLES))


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def recipe(wrapper: str) -> Any:
    return make_recipe(f"name: {wrapper}\noptimizer: {{name: sgd, lr: 0.1}}\n{WRAPPED[wrapper]}")


def train_accelerated(
    wrapper: str, prepared: Callable[[Any], None] = lambda model: None
) -> tuple[Accelerator, Any, Session, list[list[int]]]:
    """One epoch of the MLP through accelerate, accumulation 2 by ``accumulate_step``;
    ``prepared(model)`` sees the prepared model first. Returns what the loss function saw."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    model = mlp()
    loader = torch.utils.data.DataLoader(data(), batch_size=BATCH)
    model, loader = accelerator.prepare(model, loader)
    prepared(model)
    session = Session(model, recipe(wrapper), steps_per_epoch=math.ceil(len(loader) / K))
    optimizer = accelerator.prepare(session.optimizer())
    seen: list[list[int]] = []

    def loss_fn(batch: Any) -> torch.Tensor:
        x, y, index = batch
        seen.append(index.tolist())
        return F.cross_entropy(model(x), y)

    for micro in micro_batches(loader, K):
        accumulate_step(accelerator, model, optimizer, micro, loss_fn)
    return accelerator, model, session, seen


@pytest.mark.parametrize("wrapper", ["sam", "cram"])
def test_two_pass_wrappers_see_every_micro_batch_and_match_one_batch_of_k(wrapper: str) -> None:
    """Accumulation 2 of batch 4 through accelerate equals steps on batches of 8 (same
    samples in the same steps): both passes of every step saw and weighed all 8 samples."""
    _, model, session, seen = train_accelerated(wrapper)
    assert session.step == SAMPLES // (K * BATCH)
    assert len(seen) == session.step * 2 * K  # steps x passes x micro-batches
    for step in range(session.step):  # pass 2 over the same micro-batches as pass 1
        first, second = seen[4 * step : 4 * step + 2], seen[4 * step + 2 : 4 * step + 4]
        assert first == second
        assert sorted(i for ids in first for i in ids) == list(range(8 * step, 8 * step + 8))

    reference = mlp()  # a plain Session loop on batches of K * BATCH
    ref_session = Session(reference, recipe(wrapper), steps_per_epoch=session.step)
    ref_optimizer = ref_session.optimizer()
    for x, y, _ in torch.utils.data.DataLoader(data(), batch_size=K * BATCH):

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            ref_optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(reference(x), y)
            loss.backward()
            return loss

        ref_session.step_end(ref_optimizer.step(closure))
    # to float tolerance, not exactly: the mean of two means of 4 is not summed in the order
    # of one mean of 8
    for name, weight in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=0, atol=1e-5)
    if wrapper == "cram":
        assert session.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
        assert session.masks.state_dict().keys() == ref_session.masks.state_dict().keys()
        for name, mask in session.masks.state_dict().items():
            assert torch.equal(mask, ref_session.masks.state_dict()[name]), name


# -- DDP on CPU: two forked processes (gloo) -----------------------------------------------


def _rank(rank: int, folder: Path) -> None:
    hook = CountingAllReduce()
    accelerator, model, session, seen = train_accelerated(
        "cram", lambda model: model.register_comm_hook(None, hook.hook)
    )
    torch.save(
        {
            "kind": str(accelerator.distributed_type),
            "step": session.step,
            "weights": accelerator.unwrap_model(model).state_dict(),
            "masks": session.masks.state_dict(),
            "seen": seen,
            "allreduces": hook.count,
        },
        folder / f"rank{rank}.pt",
    )
    accelerator.end_training()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_on_two_cpu_processes_all_reduces_once_per_pass(tmp_path: Path) -> None:
    ranks = run_forked(_rank, tmp_path)
    for report in ranks:  # 16 micro-batches a rank: 4 steps of 2
        assert report["kind"] == "DistributedType.MULTI_CPU" and report["step"] == 4
        assert report["allreduces"] == 4 * 2  # one per pass: the first micro-batch no_sync
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name
    used = sorted(i for r in ranks for j, ids in enumerate(r["seen"]) if j % 4 < 2 for i in ids)
    assert used == list(range(SAMPLES))  # the ranks split the data, nothing lost

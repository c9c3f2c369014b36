"""One-shot robustness evaluation (METHODS.md §7) and the accuracy helper it uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import Session
from compressor.contract.errors import RecipeError
from compressor.plugin_api import DataInfo, DataSplits, Evaluation
from compressor.train.metrics import accuracy
from tests.support.context import run_context
from tests.support.cram import make_recipe, plugins_with_fixed_operators

torch.set_num_threads(1)


def _data() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 2, 8, generator=g) * 2

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=g)
        return centers[y] + torch.randn(n, 2, 8, generator=g), y

    (x, y), (xt, yt) = draw(300), draw(120)
    return DataSplits(x, y, xt, yt, DataInfo((2, 8), 3))


def _trained_cnn(data: DataSplits) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1, bias=False),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(30):
        index = torch.arange(i * 10, i * 10 + 10) % data.train_x.shape[0]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.train_x[index]), data.train_y[index]).backward()
        optimizer.step()
    return model


EVALUATE = """
evaluate:
  oneshot:
    sparsities: [0.5, 0.8]
    bn_recalibration: {batches: 5, batch_size: 32, calibration_samples: 100}
"""


def _run(model: nn.Module, data: DataSplits, extra: str = EVALUATE, plugins=None) -> Evaluation:  # type: ignore[no-untyped-def]
    recipe = make_recipe(None, extra=extra, plugins=plugins)
    session = Session(model, recipe, steps_per_epoch=1, plugins=plugins)
    evaluator = session.registries.evaluators.build(recipe.config.evaluate.oneshot)
    return evaluator.run(run_context(session, data), model)  # type: ignore[no-any-return]


def _evaluate(model: nn.Module, data: DataSplits, extra: str = EVALUATE, plugins=None) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return _run(model, data, extra, plugins).details


def test_trained_model_stays_bit_identical() -> None:
    data = _data()
    model = _trained_cnn(data)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _evaluate(model, data)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reports_each_target_before_and_after_recalibration() -> None:
    data = _data()
    model = _trained_cnn(data)
    result = _evaluate(model, data)
    dense_acc, _ = accuracy(model, data.test_x, data.test_y)
    assert result["dense"]["accuracy"] == dense_acc
    assert [r["target_sparsity"] for r in result["results"]] == [0.5, 0.8]
    eligible = 8 * 2 * 3 + 64 * 3
    for row in result["results"]:
        assert abs(row["sparsity"] - row["target_sparsity"]) <= 1 / eligible
        for key in ("before_recalibration", "after_recalibration"):
            assert 0.0 <= row[key]["accuracy"] <= 1.0
        assert row["operator"]["kind"] == "magnitude"
    assert result == _evaluate(model, data)  # deterministic


def test_recalibration_is_what_changes_between_the_two_accuracies() -> None:
    data = _data()
    model = _trained_cnn(data)
    no_recal = EVALUATE.replace("batches: 5", "batches: 0")
    for row in _evaluate(model, data, no_recal)["results"]:
        assert row["after_recalibration"] == row["before_recalibration"]
    rows = _evaluate(model, data)["results"]
    assert any(r["after_recalibration"]["loss"] != r["before_recalibration"]["loss"] for r in rows)


def test_declares_a_column_per_target_and_the_robustness_curve(tmp_path: Path) -> None:
    plugins = plugins_with_fixed_operators(tmp_path)
    data = _data()
    extra = EVALUATE.replace(
        "sparsities: [0.5, 0.8]", "sparsities: [0.8, 0.5]\n    targets: [{kind: half}]"
    )
    evaluation = _run(_trained_cnn(data), data, extra, plugins)
    assert [(c.metric, c.title) for c in evaluation.columns] == [
        ("0.8", "80%"),
        ("0.5", "50%"),
        ("half 0.5", "half 0.5"),
    ]
    rows = evaluation.details["results"]
    assert evaluation.metrics["0.5"] == rows[1]["after_recalibration"]["accuracy"]
    assert (
        evaluation.metrics["0.5/before_recalibration"]
        == rows[1]["before_recalibration"]["accuracy"]
    )
    (curve,) = evaluation.curves
    assert curve.name == "robustness" and curve.higher_is_better
    assert [(p.label, p.style) for p in curve.points] == [
        ("trained", "line"),
        ("0.8", "line"),
        ("0.5", "line"),
        ("half 0.5", "marker"),
    ]
    assert "after one-shot compression" in evaluation.legend
    assert Evaluation.from_dict(evaluation.to_dict()) == evaluation


def test_fixed_pattern_targets_run_once_at_their_own_sparsity(tmp_path: Path) -> None:
    plugins = plugins_with_fixed_operators(tmp_path)
    data = _data()
    extra = EVALUATE.replace(
        "sparsities: [0.5, 0.8]", "sparsities: [0.9]\n    targets: [{kind: half}]"
    )
    rows = _evaluate(_trained_cnn(data), data, extra, plugins)["results"]
    assert [(r["operator"]["kind"], r["target_sparsity"]) for r in rows] == [
        ("magnitude", 0.9),
        ("half", 0.5),
    ]
    assert rows[1]["sparsity"] == pytest.approx(0.5)


def test_calibration_batches_are_fixed_by_their_seed() -> None:
    x = torch.arange(5000).float()[:, None]
    data = DataSplits(x, x[:, 0].long(), x, x[:, 0].long(), DataInfo((1,), 2))
    model = nn.Sequential(nn.Linear(1, 2))
    context = run_context(Session(model, make_recipe(None), steps_per_epoch=1), data)

    def draw(seed: int) -> list[torch.Tensor]:
        return list(context.calibration_batches(1000, seed, 3, 100))

    a, b = draw(0), draw(0)
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(p.shape == (100, 1) and len(set(p[:, 0].tolist())) == 100 for p in a)
    subset = set(torch.cat(draw(0))[:, 0].tolist())
    assert len(subset) <= 1000  # every batch comes from the same 1000-sample subset
    assert not torch.equal(a[0], draw(1)[0])


def test_accuracy_restores_the_train_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    model.train()
    acc, loss = accuracy(model, torch.randn(10, 4), torch.zeros(10, dtype=torch.long), 3)
    assert model.training and 0.0 <= acc <= 1.0 and loss > 0


def test_unknown_keys_are_located_errors() -> None:
    with pytest.raises(RecipeError, match="unknown key 'sparsity'"):
        make_recipe(None, extra="evaluate:\n  oneshot: {sparsity: [0.5]}\n")

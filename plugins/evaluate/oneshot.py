"""One-shot robustness evaluation (METHODS.md §7): accuracy versus one-shot sparsity.

For every target (each of ``sparsities`` with ``operator``, plus every operator in ``targets``,
e.g. a fixed 2:4 pattern): copy the trained model, compress the copy in one shot, measure
accuracy, re-calibrate BatchNorm on a fixed calibration subset of the training data
(METHODS.md §6), measure again. The trained model is never modified: all work happens on a
``copy.deepcopy``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor import hookimpl
from compressor.contract.bases import DataSplits, Evaluator, OperatorSpec, Sparsity, TypeConfig
from compressor.contract.errors import ConfigError
from compressor.contract.selection import select, sparsity_stats
from compressor.engine.bn import recalibrate_bn
from compressor.engine.session import Session
from compressor.train.metrics import accuracy


def default_operator() -> dict[str, Any]:
    return {"kind": "magnitude", "scope": "global"}


class BNRecalibration(TypeConfig):
    """How BN statistics are re-estimated after compression (``batches: 0`` skips it)."""

    batches: int = Field(100, ge=0)
    batch_size: int = Field(128, gt=0)
    calibration_samples: int = Field(1000, gt=0)
    seed: int = 0


class OneShotEval(Evaluator):
    """Keyed ``oneshot`` under ``evaluate:``; the result goes into the run report."""

    class Config(TypeConfig):
        name: Literal["oneshot"] = "oneshot"
        operator: OperatorSpec = Field(default_factory=default_operator, validate_default=True)  # type: ignore[assignment]
        sparsities: list[Sparsity] = Field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95])
        targets: list[OperatorSpec] = Field(  # type: ignore[valid-type]
            default_factory=list,
            description="more operators, e.g. N:M; one with no fixed sparsity runs each sparsity",
        )
        bn_recalibration: BNRecalibration = Field(default_factory=BNRecalibration)
        batch_size: int = Field(1024, gt=0, description="evaluation batch size")

    def check(self, session: Session) -> None:
        """Every operator must select tensors of this model (found before training, not after)."""
        where: list[tuple[Any, tuple[str | int, ...]]] = [(self.config.operator, ("operator",))]
        where += [(config, ("targets", i)) for i, config in enumerate(self.config.targets)]
        for config, loc in where:
            if not select(session.model, config):
                raise ConfigError(
                    "selects no tensors in this model (check modules/include/exclude)", loc
                )
            operator = session.registries.operators.build(config)
            if operator.fixed_sparsity() is None and not self.config.sparsities:
                raise ConfigError("needs at least one of 'sparsities'", ("sparsities",))

    def run(self, session: Session | None, model: nn.Module, data: DataSplits) -> dict[str, Any]:
        c = self.config
        registries = session.registries if session is not None else _default_registries()
        calibration = calibration_subset(
            data.train_x, c.bn_recalibration.calibration_samples, c.bn_recalibration.seed
        )
        dense_acc, dense_loss = accuracy(model, data.test_x, data.test_y, c.batch_size)
        results = []
        for config in [c.operator, *c.targets]:
            fixed = registries.operators.build(config).fixed_sparsity()
            levels = [fixed] if fixed is not None else list(c.sparsities)
            for sparsity in levels:
                results.append(self._one(registries, config, sparsity, model, data, calibration))
        return {"dense": {"accuracy": dense_acc, "loss": dense_loss}, "results": results}

    def _one(
        self,
        registries: Any,
        config: Any,
        sparsity: float | None,
        model: nn.Module,
        data: DataSplits,
        calibration: torch.Tensor,
    ) -> dict[str, Any]:
        c = self.config
        pruned = copy.deepcopy(model)
        operator = registries.operators.build(config)
        targets = select(pruned, config)
        if not targets:
            raise ValueError(f"{config.kind} selects no tensors in this model")
        operator.bind(pruned, targets)
        weights = {t.name: t.param for t in targets}
        generator = torch.Generator().manual_seed(c.bn_recalibration.seed)
        with torch.no_grad():
            for name, value in operator.project(weights, sparsity, generator=generator).items():
                weights[name].copy_(value)
        achieved = float(sparsity_stats(targets)["global"])  # type: ignore[arg-type]
        before, loss_before = accuracy(pruned, data.test_x, data.test_y, c.batch_size)
        recal = c.bn_recalibration
        recalibrate_bn(
            pruned,
            calibration,
            batches=recal.batches,
            batch_size=recal.batch_size,
            generator=torch.Generator().manual_seed(recal.seed),
        )
        after, loss_after = accuracy(pruned, data.test_x, data.test_y, c.batch_size)
        return {
            "operator": config.model_dump(mode="json"),
            "target_sparsity": sparsity,
            "sparsity": achieved,
            "accuracy_before_recalibration": before,
            "loss_before_recalibration": loss_before,
            "accuracy": after,
            "loss": loss_after,
        }


def calibration_subset(x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """A fixed subset of ``x`` (the same for every target and every trained model)."""
    generator = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=generator)[: min(samples, x.shape[0])]]


def _default_registries() -> Any:
    from compressor.host.manager import default_plugins

    return default_plugins().registries


@hookimpl
def register_evaluators(register):  # type: ignore[no-untyped-def]
    register(OneShotEval)

"""The ``realised`` evaluator: what compression buys once exported (METHODS.md §9).

A mask is not a speed-up. For a trained model this reports three things separately: mask
sparsity over eligible weights, the stored size of the exported model, and its CPU latency
measured side by side with the trained (dense-shaped) model. Export physically removes channels
whose removal cannot change the output (Torch-Pruning); unstructured and N:M masks remove none,
so those models stay dense and the numbers say so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    Column,
    Evaluation,
    EvaluationContext,
    Evaluator,
    ExportError,
    TypeConfig,
    compare_latency,
    export_pruned,
    hookimpl,
    serialized_bytes,
    torch_threads,
)


class Realised(Evaluator):
    class Config(TypeConfig):
        name: Literal["realised"] = "realised"
        batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
        repeats: int = Field(20, gt=0, description="alternating timed forward passes per model")
        threads: int = Field(1, gt=0, description="torch CPU threads while timing")

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        c = self.config
        trained = copy.deepcopy(model).cpu().eval()
        masks = {
            name: mask for name in context.masks if (mask := context.masks.get(name)) is not None
        }
        try:
            exported, report = export_pruned(trained, masks, context.example_inputs(1))
            note = None
        except ExportError as exc:  # keep the dense model, say why
            exported, report, note = trained, {}, str(exc)
        except Exception as exc:  # noqa: BLE001 — a model Torch-Pruning cannot trace stays dense
            exported, report, note = trained, {}, f"not exported ({type(exc).__name__}: {exc})"
        result: dict[str, Any] = {
            "mask_sparsity": context.sparsity()["global"],
            "bytes": {
                "trained": serialized_bytes(trained.state_dict()),
                "exported": serialized_bytes(exported.state_dict()),
            },
            "params": report.get("params"),
            "macs": report.get("macs"),
            "physically_smaller": bool(report)
            and report["params"]["pruned"] < report["params"]["dense"],
            "latency_ms": {},
        }
        if note:
            result["note"] = note
        with torch_threads(c.threads):
            for batch in c.batch_sizes:
                timing = compare_latency(
                    {"trained": trained, "exported": exported},
                    context.example_inputs(batch),
                    repeats=c.repeats,
                    forward=context.forward,
                )
                result["latency_ms"][f"batch{batch}"] = {
                    "trained": timing["trained"]["median_ms"],
                    "exported": timing["exported"]["median_ms"],
                    "speedup": timing["speedup"]["exported"],
                }
        metrics = {"stored_kb": result["bytes"]["exported"] / 1024}
        columns = [Column("stored_kb", "export KB", digits=0, order=0)]
        for position, (batch, timing) in enumerate(result["latency_ms"].items(), start=1):
            metrics[f"speedup_{batch}"] = timing["speedup"]
            columns.append(
                Column(f"speedup_{batch}", f"×b{batch.removeprefix('batch')}", order=position)
            )
        sizes = "/".join(str(b) for b in c.batch_sizes)
        titles = "/".join(f"×b{b}" for b in c.batch_sizes)
        return Evaluation(
            metrics=metrics,
            columns=columns,
            legend=(
                f"export KB and {titles}: stored size and CPU speed-up (batch {sizes}) of the "
                "exported model against the trained one"
            ),
            details=result,
        )


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(Realised)

"""The ``realised`` evaluator: what compression buys once exported (METHODS.md §9).

A mask is not a speed-up. For a trained model this reports three things separately: mask
sparsity over eligible weights, the stored size of the exported model, and its CPU latency
measured side by side with the trained (dense-shaped) model. Export physically removes channels
whose removal cannot change the output (Torch-Pruning); unstructured and N:M masks remove none,
so those models stay dense and the numbers say so.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compressor import hookimpl
from compressor.contract.bases import DataSplits, Evaluator, TypeConfig
from compressor.engine.session import Session
from compressor_plugins.evaluate.latency import compare_latency
from compressor_plugins.export.pruned import ExportError, export_pruned, serialized_bytes


class Realised(Evaluator):
    class Config(TypeConfig):
        name: Literal["realised"] = "realised"
        batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
        repeats: int = Field(20, gt=0, description="alternating timed forward passes per model")
        threads: int = Field(1, gt=0, description="torch CPU threads while timing")

    def run(self, session: Session, model: nn.Module, data: DataSplits) -> dict[str, Any]:
        c = self.config
        trained = copy.deepcopy(model).cpu().eval()
        example = data.test_x[:1].cpu()
        masks = {name: session.masks.get(name) for name in session.masks}
        try:
            exported, report = export_pruned(trained, masks, example)
            note = None
        except (ExportError, ValueError, RuntimeError) as exc:  # keep the dense model, say why
            exported, report, note = trained, {}, str(exc)
        result: dict[str, Any] = {
            "mask_sparsity": session.sparsity()["global"],
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
        threads = torch.get_num_threads()
        torch.set_num_threads(c.threads)
        try:
            for batch in c.batch_sizes:
                index = torch.arange(batch) % len(data.test_x)
                timing = compare_latency(
                    {"trained": trained, "exported": exported},
                    data.test_x[index].cpu(),
                    repeats=c.repeats,
                )
                result["latency_ms"][f"batch{batch}"] = {
                    "trained": timing["trained"]["median_ms"],
                    "exported": timing["exported"]["median_ms"],
                    "speedup": timing["speedup"]["exported"],
                }
        finally:
            torch.set_num_threads(threads)
        return result


@hookimpl
def register_evaluators(register: Any) -> None:
    register(Realised)

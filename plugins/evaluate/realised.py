"""The ``realised`` evaluator: what compression buys once exported (METHODS.md §9).

A mask is not a speed-up. For a trained model this reports separately: mask sparsity over
eligible weights, the exported model's parameters, FLOPs of one forward (``torch.utils.
flop_counter``: matmuls, convolutions and attention, at batch 1) and stored size, and its CPU
latency measured side by side with the trained (dense-shaped) model, timed alternately
(:func:`compare_latency`) on one thread. Export physically removes what cannot change the
output: dead channels (Torch-Pruning) or, in a Hugging Face transformer, dead attention heads
and feed-forward neurons (:func:`prune_transformer`, checked against the masked model).
Unstructured and N:M masks remove none, so those models stay dense and the numbers say so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.plugin_api import (
    Column,
    CompressorError,
    Evaluation,
    EvaluationContext,
    Evaluator,
    ExportError,
    TypeConfig,
    compare_latency,
    export_pruned,
    hookimpl,
    masked_copy,
    max_diff,
    prune_transformer,
    serialized_bytes,
    token_probe,
    torch_threads,
    unit_groups,
)

ATOL = 1e-5  # the exported model must reproduce the masked one this closely


def attention_flops(
    query: torch.Size, key: torch.Size, value: torch.Size, *_: Any, **__: Any
) -> int:
    """Scores and weighted values, ``[b, h, s, d]`` shapes: 2·b·h·s_q·s_k·(d + d_v)."""
    b, h, s_q, d = query
    return 2 * b * h * s_q * int(key[-2]) * (d + int(value[-1]))


# torch's counter knows the GPU attention kernels, not the CPU one (same maths)
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
Shown = Literal["size", "params", "flops", "speedup", "ms"]
DEFAULT_COLUMNS: list[Shown] = ["size", "speedup"]


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, x: Any, forward: Callable[[nn.Module, Any], Any]) -> int:
    """FLOPs of one forward on ``x`` as torch's flop counter sees them (a multiply-add is 2):
    matmuls, convolutions and attention (on the CPU kernel too)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with torch.inference_mode(), counter:
        forward(model, x)
    return int(counter.get_total_flops())


def export_transformer(
    trained: nn.Module, masks: Mapping[str, torch.Tensor], length: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The transformer with its dead heads and neurons removed, checked on token ids."""
    masked = masked_copy(trained, masks)
    small, found = prune_transformer(masked)
    diff = max_diff(small, masked, token_probe(masked, length))
    if not diff <= ATOL:
        raise ExportError(f"removing heads/neurons changes the output by {diff:.3g}")
    return small, {"max_abs_diff": diff, "kept": found["kept"]}


def exported_model(
    context: EvaluationContext, trained: nn.Module, masks: Mapping[str, torch.Tensor]
) -> tuple[nn.Module, dict[str, Any], str | None]:
    """``(exported model, export report, why it stayed dense or None)``."""
    x = context.example_inputs(1)
    try:
        if unit_groups(trained):
            length = int(x.shape[-1]) if isinstance(x, torch.Tensor) else 16
            exported, report = export_transformer(trained, masks, length)
        else:
            exported, report = export_pruned(trained, masks, x)
        return exported, report, None
    except (ExportError, CompressorError) as exc:  # keep the dense model, say why
        return trained, {}, str(exc)
    except Exception as exc:  # noqa: BLE001 — a model Torch-Pruning cannot trace stays dense
        return trained, {}, f"not exported ({type(exc).__name__}: {exc})"


def and_join(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]


class Realised(Evaluator):
    class Config(TypeConfig):
        name: Literal["realised"] = "realised"
        batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
        repeats: int = Field(20, gt=0, description="alternating timed forward passes per model")
        threads: int = Field(1, gt=0, description="torch CPU threads while timing")
        columns: list[Shown] = Field(
            default_factory=lambda: list(DEFAULT_COLUMNS),
            min_length=1,
            description="table columns: size (KB), params, flops (batch 1), speedup, ms",
        )

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        c = self.config
        trained = copy.deepcopy(model).cpu().eval()
        masks = {
            name: mask for name in context.masks if (mask := context.masks.get(name)) is not None
        }
        exported, report, note = exported_model(context, trained, masks)
        x1 = context.example_inputs(1)
        result: dict[str, Any] = {
            "mask_sparsity": context.sparsity()["global"],
            "bytes": {
                "trained": serialized_bytes(trained.state_dict()),
                "exported": serialized_bytes(exported.state_dict()),
            },
            "params": {"dense": params_of(trained), "pruned": params_of(exported)},
            "flops_batch1": {
                "dense": forward_flops(trained, x1, context.forward),
                "pruned": forward_flops(exported, x1, context.forward),
            },
            "macs": report.get("macs"),
            "physically_smaller": params_of(exported) < params_of(trained),
            "latency_ms": {},
        }
        for key in ("kept", "max_abs_diff"):
            if key in report:
                result[key] = report[key]
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
        return self.evaluation(result)

    def evaluation(self, result: dict[str, Any]) -> Evaluation:
        """The declared metrics and the configured columns, in a fixed order."""
        c = self.config
        metrics: dict[str, float] = {
            "stored_kb": result["bytes"]["exported"] / 1024,
            "params_k": result["params"]["pruned"] / 1e3,
            "mflops": result["flops_batch1"]["pruned"] / 1e6,
        }
        shown = set(c.columns)
        sizes = "/".join(str(b) for b in c.batch_sizes)
        described = [  # (kind, metric, title, digits, what the column says)
            ("params", "params_k", "params k", 0, "parameters (thousands)"),
            ("flops", "mflops", "MFLOPs b1", 1, "FLOPs per forward at batch 1 (torch's counter)"),
            ("size", "stored_kb", "export KB", 0, "stored size"),
        ]
        columns = [
            Column(metric, title, digits=digits, order=order - len(described))
            for order, (kind, metric, title, digits, _) in enumerate(described)
            if kind in shown
        ]
        titles = [title for kind, _, title, _, _ in described if kind in shown]
        says = [what for kind, _, _, _, what in described if kind in shown]
        for position, (batch, timing) in enumerate(result["latency_ms"].items()):
            size = batch.removeprefix("batch")
            metrics[f"speedup_{batch}"] = timing["speedup"]
            metrics[f"ms_{batch}"] = timing["exported"]
            if "ms" in shown:
                columns.append(Column(f"ms_{batch}", f"ms b{size}", digits=1, order=position))
            if "speedup" in shown:
                columns.append(Column(f"speedup_{batch}", f"×b{size}", order=position + 0.5))
        if "ms" in shown:
            titles.append("/".join(f"ms b{b}" for b in c.batch_sizes))
            says.append(f"median CPU milliseconds (batch {sizes})")
        if "speedup" in shown:
            titles.append("/".join(f"×b{b}" for b in c.batch_sizes))
            says.append(f"CPU speed-up (batch {sizes})")
        against = " against the trained one" if "speedup" in shown else ""
        legend = f"{and_join(titles)}: {and_join(says)} of the exported model{against}"
        return Evaluation(metrics=metrics, columns=columns, legend=legend, details=result)


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(Realised)

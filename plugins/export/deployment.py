"""The ``deployment`` evaluator: what a user gets in ONNX Runtime, the runtime they deploy with.

For a trained model it exports the fp32 graph and the static int8 (W8A8 QDQ) graph exactly as
``compressor export --format onnx [--int8]`` does (channel-pruned models as the smaller graph),
then reports: the int8 model's test metric measured *in ONNX Runtime*, the size of each file
(torch state dict, ONNX fp32, ONNX int8), and the latency of torch eager fp32, ORT fp32 and ORT
int8 at each batch size — one thread, the three timed in alternation (the order rotating each
round) on the same inputs, medians of process CPU time (what a busy shared host disturbs
least) with wall-clock medians beside them.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from compressor.plugin_api import (
    Column,
    CompressionContext,
    ConfigError,
    Curve,
    CurvePoint,
    Evaluation,
    EvaluationContext,
    Evaluator,
    InputError,
    TypeConfig,
    hookimpl,
    interleaved_times,
    serialized_bytes,
    torch_threads,
)
from compressor_plugins.export.onnx_export import (
    OrtModel,
    export_onnx,
    feeds,
    require_onnx,
    run_inputs,
    session,
)


def runtime_calls(
    model: nn.Module, graphs: Mapping[str, Any], inputs: Any, forward: Callable[..., Any]
) -> dict[str, Callable[[], Any]]:
    """One forward of the torch model and of each ONNX Runtime session on ``inputs``."""
    data = feeds(inputs)
    calls: dict[str, Callable[[], Any]] = {"torch": lambda: forward(model, inputs)}
    for name, graph in graphs.items():
        calls[name] = functools.partial(graph.run, None, data)
    return calls


class Deployment(Evaluator):
    class Config(TypeConfig):
        name: Literal["deployment"] = "deployment"
        batch_sizes: list[int] = Field(default_factory=lambda: [1, 64], min_length=1)
        repeats: int = Field(20, gt=0, description="alternating timed forward passes per runtime")
        threads: int = Field(1, gt=0, description="torch and ONNX Runtime threads while timing")
        calibration_samples: int = Field(1000, gt=0)
        seed: int = 0
        calibration_batches: int = Field(8, gt=0)
        batch_size: int = Field(32, gt=1)

    def check(self, context: CompressionContext) -> None:
        try:
            require_onnx()
        except InputError as exc:  # a missing package: located at the evaluator
            raise ConfigError(str(exc)) from None

    def run(self, context: EvaluationContext, model: nn.Module) -> Evaluation:
        c = self.config
        trained = copy.deepcopy(model).cpu().eval()
        inputs, calibration = run_inputs(context, c)
        masks = {n: m for n in context.masks if (m := context.masks.get(n)) is not None}
        metric = context.metric
        with tempfile.TemporaryDirectory(prefix="compressor-deploy-") as tmp:
            fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            report = export_onnx(
                trained,
                int8_path,
                inputs,
                calibration=calibration,
                int8=True,
                masks=masks,
                fp32_path=fp32_path,
            )
            graphs = {
                "ort_fp32": session(fp32_path, c.threads),
                "ort_int8": session(int8_path, c.threads),
            }
            torch_score = context.measure(trained)[metric.name]
            int8_score = context.measure(OrtModel(graphs["ort_int8"]))[metric.name]
            latency: dict[str, Any] = {}
            with torch_threads(c.threads):
                for batch in c.batch_sizes:
                    calls = runtime_calls(
                        trained, graphs, context.example_inputs(batch), context.forward
                    )
                    times = interleaved_times(calls, repeats=c.repeats)
                    base = times["torch"]["cpu_ms"]
                    for timing in times.values():
                        timing["speedup"] = base / timing["cpu_ms"]
                    latency[f"batch{batch}"] = times
        sizes = {
            "torch_fp32": serialized_bytes(trained.state_dict()),
            "onnx_fp32": report["fp32"]["bytes"],
            "onnx_int8": report["bytes"],
        }
        details = {
            "export": report,
            "bytes": sizes,
            "latency_ms": latency,
            metric.name: {"torch_fp32": torch_score, "ort_int8": int8_score},
            "threads": c.threads,
        }
        return self._evaluation(metric, torch_score, int8_score, sizes, latency, details)

    def _evaluation(
        self,
        metric: Any,
        torch_score: float,
        int8_score: float,
        sizes: dict[str, int],
        latency: dict[str, Any],
        details: dict[str, Any],
    ) -> Evaluation:
        metrics = {
            f"int8_{metric.name}": int8_score,
            f"int8_delta_{metric.name}": int8_score - torch_score,
            "int8_kb": sizes["onnx_int8"] / 1024,
            "fp32_kb": sizes["onnx_fp32"] / 1024,
        }
        columns = [
            Column(
                f"int8_{metric.name}",
                f"int8 {metric.title}" + (" %" if metric.percent else ""),
                percent=metric.percent,
                order=0,
            ),
            Column("int8_kb", "int8 KB", digits=0, order=1),
        ]
        latency_points = []
        for position, (batch, times) in enumerate(latency.items(), start=2):
            b = batch.removeprefix("batch")
            metrics[f"int8_speedup_b{b}"] = times["ort_int8"]["speedup"]
            metrics[f"fp32_ort_speedup_b{b}"] = times["ort_fp32"]["speedup"]
            metrics[f"int8_ms_b{b}"] = times["ort_int8"]["cpu_ms"]
            columns.append(Column(f"int8_speedup_b{b}", f"int8 ORT ×b{b}", order=position))
        last = next(reversed(latency)) if latency else None
        if last is not None:
            times = latency[last]
            scores = {"torch": torch_score, "ort_fp32": torch_score, "ort_int8": int8_score}
            latency_points = [
                CurvePoint(times[name]["cpu_ms"], scores[name], label=name) for name in scores
            ]
        size_points = [
            CurvePoint(sizes["torch_fp32"] / 1024, torch_score, label="torch fp32"),
            CurvePoint(sizes["onnx_fp32"] / 1024, torch_score, label="ONNX fp32"),
            CurvePoint(sizes["onnx_int8"] / 1024, int8_score, label="ONNX int8"),
        ]
        title = metric.title
        curves = [
            Curve(
                "deploy_size",
                f"{title} against file size",
                "file KB",
                title,
                size_points,
                y_percent=metric.percent,
                higher_is_better=metric.higher_is_better,
            )
        ]
        if latency_points and last is not None:
            b = last.removeprefix("batch")
            curves.append(
                Curve(
                    "deploy_latency",
                    f"{title} against CPU latency (batch {b}, one thread)",
                    f"ms per batch of {b} (CPU time)",
                    title,
                    latency_points,
                    y_percent=metric.percent,
                    higher_is_better=metric.higher_is_better,
                )
            )
        batches = "/".join(b.removeprefix("batch") for b in latency)
        return Evaluation(
            metrics=metrics,
            columns=columns,
            curves=curves,
            legend=(
                f"int8 {title}: the static int8 ONNX model's {title} measured in ONNX Runtime; "
                f"int8 KB: its file; int8 ORT ×b{batches}: its CPU-time speed-up over the torch "
                "fp32 model (one thread, timed side by side, medians)"
            ),
            details=details,
        )


@hookimpl
def register_evaluators(register: Callable[[type], None]) -> None:
    register(Deployment)

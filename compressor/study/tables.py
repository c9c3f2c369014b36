"""The study table (terminal, Markdown, CSV) and its legend, from a :class:`StudySummary`.

Columns: method, seeds, the trained model's metric and sparsity, then every column the
evaluators declared, then step time against the baseline and wall time. The legend explains
exactly the columns shown.
"""

from __future__ import annotations

import math
import statistics

from compressor.contract.evaluation import Column
from compressor.study.summary import MethodSummary, StudySummary, mean_std


def format_values(values: list[float], *, percent: bool, digits: int = 2) -> str:
    """``mean ± std`` over seeds (just the value for one seed); ``—`` when there is none."""
    mean, std = mean_std([v for v in values if v is not None and math.isfinite(v)])
    if math.isnan(mean):
        return "—"
    scale = 100.0 if percent else 1.0
    if len(values) > 1:
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def _step_ratio(m: MethodSummary, base_step: float | None) -> str:
    if not base_step or not m.step_time_s:
        return "—"
    return f"{statistics.median(m.step_time_s) / base_step:.2f}"


def baseline_step(summary: StudySummary) -> float | None:
    """Median seconds per step of the baseline method (None: no ratio column)."""
    baseline = next((m for m in summary.methods if m.label == summary.baseline), None)
    return statistics.median(baseline.step_time_s) if baseline and baseline.step_time_s else None


def table_rows(summary: StudySummary) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by every output format."""
    metric = summary.metric
    base_step = baseline_step(summary)
    columns = [c for c in summary.columns if any(c.key in m.values for m in summary.methods)]
    header = ["method", "seeds", f"trained {metric.name}" + (" %" if metric.percent else "")]
    header += ["sparsity", *(c.column.title for c in columns)]
    if base_step:
        header.append(f"step ×{summary.baseline}")
    header.append("wall s")
    rows = []
    for m in summary.methods:
        row = [m.label, str(len(m.seeds)) + (f" ({len(m.failed)} failed)" if m.failed else "")]
        row.append(format_values(m.values.get(f"test_{metric.name}", []), percent=metric.percent))
        sparsity = m.values.get("sparsity", [])
        row.append(f"{statistics.fmean(sparsity):.3f}" if sparsity else "—")
        for c in columns:
            row.append(_cell(m.values.get(c.key, []), c.column))
        if base_step:
            row.append(_step_ratio(m, base_step))
        row.append(seconds(statistics.fmean(m.wall_time_s)) if m.wall_time_s else "—")
        rows.append(row)
    return header, rows


def seconds(value: float) -> str:
    """Whole seconds, but a run under 10 s keeps a decimal (a short one is not "0")."""
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _cell(values: list[float], column: Column) -> str:
    return format_values(values, percent=column.percent, digits=column.digits)


def legend(summary: StudySummary) -> str:
    """One paragraph naming every column shown, nothing that is not."""
    metric = summary.metric
    shown = {
        c.evaluator for c in summary.columns if any(c.key in m.values for m in summary.methods)
    }
    parts = [
        f"trained {metric.name}: {metric.title} of the trained model",
        "sparsity: exact zeros over prunable weights",
        *(summary.legends[e] for e in summary.legends if e in shown),
    ]
    if baseline_step(summary):
        parts.append(
            f"step ×{summary.baseline}: process CPU time per training step (periodic evaluation "
            f"included) against {summary.baseline}"
        )
    parts.append("wall s: the whole run")
    return "; ".join(parts) + ". Values are the mean ± std over seeds; % columns in percent."


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

"""Study plots from a :class:`StudySummary`: one figure per declared curve, and training.

A curve figure has two panels: everything, and a zoom on the best values. Per method, ``line``
points are averaged over seeds and joined (a band shows the spread), ``marker`` points are
hollow diamonds and ``star`` points stars. Axis labels are the evaluator's, with the metric's
direction ("higher is better" or "lower is better").
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from compressor.contract.evaluation import Curve
from compressor.study.summary import MethodSummary, StudySummary


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def direction(higher_is_better: bool | None) -> str:
    if higher_is_better is None:
        return ""
    return " (higher is better)" if higher_is_better else " (lower is better)"


def plot_curve(summary: StudySummary, key: str, curve: Curve, path: Path) -> None:
    """Every method's points of the curve ``key``, full range and zoomed on the best."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=120)
    sx = 100.0 if curve.x_percent else 1.0
    sy = 100.0 if curve.y_percent else 1.0
    markers: list[str] = []
    for ax in axes:
        for index, m in enumerate(summary.methods):
            if m.seeds and key in m.curves:
                markers += _plot_method(ax, m, m.curves[key], f"C{index % 10}", sx, sy)
        ax.set_xlabel(curve.x_label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(curve.y_label + direction(curve.higher_is_better))
    axes[0].set_title("all points")
    if curve.y_percent and curve.higher_is_better is not False:
        _clip_percent(axes[0])
    _zoom(axes[1], curve, sy)
    handles, labels = axes[0].get_legend_handles_labels()
    names = sorted(set(markers))
    if names:
        (marker,) = axes[0].plot(
            [], [], marker="D", color="grey", linestyle="none", markerfacecolor="none"
        )
        handles.append(marker)
        labels.append(f"{', '.join(names)} (hollow diamond)")
    fig.suptitle(f"{curve.title} — {summary.name}")
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _plot_method(
    ax: Any,
    m: MethodSummary,
    points: dict[tuple[str, str], list[tuple[float, float]]],
    color: str,
    sx: float,
    sy: float,
) -> list[str]:
    """Draw one method's points; returns the labels of its marker points."""
    line: list[tuple[float, float, float, float]] = []  # x, low, mean, high
    markers = []
    for (label, style), values in points.items():
        xs = [sx * x for x, _ in values]
        ys = [sy * y for _, y in values]
        x, mid = statistics.fmean(xs), statistics.fmean(ys)
        if style == "line":
            line.append((x, min(ys), mid, max(ys)))
        elif style == "marker":
            ax.plot([x], [mid], marker="D", color=color, linestyle="none",
                    markerfacecolor="none", markersize=8)  # fmt: skip
            markers.append(label)
        else:
            ax.errorbar([x], [mid], yerr=[[mid - min(ys)], [max(ys) - mid]], marker="*",
                        markersize=13, color=color, linestyle="none",
                        label=f"{m.label} ({label})" if label else m.label)  # fmt: skip
    if line:
        line.sort()
        ax.plot([p[0] for p in line], [p[2] for p in line], marker="o", color=color, label=m.label)
        ax.fill_between([p[0] for p in line], [p[1] for p in line], [p[3] for p in line],
                        color=color, alpha=0.15, linewidth=0)  # fmt: skip
    return markers


def _values(ax: Any) -> list[float]:
    return [float(y) for line in ax.get_lines() for y in line.get_ydata()]


def percent_limits(values: list[float]) -> tuple[float, float]:
    """The y-range of a percentage axis: the data's own range with a margin of 8% of it (at
    least half a point), cut at 40 points below the best when some points collapse to chance,
    and kept inside [0, 100]."""
    top = max(values)
    low = max(min(values), top - 40)
    pad = max(0.08 * (top - low), 0.5)
    return max(0.0, low - pad), min(100.0, top + pad)


def _clip_percent(ax: Any) -> None:
    values = _values(ax)
    if values:
        ax.set_ylim(*percent_limits(values))


def _zoom(ax: Any, curve: Curve, scale: float) -> None:
    """Zoom on the best values: the top (or bottom) few units when some points collapse."""
    values = _values(ax)
    if not values:
        return
    span = 4.0 if curve.y_percent else max(abs(max(values) - min(values)) / 10, 1e-6)
    if curve.higher_is_better is False:
        best = min(values)
        ax.set_ylim(best - span / 8, best + span)
    else:
        best = max(values)
        ax.set_ylim(best - span, min(best + span / 8, 100.0 if curve.y_percent else best + span))
    ax.set_title(f"zoom: the best {span:g}" + (" percentage points" if curve.y_percent else ""))


def plot_training(summary: StudySummary, path: Path) -> None:
    """The test metric over training, averaged over seeds."""
    plt = _pyplot()
    metric = summary.metric
    scale = 100.0 if metric.percent else 1.0
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for index, m in enumerate(summary.methods):
        curves = [c for c in m.training if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        xs = [curves[0][i][0] for i in range(length)]
        ys = [scale * statistics.fmean(c[i][1] for c in curves) for i in range(length)]
        ax.plot(xs, ys, marker=".", color=f"C{index % 10}", label=m.label)
    ax.set_xlabel("epoch")
    unit = " (%)" if metric.percent else ""
    ax.set_ylabel(f"{metric.title}{unit}{direction(metric.higher_is_better)}")
    ax.set_title(f"Training curves — {summary.name}")
    ax.grid(True, alpha=0.3)
    if metric.percent and metric.higher_is_better:
        _clip_percent(ax)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

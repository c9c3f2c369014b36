"""Study reports from the store alone: terminal table, Markdown, CSV, JSON and PNG plots.

``compressor report STUDY_DIR`` calls :func:`render` without re-running anything.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compressor.study.store import Store


@dataclass
class MethodSummary:
    """Everything reported for one method (label), aggregated over its seeds."""

    label: str
    seeds: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    step_time_s: list[float] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    is_baseline: bool = False
    oneshot: dict[str, list[tuple[float, float]]] = field(
        default_factory=dict
    )  # target -> (sparsity, acc)
    training: list[list[tuple[float, float]]] = field(default_factory=list)


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def summarise(store: Store) -> tuple[list[MethodSummary], list[str]]:
    """Per-method summaries in study order, and the one-shot targets in order of appearance."""
    methods: dict[str, MethodSummary] = {}
    targets: list[str] = []
    for label in (store.meta("labels") or "").splitlines():
        methods[label] = MethodSummary(label)
    for row in store.runs():
        summary = methods.setdefault(row.label, MethodSummary(row.label))
        if row.status != "done":
            summary.failed.append(f"seed {row.seed}: {row.error}")
            continue
        summary.seeds.append(row.seed)
        for name, value in store.metrics(row.key).items():
            summary.values.setdefault(name, []).append(value)
        if row.step_time_s:
            summary.step_time_s.append(row.step_time_s)
        if row.wall_time_s:
            summary.wall_time_s.append(row.wall_time_s)
        for sparsity, accuracy, target in store.curve(row.key, "oneshot"):
            summary.oneshot.setdefault(target, []).append((sparsity, accuracy))
            if target not in targets:
                targets.append(target)
        summary.training.append([(x, y) for x, y, _ in store.curve(row.key, "training")])
        report = store.report(row.key) or {}
        config = report.get("recipe_config", {})
        summary.is_baseline = not config.get("modifiers") and config.get("wrapper") is None
    numeric = sorted((t for t in targets if _is_number(t)), key=float)
    return list(methods.values()), numeric + [t for t in targets if not _is_number(t)]


def _pct(values: list[float]) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


REALISED_COLUMNS = {"stored_kb": "export KB", "speedup_batch1": "×b1", "speedup_batch64": "×b64"}


def table_rows(
    methods: list[MethodSummary], targets: list[str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by every output format; see :data:`LEGEND` for the columns."""
    baseline = next((m for m in methods if m.is_baseline and m.step_time_s), None)
    base_step = statistics.median(baseline.step_time_s) if baseline else None
    realised = [k for k in REALISED_COLUMNS if any(k in m.values for m in methods)]
    header = ["method", "seeds", "trained acc %", "sparsity"]
    header += [_target_name(t) for t in targets]
    header += [REALISED_COLUMNS[k] for k in realised]
    header += ["step ×SGD", "wall s"]
    rows = []
    for m in methods:
        row = [m.label, str(len(m.seeds)) + (f" ({len(m.failed)} failed)" if m.failed else "")]
        row.append(_pct(m.values.get("test_accuracy", [])))
        sparsity = m.values.get("sparsity", [])
        row.append(f"{statistics.fmean(sparsity):.3f}" if sparsity else "—")
        for target in targets:
            row.append(_pct([acc for _, acc in m.oneshot.get(target, [])]))
        for key in realised:
            values = m.values.get(key, [])
            row.append(
                f"{statistics.fmean(values):.{0 if key == 'stored_kb' else 2}f}" if values else "—"
            )
        ratio = (
            statistics.median(m.step_time_s) / base_step
            if base_step and m.step_time_s
            else math.nan
        )
        row.append("—" if math.isnan(ratio) else f"{ratio:.2f}")
        row.append(f"{statistics.fmean(m.wall_time_s):.0f}" if m.wall_time_s else "—")
        rows.append(row)
    return header, rows


LEGEND = (
    "trained acc: test accuracy of the trained model; sparsity: exact zeros over prunable weights; "
    "50%…95%, 2:4: test accuracy after one-shot compression of the trained model to that target "
    "and BN re-calibration; export KB and ×b1/×b64: stored size and CPU speed-up (batch 1/64) of "
    "the exported model against the trained one; step ×SGD: training wall time per step (periodic "
    "evaluation included) against plain SGD. "
    "Accuracies in %, mean ± std over seeds."
)


def _target_name(target: str) -> str:
    return f"{100 * float(target):g}%" if _is_number(target) else target


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_robustness(
    methods: list[MethodSummary], targets: list[str], path: Path, title: str
) -> None:
    """Accuracy versus sparsity. Dense-trained methods: one one-shot curve each (a band for the
    spread across seeds) and hollow diamonds for pattern targets such as 2:4. Sparse-trained
    methods: a star at the sparsity they were trained to. Right panel: the top of the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=120)
    numeric = [t for t in targets if _is_number(t)]
    patterns = [t for t in targets if not _is_number(t)]
    for ax in axes:
        for index, m in enumerate(methods):
            if m.seeds:
                _plot_method(ax, m, f"C{index % 10}", numeric, patterns)
        ax.set_xlabel("sparsity of prunable weights (%)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy after BN re-calibration (%)")
    axes[0].set_title("all targets")
    _zoom(axes[0])
    tops = [y for line in axes[1].get_lines() for y in line.get_ydata()]
    top = max(tops) if tops else 100.0
    axes[1].set_ylim(top - 4, min(100.0, top + 0.5))
    axes[1].set_xlim(40, 100)
    axes[1].set_title("zoom: the top 4 percentage points")
    handles, labels = axes[0].get_legend_handles_labels()
    if patterns:
        (marker,) = axes[0].plot(
            [], [], marker="D", color="grey", linestyle="none", markerfacecolor="none"
        )
        handles.append(marker)
        labels.append(f"one-shot {', '.join(patterns)} (hollow diamond)")
    fig.suptitle(title)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _plot_method(
    ax: Any, m: MethodSummary, color: str, numeric: list[str], patterns: list[str]
) -> None:
    trained = [100 * a for a in m.values.get("test_accuracy", [])]
    trained_sparsity = 100 * statistics.fmean(m.values.get("sparsity", [0.0]))
    if not trained:
        return
    if trained_sparsity >= 5:  # trained sparse: its one-shot curve would start past its own point
        mid = statistics.fmean(trained)
        ax.errorbar(
            [trained_sparsity],
            [mid],
            yerr=[[mid - min(trained)], [max(trained) - mid]],
            marker="*",
            markersize=13,
            color=color,
            linestyle="none",
            label=f"{m.label} (trained sparse)",
        )
        return
    xs, lo, mid_line, hi = (
        [trained_sparsity],
        [min(trained)],
        [statistics.fmean(trained)],
        [max(trained)],
    )
    for target in numeric:
        points = m.oneshot.get(target, [])
        if points:
            accs = [100 * a for _, a in points]
            xs.append(100 * statistics.fmean(s for s, _ in points))
            lo.append(min(accs))
            mid_line.append(statistics.fmean(accs))
            hi.append(max(accs))
    ax.plot(xs, mid_line, marker="o", color=color, label=f"{m.label} (dense, then one-shot)")
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    for target in patterns:
        points = m.oneshot.get(target, [])
        if points:
            accs = [100 * a for _, a in points]
            ax.plot(
                [100 * statistics.fmean(s for s, _ in points)],
                [statistics.fmean(accs)],
                marker="D",
                color=color,
                linestyle="none",
                markerfacecolor="none",
                markersize=8,
            )


def _zoom(ax: Any) -> None:
    """Keep the interesting top of the accuracy range readable when some points collapse."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys:
        top = max(ys)
        ax.set_ylim(max(0.0, min(min(ys), top - 40)) - 1, min(100.0, top + 1))


def plot_training(methods: list[MethodSummary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for index, m in enumerate(methods):
        curves = [c for c in m.training if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        xs = [curves[0][i][0] for i in range(length)]
        ys = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(length)]
        ax.plot(xs, ys, marker=".", color=f"C{index % 10}", label=m.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _zoom(ax)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(study_dir: str | Path, *, console: Console | None = None) -> dict[str, Path]:
    """Write every report file for the study in ``study_dir`` and print the table."""
    from compressor.study.runner import STORE

    study_dir = Path(study_dir)
    store_path = study_dir / STORE
    if not store_path.exists():
        from compressor.contract.errors import CompressorError

        raise CompressorError(f"{study_dir} holds no study results ({STORE} not found)")
    store = Store(store_path)
    try:
        methods, targets = summarise(store)
        name = store.meta("name") or study_dir.name
        header, rows = table_rows(methods, targets)
    finally:
        store.close()
    console = console or Console()
    if not console.is_terminal:
        console = Console(file=console.file, width=200)  # files and pipes: no wrapping
    table = Table(title=f"study '{name}'", caption=LEGEND, caption_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for m in methods:
        for failure in m.failed:
            console.print(f"[red]{m.label} {failure}[/red]")

    files = {
        "markdown": study_dir / "report.md",
        "csv": study_dir / "report.csv",
        "json": study_dir / "report.json",
        "robustness": study_dir / "robustness.png",
        "training": study_dir / "training.png",
    }
    files["markdown"].write_text(f"# Study: {name}\n\n" + markdown(header, rows) + f"\n{LEGEND}\n")
    with files["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    files["json"].write_text(
        json.dumps(
            {
                "study": name,
                "targets": targets,
                "methods": [
                    {
                        "label": m.label,
                        "seeds": m.seeds,
                        "failed": m.failed,
                        "metrics": {
                            k: {"values": v, "mean": mean_std(v)[0], "std": mean_std(v)[1]}
                            for k, v in m.values.items()
                        },
                        "step_time_s": m.step_time_s,
                        "wall_time_s": m.wall_time_s,
                    }
                    for m in methods
                ],
            },
            indent=2,
        )
        + "\n"
    )
    plot_robustness(methods, targets, files["robustness"], f"One-shot robustness — {name}")
    plot_training(methods, files["training"], f"Training curves — {name}")
    console.print("wrote " + ", ".join(str(p) for p in files.values()))
    return files

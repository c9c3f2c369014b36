"""Study reports from the store alone: terminal table, Markdown, CSV, JSON, PNG plots and one
self-contained ``report.html``.

``compressor report STUDY_DIR`` calls :func:`render` without re-running anything.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compressor.contract.errors import CompressorError
from compressor.study.plots import plot_curve, plot_training
from compressor.study.store import STORE, Store
from compressor.study.summary import StudySummary, mean_std, summarise
from compressor.study.tables import legend, markdown, table_rows


def curve_files(summary: StudySummary, study_dir: Path) -> dict[str, Path]:
    """One PNG per declared curve, named after the curve (prefixed by its evaluator when two
    evaluators declare curves of the same name)."""
    names = [key.split(":", 1)[1] for key in summary.curves]
    files = {}
    for key in summary.curves:
        evaluator, name = key.split(":", 1)
        stem = name if names.count(name) == 1 else f"{evaluator}-{name}"
        files[key] = study_dir / f"{stem}.png"
    return files


def render(study_dir: str | Path, *, console: Console | None = None) -> dict[str, Path]:
    """Write every report file for the study in ``study_dir`` and print the table."""
    study_dir = Path(study_dir)
    store_path = study_dir / STORE
    if not store_path.exists():
        raise CompressorError(f"{study_dir} holds no study results ({STORE} not found)")
    store = Store(store_path)
    try:
        summary = summarise(store, store.meta("name") or study_dir.name)
    finally:
        store.close()
    header, rows = table_rows(summary)
    caption = legend(summary)
    console = console or Console()
    if not console.is_terminal:
        console = Console(file=console.file, width=200)  # files and pipes: no wrapping
    table = Table(title=f"study '{summary.name}'", caption=caption, caption_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for m in summary.methods:
        for failure in m.failed:
            console.print(f"[red]{m.label} {failure}[/red]", markup=True, highlight=False)

    files = {
        "markdown": study_dir / "report.md",
        "table": study_dir / "report.csv",
        "json": study_dir / "report.json",
    }
    files["markdown"].write_text(
        f"# Study: {summary.name}\n\n" + markdown(header, rows) + f"\n{caption}\n"
    )
    with files["table"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    files["json"].write_text(json.dumps(report_json(summary), indent=2) + "\n")
    for key, path in curve_files(summary, study_dir).items():
        plot_curve(summary, key, summary.curves[key], path)
        files[key] = path
    files["training"] = study_dir / "training.png"
    plot_training(summary, files["training"])
    files["html"] = study_dir / "report.html"
    images = [path for key, path in files.items() if path.suffix == ".png"]
    write_html(files["html"], summary.name, header, rows, caption, images)
    console.print("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def write_html(
    path: Path,
    name: str,
    header: list[str],
    rows: list[list[str]],
    caption: str,
    images: list[Path],
) -> None:
    """One self-contained page (the table and every plot inline, nothing fetched), so a study
    can be shared as a single file."""
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(image.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(image.read_bytes()).decode()}"></figure>\n'
        for image in images
    )
    title = html.escape(f"Study: {name}")
    path.write_text(
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>\n'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head>\n"
        f"<body><h1>{title}</h1>\n<table><tr>{cells}</tr>\n{body}</table>\n"
        f"<p>{html.escape(caption)}</p>\n{figures}</body></html>\n"
    )


def report_json(summary: StudySummary) -> dict[str, object]:
    """Every stored metric per method (values per seed, mean, std) and the declared columns."""
    return {
        "study": summary.name,
        "baseline": summary.baseline,
        "metric": summary.metric.__dict__,
        "columns": [
            {"key": c.key, "evaluator": c.evaluator, "title": c.column.title}
            for c in summary.columns
        ],
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
            for m in summary.methods
        ],
    }

"""Helpers shared by the benchmark scripts: timing statistics and result files."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def write_payload(payload: dict[str, Any], path: Path, *, with_machine: bool = True) -> Path:
    """The one writer of a bench result file: indented JSON, the machine first (unless the
    payload describes its own), the folder made; prints where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"machine": machine(), **payload} if with_machine else payload
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def result_path(name: str) -> Path:
    """``bench/results/<name>.json``: where a script's result goes unless told otherwise."""
    return RESULTS / f"{name}.json"


def study_parser(
    description: str, *, smoke: str, study: Path | None = None
) -> argparse.ArgumentParser:
    """The options every study-driving bench script shares (robustness, q_post, amortised):
    where the store is, overrides, report-only, smoke size, the JSON file, progress, workers and
    threads; with ``study``, also ``--study`` (default ``study``) and ``--seeds``."""
    parser = argparse.ArgumentParser(description=description)
    if study is not None:
        parser.add_argument("--study", type=Path, default=study)
    parser.add_argument("--out", type=Path, default=None, help="study folder (results.sqlite)")
    if study is not None:
        parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--report-only", action="store_true", help="only read the store")
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--json", type=Path, default=None, help="result file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once (worker processes)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine two threads per "
        "process ran 2-5x slower than one)",
    )
    return parser

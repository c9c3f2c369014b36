"""Q-post — data-aware one-shot methods on the Q protocol (BENCHMARKS.md Q-post; issue 14).

Runs the study ``bench/studies/q-post.yaml`` (SGD and CrAM+ Multi, 3 seeds) into
``bench/results/q-post/`` through :func:`compressor.study.runner.run_study` (finished runs are
skipped, so an interrupted study resumes), then reads the store and prints, as accuracy % after
BN re-calibration with mean ± std over seeds:

* sparsity: {SGD, CrAM+} × {magnitude global, magnitude per layer, Wanda, SparseGPT, and
  Wanda/SparseGPT with ``scope: global`` (magnitude's allocation)} at 50/70/80/90/95% and 2:4
  (2:4 only where the method has it: the nm row is magnitude's);
* quantization: dense, RTN and GPTQ at int8 and int4;
* the answer to "does CrAM+ followed by SparseGPT beat either alone?": for every level, the
  per-seed differences CrAM+·SparseGPT − CrAM+·magnitude (CrAM+ alone, with the criterion it
  was trained for) and CrAM+·SparseGPT − SGD·SparseGPT (SparseGPT alone), mean ± std over the
  seeds both have, and a verdict per level ("beats both", "beats neither", or which), for
  SparseGPT as published (uniform per layer) and with magnitude's allocation.

Writes ``bench/results/q_post.json``.

    python bench/q_post.py                      # run what is missing, then report
    python bench/q_post.py --report-only        # only read the store
    python bench/q_post.py --smoke              # a tiny version (seconds), for CI
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/q_post.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, result_path, study_parser, write_payload  # noqa: E402
from bench.robustness import cell, collect, column, load, run, stats, value  # noqa: E402

STUDY = ROOT / "bench" / "studies" / "q-post.yaml"
LEVELS = ["0.5", "0.7", "0.8", "0.9", "0.95"]
SGD, CRAM = "SGD", "CrAM+ Multi"

# rows of the sparsity table: method -> (metric label per level, metric label of its 2:4)
METHODS: dict[str, tuple[str, str | None]] = {
    "magnitude (global)": ("{}", "2:4"),
    "magnitude (per layer)": ("layer {}", None),
    "Wanda": ("wanda {}", "wanda 2:4"),
    "Wanda (global allocation)": ("wanda global {}", None),
    "SparseGPT": ("sparsegpt {}", "sparsegpt 2:4"),
    "SparseGPT (global allocation)": ("sparsegpt global {}", None),
}
# the SparseGPT variants the question is asked of: (name, label per level, label of its 2:4)
SPARSEGPT = [
    ("SparseGPT", "sparsegpt {}", "sparsegpt 2:4"),
    ("SparseGPT (global allocation)", "sparsegpt global {}", None),
]
QUANT = ["rtn int8", "rtn int4", "gptq int8", "gptq int4"]

SMOKE_SET = [
    "data.samples=300",
    "data.batch_size=120",
    "model.width=8",
    "evaluate.oneshot.bn_recalibration.batches=2",
    "evaluate.oneshot.bn_recalibration.batch_size=50",
    "evaluate.oneshot.bn_recalibration.calibration_samples=100",
]


def metric(label: str) -> str:
    return f"oneshot:{label}"


def sparsity_table(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], dict[str, Any]]:
    header = ["training", "method", "seeds", "dense"] + [f"{100 * float(x):g}%" for x in LEVELS]
    lines = ["| " + " | ".join(header + ["2:4"]) + " |", "|" + "---|" * (len(header) + 1)]
    data: dict[str, Any] = {}
    for training, by_seed in runs.items():
        if not by_seed:
            continue
        for method, (pattern, nm) in METHODS.items():
            row = {level: column(by_seed, metric(pattern.format(level))) for level in LEVELS}
            row["2:4"] = column(by_seed, metric(nm)) if nm else None
            row["dense"] = column(by_seed, metric("dense"))
            data.setdefault(training, {})[method] = row
            cells = [cell(row[level]) for level in LEVELS] + [cell(row["2:4"])]
            seeds = ",".join(str(s) for s in sorted(by_seed))
            lines.append(
                f"| {training} | {method} | {seeds} | {cell(row['dense'])} | "
                + " | ".join(cells)
                + " |"
            )
    return lines, data


def quant_table(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], dict[str, Any]]:
    header = ["training", "seeds", "dense", *QUANT]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    data: dict[str, Any] = {}
    for training, by_seed in runs.items():
        if not by_seed:
            continue
        row = {label: column(by_seed, metric(label)) for label in ["dense", *QUANT]}
        data[training] = row
        seeds = ",".join(str(s) for s in sorted(by_seed))
        lines.append(
            f"| {training} | {seeds} | "
            + " | ".join(cell(row[x]) for x in ["dense", *QUANT])
            + " |"
        )
    return lines, data


def differences(
    a: dict[int, dict[str, Any]], name_a: str, b: dict[int, dict[str, Any]], name_b: str
) -> dict[str, Any]:
    """Per-seed ``a − b`` (accuracy points) over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    values = []
    for seed in seeds:
        x, y = value(a[seed], name_a), value(b[seed], name_b)
        if x is not None and y is not None:
            values.append(x - y)
    return {**stats(values), "seeds": seeds}


def answer(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Does CrAM+ followed by SparseGPT beat CrAM+ alone (global magnitude, what it was trained
    for) and SparseGPT alone (on the SGD model), level by level, for each SparseGPT variant?"""
    cram, sgd = runs.get(CRAM, {}), runs.get(SGD, {})
    lines = [
        "Does CrAM+ followed by SparseGPT beat either alone? Accuracy points, per-seed "
        "differences, mean ± std:",
        "",
        "| SparseGPT | level | CrAM+·SparseGPT | − CrAM+·magnitude | − SGD·SparseGPT | verdict |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for variant, pattern, nm in SPARSEGPT:
        for level in [*LEVELS, "2:4"]:
            if level == "2:4" and nm is None:
                continue
            ours = str(nm) if level == "2:4" else pattern.format(level)
            alone = "2:4" if level == "2:4" else level
            both = column(cram, metric(ours))
            vs_cram = differences(cram, metric(ours), cram, metric(alone))
            vs_sparsegpt = differences(cram, metric(ours), sgd, metric(ours))
            wins = [
                name
                for name, d in (("CrAM+ alone", vs_cram), ("SparseGPT alone", vs_sparsegpt))
                if d["mean"] is not None and d["mean"] > 0
            ]
            if vs_cram["mean"] is None or vs_sparsegpt["mean"] is None:
                verdict = "not measured"
            elif len(wins) == 2:
                verdict = "beats both"
            elif not wins:
                verdict = "beats neither"
            else:
                verdict = f"beats {wins[0]} only"
            title = level if level == "2:4" else f"{100 * float(level):g}%"
            lines.append(
                f"| {variant} | {title} | {cell(both)} | {cell(vs_cram)} | {cell(vs_sparsegpt)} "
                f"| {verdict} |"
            )
            rows.append(
                {
                    "sparsegpt": variant,
                    "level": level,
                    "cram_sparsegpt": both,
                    "minus_cram_magnitude": vs_cram,
                    "minus_sgd_sparsegpt": vs_sparsegpt,
                    "verdict": verdict,
                }
            )
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(
        __doc__.split("\n\n")[0], smoke="tiny data/model, seed 0 (seconds)", study=STUDY
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    study_path = args.study.resolve()
    overrides = list(args.overrides)
    seeds = args.seeds
    if args.smoke:
        overrides = SMOKE_SET + overrides
        seeds = seeds or [0]
    out = args.out or (RESULTS / (f"{study_path.stem}-smoke" if args.smoke else study_path.stem))
    out = out.resolve()
    started = time.perf_counter()
    if not args.report_only:
        study, plugins = load(study_path, out, seeds, overrides)
        run(study, plugins, out, not (args.quiet or args.smoke), args.jobs, args.threads)
    runs = collect(out)
    if seeds is not None:
        runs = {label: {s: r for s, r in by.items() if s in seeds} for label, by in runs.items()}
    sparse_lines, sparse = sparsity_table(runs)
    quant_lines, quant = quant_table(runs)
    answer_lines, verdicts = answer(runs)
    text = "\n".join(
        [
            "Q-post sparsity: accuracy % after BN re-calibration, mean ± std over seeds",
            "",
            *sparse_lines,
            "",
            "Q-post quantization (per output channel): accuracy % after BN re-calibration",
            "",
            *quant_lines,
            "",
            *answer_lines,
        ]
    )
    print(text)
    payload = {
        "study": str(study_path.relative_to(ROOT))
        if study_path.is_relative_to(ROOT)
        else str(study_path),
        "out": str(out),
        "smoke": args.smoke,
        "overrides": overrides,
        "seeds_done": {label: sorted(by) for label, by in runs.items()},
        "elapsed_s": time.perf_counter() - started,
        "sparsity": sparse,
        "quantization": quant,
        "cram_plus_sparsegpt": verdicts,
        "tables_markdown": text,
    }
    write_payload(payload, args.json or result_path("q_post-smoke" if args.smoke else "q_post"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

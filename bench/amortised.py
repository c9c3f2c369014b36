"""Amortised two-pass steps on the Q protocol (issue 15, item 2): the sweep, the rule, 3 seeds.

Runs ``bench/studies/amortised.yaml`` (CrAM+ Multi and SAM with ``wrapper.every`` = k for k in
{1, 2, 5, 10}, seed 0) into ``bench/results/amortised/``, applies the selection rule below to
the stored seed-0 results, runs seeds 1 and 2 where the rule says, and prints the tables.
Finished runs are skipped, so an interrupted run resumes. Writes ``bench/results/amortised.json``.

    python bench/amortised.py                 # run what is missing, then report
    python bench/amortised.py --report-only   # only read the store (the rule is re-applied)
    python bench/amortised.py --smoke         # a tiny version (a minute or two), for CI

Selection rule — written into this docstring before any result of the study existed, and not
to be changed once the sweep has been read:

* ``score(k)`` = CrAM+ Multi's seed-0 one-shot accuracy (global magnitude, after BN
  re-calibration), mean of the 90% and 95% levels, in points; ``gap(k) = score(1) - score(k)``.
* The chosen k is the largest k in {5, 10} with ``gap(k) <= 1.0``; if neither qualifies, k = 5.
* Why one point on one seed: the acceptance bar (issue 15) is 0.5 points on 3-seed means. On
  the Q protocol CrAM+ Multi's seed-to-seed std is 0.05 (90%) and 0.36 (95%) points
  (BENCHMARKS.md Q), so the difference of two single runs of the 90/95 mean has a std of about
  0.3 points: a k that truly meets the 0.5 bar is rarely rejected at 1.0, one far from it is.
* Three seeds (0, 1, 2) then run for CrAM+ Multi and SAM at k = 1 (the full method, the
  reference), k = 5 (the k the acceptance names) and the chosen k. SAM is not selected on its
  own: it follows CrAM+'s k, so its rows compare like with like (k = 2 and k = 10 of SAM, and
  k = 2 of CrAM+, stay seed 0 only unless chosen).

Acceptance lines printed (issue 15), on the means over the seeds both sides have: for k = 5
and the chosen k, CrAM+ one-shot at 90% and 95% >= k = 1's - 0.5 (margin = difference + 0.5).
The step-cost bar (k = 5 <= 1.3x SGD) is measured side by side by ``bench/amortised_cost.py``,
not from these runs; the per-run training CPU times printed here are indicative only (runs
were not interleaved).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/amortised.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, result_path, study_parser, write_payload  # noqa: E402
from bench.robustness import (  # noqa: E402
    LEVELS,
    PATTERNS,
    SMOKE_SET,
    cell,
    collect,
    column,
    load,
    run,
)

STUDY = ROOT / "bench" / "studies" / "amortised.yaml"
KS = [1, 2, 5, 10]
CANDIDATES = [5, 10]  # the rule picks among these
TOLERANCE = 1.0  # points, seed 0 (the rule)
BAR = 0.5  # points, 3-seed means (issue 15's acceptance)
SEEDS = [0, 1, 2]
METHODS = ["CrAM+ Multi", "SAM"]


def label(method: str, k: int) -> str:
    return f"{method} k={k}"


def score(runs: dict[str, dict[int, dict[str, Any]]], k: int, seeds: list[int]) -> float | None:
    """CrAM+ Multi's mean one-shot accuracy at 90% and 95% (points) over ``seeds``."""
    by_seed = runs.get(label("CrAM+ Multi", k)) or {}
    values = [column(by_seed, f"oneshot:{t}", seeds)["mean"] for t in ("0.9", "0.95")]
    if any(v is None for v in values):
        return None
    return (values[0] + values[1]) / 2  # type: ignore[operator]


def choose(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The rule of the module docstring, on seed 0."""
    reference = score(runs, 1, [0])
    gaps = {k: None if reference is None or (s := score(runs, k, [0])) is None else reference - s
            for k in CANDIDATES}  # fmt: skip
    missing = [k for k in [1, *CANDIDATES] if score(runs, k, [0]) is None]
    if missing:
        return {"chosen": None, "missing": missing, "score_k1": reference, "gaps": gaps}
    passing = [k for k in CANDIDATES if gaps[k] is not None and gaps[k] <= TOLERANCE]  # type: ignore[operator]
    return {
        "chosen": max(passing) if passing else 5,
        "fallback": not passing,
        "missing": [],
        "score_k1": reference,
        "gaps": gaps,
    }


def phase_two(study: Any, chosen: int, seeds: list[int]) -> Any:
    """The study's trials for k = 1, 5 and ``chosen`` (both methods) at ``seeds``."""
    wanted = {label(m, k) for m in METHODS for k in {1, 5, chosen}}
    trials = [t for t in study.trials if t.label in wanted and t.seed in seeds]
    return dataclasses.replace(study, trials=trials, seeds=seeds)


def wrapper_counts(by_seed: dict[int, dict[str, Any]]) -> str:
    """``second passes / steps`` from the run reports (the same for every seed)."""
    seen = set()
    for entry in by_seed.values():
        wrapper = entry["report"].get("wrapper") or {}
        if "second_passes" in wrapper:
            seen.add(f"{wrapper['second_passes']} / {wrapper['steps']}")
    return ", ".join(sorted(seen)) or "—"


def cpu_seconds(by_seed: dict[int, dict[str, Any]]) -> float | None:
    values = [e["report"].get("train_cpu_s") for e in by_seed.values()]
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def tables(
    runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int]
) -> tuple[str, dict[str, Any]]:
    """One row per (method, k): accuracy % mean ± std over ``seeds`` (those that finished)."""
    header = ["training", "seeds", "dense"] + [f"{100 * float(t):g}%" for t in LEVELS]
    header += PATTERNS + ["pass 2 / steps", "train CPU s (x k=1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    data: dict[str, Any] = {}
    for method in METHODS:
        base_cpu = cpu_seconds(
            {s: r for s, r in (runs.get(label(method, 1)) or {}).items() if s in seeds}
        )
        for k in KS:
            by_seed = {s: r for s, r in (runs.get(label(method, k)) or {}).items() if s in seeds}
            row = {t: column(by_seed, f"oneshot:{t}") for t in LEVELS + PATTERNS}
            row["dense"] = column(by_seed, "test_accuracy")
            cpu = cpu_seconds(by_seed)
            row["train_cpu_s"] = cpu
            row["passes"] = wrapper_counts(by_seed)
            data[label(method, k)] = {"seeds": sorted(by_seed), **row}
            ratio = f" ({cpu / base_cpu:.2f}x)" if cpu and base_cpu else ""
            cells = [label(method, k), ",".join(map(str, sorted(by_seed))) or "none"]
            cells += [cell(row["dense"])] + [cell(row[t]) for t in LEVELS + PATTERNS]
            cells += [row["passes"], ("—" if cpu is None else f"{cpu:.0f}") + ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", data


def acceptance(
    runs: dict[str, dict[int, dict[str, Any]]], ks: list[int]
) -> tuple[str, list[dict[str, Any]]]:
    """CrAM+ one-shot at 90% and 95%, k vs k = 1, on the seeds both have."""
    full = runs.get(label("CrAM+ Multi", 1)) or {}
    results = []
    lines = ["| bar | status | margin (points) | seeds | detail |", "|---|---|---|---|---|"]
    for k in ks:
        amortised = runs.get(label("CrAM+ Multi", k)) or {}
        seeds = sorted(set(full) & set(amortised))
        for level in ("0.9", "0.95"):
            name = f"CrAM+ k={k} one-shot {100 * float(level):g}% >= k=1 - {BAR}"
            ours = column(amortised, f"oneshot:{level}", seeds)["mean"]
            ref = column(full, f"oneshot:{level}", seeds)["mean"]
            if ours is None or ref is None:
                results.append({"bar": name, "status": "NOT RUN", "seeds": seeds})
                lines.append(f"| {name} | NOT RUN | — | {','.join(map(str, seeds)) or '—'} | |")
                continue
            margin = ours - (ref - BAR)
            status = "PASS" if margin >= -1e-9 else "MISS"
            if len(seeds) < 3:
                status += f" ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, not the bar)"
            results.append({"bar": name, "status": status, "margin": margin, "seeds": seeds,
                            "value": ours, "reference": ref})  # fmt: skip
            lines.append(f"| {name} | {status} | {margin:+.2f} | {','.join(map(str, seeds))} | "
                         f"k={k} {ours:.2f} vs k=1 {ref:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n", results


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__.split("\n\n")[0], smoke="tiny data/model, seeds 0-1")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    overrides = (SMOKE_SET if args.smoke else []) + list(args.overrides)
    seeds = [0, 1] if args.smoke else SEEDS  # the smoke run exercises phase 2 with one seed more
    out = (args.out or RESULTS / ("amortised-smoke" if args.smoke else "amortised")).resolve()
    progress = not (args.quiet or args.smoke)
    started = time.perf_counter()

    if not args.report_only:
        study, plugins = load(STUDY, out, [0], overrides)
        run(study, plugins, out, progress, args.jobs, args.threads)
    rule = choose(collect(out))
    if rule["chosen"] is None:
        print(f"the rule needs CrAM+ Multi seed 0 at k = {rule['missing']}: run the sweep first")
        return 1
    chosen = int(rule["chosen"])
    if not args.report_only:
        study, plugins = load(STUDY, out, seeds, overrides)
        run(phase_two(study, chosen, seeds), plugins, out, progress, args.jobs, args.threads)
    runs = collect(out)

    sweep_text, sweep = tables(runs, [0])
    seeds_text, three = tables(runs, seeds)
    gaps = ", ".join(f"k={k}: {g:+.2f}" for k, g in rule["gaps"].items() if g is not None)
    rule_text = (
        f"rule: score(1) = {rule['score_k1']:.2f}; gap = score(1) - score(k): {gaps}; "
        f"chosen k = {chosen}"
        + (" (none within 1.0 point: the fallback)" if rule["fallback"] else "")
    )
    bar_text, bars = acceptance(runs, sorted({5, chosen}))
    print("Sweep, seed 0: accuracy % after BN re-calibration (one-shot global magnitude, 2:4)\n")
    print(sweep_text)
    print(rule_text + "\n")
    print(f"Seeds {','.join(map(str, seeds))}: mean ± std over the seeds that finished\n")
    print(seeds_text)
    print("Acceptance (issue 15; the step-cost bar is bench/amortised_cost.py's)\n")
    print(bar_text)
    payload = {
        "study": str(STUDY.relative_to(ROOT)),
        "out": str(out),
        "smoke": args.smoke,
        "overrides": overrides,
        "rule": {
            "text": __doc__.split("Selection rule", 1)[1].split("Acceptance lines", 1)[0],
            **rule,
        },  # fmt: skip
        "sweep": sweep,
        "seeds": three,
        "acceptance": bars,
        "elapsed_s": time.perf_counter() - started,
        "tables_markdown": "\n".join([sweep_text, rule_text, seeds_text, bar_text]),
    }
    write_payload(
        payload, args.json or result_path("amortised-smoke" if args.smoke else "amortised")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Q — one-shot robustness (BENCHMARKS.md section Q; issues 3, 5 and 6, "Acceptance").

Runs the study ``bench/studies/q-protocol.yaml`` through :func:`compressor.compare.run_study`
into ``bench/results/q-protocol/`` (finished runs are skipped, so an interrupted study resumes),
then reads the store and prints the BENCHMARKS-style tables (accuracy %, mean ± std over seeds)
and every bar with PASS/MISS and its margin. Writes ``bench/results/robustness.json``.

    python bench/robustness.py                      # run what is missing, then report
    python bench/robustness.py --report-only        # only read the store
    python bench/robustness.py --seeds 0            # a subset of the seeds
    python bench/robustness.py --smoke              # a tiny version (seconds), for CI

Bars (BENCHMARKS.md Q), each computed on the means over the seeds both sides have:

* one CrAM+ Multi run gives one-shot models at 70/80/90/95% each within 0.5 points of the GMP
  model trained for that sparsity: margin = CrAM+ one-shot − (GMP − 0.5);
* CrAM+ dense ≥ SGD dense − 0.3: margin = CrAM+ dense − (SGD dense − 0.3);
* CrAM+ N:M one-shot 2:4 within 0.2 points of its own dense: margin = 2:4 − (dense − 0.2);
* ADMM after fine-tuning within 1.0 point of SGD dense, above one-shot projection + the same
  fine-tuning, and the exact block fractions (tolerance 0) 100% of target in every layer.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/robustness.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, result_path, study_parser, write_payload  # noqa: E402

STUDY = ROOT / "bench" / "studies" / "q-protocol.yaml"
DEFAULT_OUT = "bench/results/q-protocol"  # as written in the study file's init_from

LEVELS = ["0.5", "0.7", "0.8", "0.9", "0.95"]
PATTERNS = ["2:4"]
PROJECTION = "unify 4x4 0.5"  # the ADMM constraint set as a one-shot target

# Labels in the study file that the bars refer to.
SGD, CRAM_PLUS, CRAM_NM = "SGD", "CrAM+ Multi", "CrAM+ N:M"
GMP = {"0.7": "GMP 70%", "0.8": "GMP 80%", "0.9": "GMP 90%", "0.95": "GMP 95%"}
ADMM, ADMM_BASE = "ADMM 4x4 50%+25%", "ADMM one-shot + FT"

# Smoke: every recipe of the study, one seed, a tiny model and data, a few dozen steps.
SMOKE_SET = [
    "data.samples=300",
    "data.batch_size=120",
    "model.width=8",
    "evaluate.oneshot.bn_recalibration.batches=2",
    "evaluate.oneshot.bn_recalibration.batch_size=50",
    "evaluate.oneshot.bn_recalibration.calibration_samples=100",
]


# -- running ---------------------------------------------------------------------------------


def load(study_path: Path, out: Path, seeds: list[int] | None, overrides: list[str]) -> Any:
    """The study, with ``init_from`` paths pointed at ``out`` when it is not the default."""
    from compressor.contract.errors import RecipeError
    from compressor.host.manager import load_plugins
    from compressor.recipe.source import read_yaml
    from compressor.study.spec import StudyConfig, build_study

    plugins = load_plugins()
    source = read_yaml(study_path)
    data = source.data
    relative = os.path.relpath(out, ROOT)
    if relative != DEFAULT_OUT:
        data = json.loads(json.dumps(data).replace(DEFAULT_OUT + "/", str(out) + "/"))
    try:
        config = StudyConfig.model_validate(data)
        study = build_study(
            config, study_path.parent, plugins.registries, seeds=seeds, overrides=overrides
        )
    except RecipeError as exc:
        raise SystemExit(str(exc)) from None
    return study, plugins


def run(
    study: Any, plugins: Any, out: Path, progress: bool, jobs: int = 1, threads: int = 1
) -> None:
    """Run the study; ``jobs`` > 1: that many worker processes (``threads`` torch threads
    each). Trials that start ``init_from`` another trial's model (ADMM one-shot + FT) need
    that trial finished first: the study lists it earlier, but with jobs > 1 run the SGD
    seeds first (``--seeds``) if the store is empty."""
    from compressor.study.runner import build_launcher, run_study

    launcher = None
    if jobs > 1:
        launcher = build_launcher(plugins, {"name": "local", "jobs": jobs, "threads": threads}, out)
    store = run_study(study, out, plugins=plugins, progress=progress, launcher=launcher)
    store.close()


# -- reading the store -----------------------------------------------------------------------


def collect(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> {metrics, report} for finished runs."""
    from compressor.study.runner import STORE
    from compressor.study.store import Store

    store = Store(out / STORE)
    try:
        labels = (store.meta("labels") or "").splitlines()
        runs: dict[str, dict[int, dict[str, Any]]] = {label: {} for label in labels}
        failed: dict[str, list[str]] = {}
        for row in store.runs():
            if row.status != "done":
                failed.setdefault(row.label, []).append(f"seed {row.seed}: {row.error}")
                continue
            runs.setdefault(row.label, {})[row.seed] = {
                "metrics": store.metrics(row.key),
                "report": store.report(row.key) or {},
            }
    finally:
        store.close()
    for label, errors in failed.items():
        for error in errors:
            print(f"FAILED {label} {error}")
    return runs


def value(run: dict[str, Any], name: str) -> float | None:
    v = run["metrics"].get(name)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * v


def admm_metrics(run: dict[str, Any]) -> dict[str, Any]:
    """The admm modifier's report, plus the accuracy right after the hard projection."""
    report = run["report"]
    admm = next((m for m in report.get("modifiers", []) if m.get("type") == "admm"), None)
    if admm is None:
        return {}
    finish = admm.get("finish") or {}
    layers = admm.get("per_layer", {})
    exact = all(
        row["pruned"] == row["target_pruned"] and row["unified"] == row["target_unified"]
        for row in layers.values()
    )
    return {
        "phase": admm.get("phase"),
        "pruned_of_target": admm.get("pruned_of_target"),
        "unified_of_target": admm.get("unified_of_target"),
        "pruned_fraction": admm.get("pruned_fraction"),
        "unified_fraction": admm.get("unified_fraction"),
        "target_pruned_fraction": admm.get("target_pruned_fraction"),
        "target_unified_fraction": admm.get("target_unified_fraction"),
        "every_layer_exact": exact and bool(layers),
        "compression_ratio": admm.get("compression_ratio"),
        "storage_ratio": admm.get("storage_ratio"),
        "multiplies_saved_fraction": admm.get("multiplies_saved_fraction"),
        "projection_distance": finish.get("projection_distance"),
        "residual_before_projection": finish.get("residual_before"),
        "accuracy_before_projection": _percent(finish.get("accuracy_before_projection")),
        "accuracy_after_projection": _percent(finish.get("accuracy_after_projection")),
    }


def _percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * float(x)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


def cell(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s or s["mean"] is None:
        return "—"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "")


def column(
    runs: dict[int, dict[str, Any]], name: str, seeds: list[int] | None = None
) -> dict[str, Any]:
    chosen = sorted(runs) if seeds is None else [s for s in seeds if s in runs]
    return stats([v for s in chosen if (v := value(runs[s], name)) is not None])


# -- tables and bars -------------------------------------------------------------------------


def tables(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    data: dict[str, Any] = {"methods": {}}
    header = ["training", "seeds", "dense"] + [f"{100 * float(t):g}%" for t in LEVELS]
    header += PATTERNS + ["4x4 50%+25% projection"]
    lines.append("One-shot robustness: accuracy % after BN re-calibration, mean ± std over seeds")
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for label, by_seed in runs.items():
        if not by_seed:
            lines.append("| " + " | ".join([label, "none"] + ["—"] * (len(header) - 2)) + " |")
            continue
        first = next(iter(by_seed.values()))
        trained = float(first["metrics"].get("sparsity", 0.0))
        row_stats: dict[str, Any] = {
            "seeds": sorted(by_seed),
            "trained_sparsity": trained,
            "dense": column(by_seed, "test_accuracy"),
            **{t: column(by_seed, f"oneshot:{t}") for t in LEVELS + PATTERNS + [PROJECTION]},
            **{
                f"{t} before recalibration": column(by_seed, f"oneshot:{t}/before_recalibration")
                for t in LEVELS + PATTERNS + [PROJECTION]
            },
        }
        data["methods"][label] = row_stats
        dense_name = "dense" if trained < 0.05 else f"trained ({100 * trained:.1f}% sparse)"
        cells = [label, ",".join(map(str, sorted(by_seed)))]
        cells.append(cell(row_stats["dense"]) + ("" if trained < 0.05 else f" [{dense_name}]"))
        cells += [cell(row_stats[t]) for t in LEVELS + PATTERNS + [PROJECTION]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Rows of sparse-trained models (GMP, gradual 2:4, ADMM) show their own accuracy in "
        "'dense' with the trained sparsity; their one-shot columns prune them further."
    )

    # Trained for the sparsity: GMP and gradual 2:4 at their own sparsity.
    lines.append("")
    lines.append("Trained for the sparsity (accuracy % at the trained sparsity)")
    lines.append("")
    lines.append("| training | seeds | sparsity | accuracy |")
    lines.append("|---|---|---|---|")
    for label in [*GMP.values(), "gradual 2:4"]:
        by_seed = runs.get(label) or {}
        if not by_seed:
            lines.append(f"| {label} | none | — | — |")
            continue
        sp = statistics.fmean(float(r["metrics"].get("sparsity", 0)) for r in by_seed.values())
        lines.append(
            f"| {label} | {','.join(map(str, sorted(by_seed)))} | {100 * sp:.2f}% | "
            f"{cell(column(by_seed, 'test_accuracy'))} |"
        )

    # ADMM.
    lines.append("")
    lines.append("ADMM unification (4x4 blocks, 50% pruned + 25% unified per layer)")
    lines.append("")
    lines.append(
        "| run | seeds | before hard projection | after hard projection | after fine-tuning | "
        "pruned / target | unified / target | every layer exact | compression | storage |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    sgd = runs.get(SGD) or {}
    if sgd:
        before = data["methods"].get(SGD, {}).get(f"{PROJECTION} before recalibration")
        lines.append(
            f"| SGD dense, projected in one shot, no FT (BN re-calibrated; as projected) | "
            f"{','.join(map(str, sorted(sgd)))} | {cell(column(sgd, 'test_accuracy'))} | "
            f"{cell(column(sgd, f'oneshot:{PROJECTION}'))}; "
            f"{cell(before)} | — | | | | | |"
        )
    data["admm"] = {}
    for label in (ADMM, ADMM_BASE):
        by_seed = runs.get(label) or {}
        per_seed = {s: admm_metrics(r) for s, r in by_seed.items()}
        data["admm"][label] = {"per_seed": per_seed}
        if not by_seed:
            lines.append(f"| {label} | none | — | — | — | | | | | |")
            continue

        def agg(key: str, ps: dict[int, dict[str, Any]] = per_seed) -> dict[str, Any]:
            return stats([float(m[key]) for m in ps.values() if m.get(key) is not None])

        before_projection = agg("accuracy_before_projection")
        after_projection = agg("accuracy_after_projection")
        final = column(by_seed, "test_accuracy")
        pruned = sorted({m.get("pruned_of_target") for m in per_seed.values()}, key=str)
        unified = sorted({m.get("unified_of_target") for m in per_seed.values()}, key=str)
        exact = all(m.get("every_layer_exact") for m in per_seed.values())
        data["admm"][label].update(
            {
                "before_projection": before_projection,
                "after_projection": after_projection,
                "after_finetuning": final,
            }
        )
        lines.append(
            f"| {label} | {','.join(map(str, sorted(by_seed)))} | {cell(before_projection)} | "
            f"{cell(after_projection)} | "
            f"{cell(final)} | {', '.join(_pct(p) for p in pruned)} | "
            f"{', '.join(_pct(u) for u in unified)} | {'yes' if exact else 'NO'} | "
            f"{cell(agg('compression_ratio'))}× | {cell(agg('storage_ratio'))}× |"
        )
    return "\n".join(lines) + "\n", data


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * float(x):.1f}%"


def _paired(a: dict[int, Any], b: dict[int, Any]) -> list[int]:
    return sorted(set(a) & set(b))


def bars(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    results: list[dict[str, Any]] = []

    def add(name: str, lhs: float | None, rhs: float | None, seeds: list[int], note: str = "",
            strict: bool = False) -> None:  # fmt: skip
        if lhs is None or rhs is None or not seeds:
            results.append({"bar": name, "status": "NOT RUN", "seeds": seeds, "note": note})
            return
        margin = lhs - rhs
        ok = margin > 0 if strict else margin >= -1e-9
        results.append(
            {
                "bar": name,
                "status": "PASS" if ok else "MISS",
                "value": lhs,
                "threshold": rhs,
                "margin": margin,
                "seeds": seeds,
                "note": note,
            }
        )

    def mean(by_seed: dict[int, Any], name: str, seeds: list[int]) -> float | None:
        return column(by_seed, name, seeds)["mean"] if seeds else None

    cram = runs.get(CRAM_PLUS) or {}
    for level, gmp_label in GMP.items():
        gmp = runs.get(gmp_label) or {}
        seeds = _paired(cram, gmp)
        one = mean(cram, f"oneshot:{level}", seeds)
        ref = mean(gmp, "test_accuracy", seeds)
        add(
            f"CrAM+ Multi one-shot {100 * float(level):g}% >= {gmp_label} - 0.5",
            one,
            None if ref is None else ref - 0.5,
            seeds,
            "" if ref is None or one is None else f"one-shot {one:.2f} vs GMP {ref:.2f}",
        )
    sgd = runs.get(SGD) or {}
    seeds = _paired(cram, sgd)
    dense, base = mean(cram, "test_accuracy", seeds), mean(sgd, "test_accuracy", seeds)
    add(
        "CrAM+ Multi dense >= SGD dense - 0.3",
        dense,
        None if base is None else base - 0.3,
        seeds,
        "" if dense is None or base is None else f"CrAM+ {dense:.2f} vs SGD {base:.2f}",
    )
    nm = runs.get(CRAM_NM) or {}
    seeds = sorted(nm)
    two, own = mean(nm, "oneshot:2:4", seeds), mean(nm, "test_accuracy", seeds)
    add(
        "CrAM+ N:M one-shot 2:4 >= own dense - 0.2",
        two,
        None if own is None else own - 0.2,
        seeds,
        "" if two is None or own is None else f"2:4 {two:.2f} vs dense {own:.2f}",
    )
    admm, admm_base = runs.get(ADMM) or {}, runs.get(ADMM_BASE) or {}
    seeds = _paired(admm, sgd)
    fine, base = mean(admm, "test_accuracy", seeds), mean(sgd, "test_accuracy", seeds)
    add(
        "ADMM after FT >= SGD dense - 1.0",
        fine,
        None if base is None else base - 1.0,
        seeds,
        "" if fine is None or base is None else f"ADMM {fine:.2f} vs SGD {base:.2f}",
    )
    seeds = _paired(admm, admm_base)
    fine, proj = mean(admm, "test_accuracy", seeds), mean(admm_base, "test_accuracy", seeds)
    add(
        "ADMM after FT > one-shot projection + same FT",
        fine,
        proj,
        seeds,
        "" if fine is None or proj is None else f"ADMM {fine:.2f} vs one-shot+FT {proj:.2f}",
        strict=True,
    )
    fractions = [admm_metrics(r) for r in admm.values()]
    if fractions:
        worst = min(
            min(float(m.get("pruned_of_target") or 0), float(m.get("unified_of_target") or 0))
            for m in fractions
        )
        exact = all(m.get("every_layer_exact") for m in fractions)
        add(
            "ADMM exact block fractions = 100% of target (every layer, tolerance 0)",
            100.0 * worst if exact else 100.0 * worst - 1e-6,
            100.0,
            sorted(admm),
            f"lowest pruned/unified of target {100 * worst:.2f}%; every layer exact: {exact}",
        )
    else:
        add("ADMM exact block fractions = 100% of target", None, None, [])

    lines = ["Bars (means over the seeds both sides have; margin > 0 is headroom)", ""]
    lines.append("| bar | status | margin (points) | seeds | detail |")
    lines.append("|---|---|---|---|---|")
    for r in results:
        margin = "—" if "margin" not in r else f"{r['margin']:+.2f}"
        seeds_text = ",".join(map(str, r["seeds"])) or "—"
        lines.append(f"| {r['bar']} | {r['status']} | {margin} | {seeds_text} | {r['note']} |")
    return "\n".join(lines) + "\n", results


def sweep_table(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """The CrAM+ sweep (bench/studies/cram-sweep.yaml) and the setting its rule selects:
    maximise the worst one-shot accuracy over 70/80/90/95%; among settings within 0.1 point of
    the best, take the highest dense accuracy."""
    rows = []
    for label, by_seed in runs.items():
        if not by_seed:
            continue
        dense = column(by_seed, "test_accuracy")["mean"]
        shots = {t: column(by_seed, f"oneshot:{t}")["mean"] for t in LEVELS}
        worst = min(shots[t] for t in LEVELS[1:])
        rows.append({"label": label, "dense": dense, **shots, "worst_70_95": worst})
    best = max(r["worst_70_95"] for r in rows)
    chosen = max((r for r in rows if r["worst_70_95"] >= best - 0.1), key=lambda r: r["dense"])
    header = ["setting", "dense"] + [f"{100 * float(t):g}%" for t in LEVELS]
    header += ["worst of 70–95%"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        mark = " **(chosen)**" if r is chosen else ""
        cells = [r["label"] + mark, f"{r['dense']:.2f}"]
        cells += [f"{r[t]:.2f}" for t in LEVELS] + [f"{r['worst_70_95']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", {"rows": rows, "chosen": chosen["label"]}


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(
        __doc__.split("\n\n")[0], smoke="tiny data/model, seed 0 (seconds)", study=STUDY
    )
    parser.add_argument(
        "--sweep", action="store_true", help="the study is the CrAM+ sweep: print its table"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # init_from paths in the study file are relative to the repository root
    study_path = args.study.resolve()
    overrides = list(args.overrides)
    seeds = args.seeds
    if args.smoke:
        overrides = SMOKE_SET + overrides
        seeds = seeds or [0]
    name = "robustness-smoke" if args.smoke else "robustness"
    out = args.out or (RESULTS / (f"{study_path.stem}-smoke" if args.smoke else study_path.stem))
    out = out.resolve()

    started = time.perf_counter()
    if not args.report_only:
        study, plugins = load(study_path, out, seeds, overrides)
        run(study, plugins, out, not (args.quiet or args.smoke), args.jobs, args.threads)
    runs = collect(out)
    if seeds is not None:
        runs = {label: {s: r for s, r in by.items() if s in seeds} for label, by in runs.items()}
    if args.sweep:
        text, sweep = sweep_table(runs)
        print(text)
        print(f"chosen: {sweep['chosen']}")
        write_payload(sweep, args.json or result_path("cram-sweep"))
        return 0
    table_text, data = tables(runs)
    bar_text, bar_results = bars(runs)
    print(table_text)
    print(bar_text)
    payload = {
        "study": str(study_path.relative_to(ROOT))
        if study_path.is_relative_to(ROOT)
        else str(study_path),
        "out": str(out),
        "smoke": args.smoke,
        "overrides": overrides,
        "seeds_done": {label: sorted(by) for label, by in runs.items()},
        "elapsed_s": time.perf_counter() - started,
        **data,
        "bars": bar_results,
        "tables_markdown": table_text + "\n" + bar_text,
    }
    write_payload(payload, args.json or result_path(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``compressor`` command line: run | validate | explain | schema | plugins | export.

Plugins add sub-commands through the ``register_commands`` hook. Every user error ends in one
clean message and a non-zero exit code (2 for a bad recipe), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from compressor import __version__
from compressor.contract.errors import CompressorError, RecipeError
from compressor.host.manager import Plugins, load_plugins
from compressor.recipe.schema import (
    Recipe,
    apply_overrides,
    build_recipe_model,
    resolved_config,
    validate_source,
)
from compressor.recipe.source import read_yaml
from compressor.study.runner import target_label

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def read_recipe(path: str, plugins: Plugins, overrides: Sequence[str] = ()) -> Recipe:
    """Load and validate a recipe file, applying ``key.path=value`` overrides first."""
    source = read_yaml(path)
    if overrides:
        try:
            source.data = apply_overrides(source.data, list(overrides))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CompressorError(f"bad --set override: {exc}") from None
    return validate_source(source, plugins.registries)


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from compressor.train.loop import run

    recipe = read_recipe(args.recipe, plugins, args.set)
    out_dir = Path(args.out) if args.out else Path("runs") / recipe.name
    report = run(
        recipe,
        out_dir,
        plugins=plugins,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    show_report(report, out_dir)
    return 0


def show_report(report: dict[str, Any], out_dir: Path) -> None:
    table = Table(
        title=f"{report['recipe']} — {report['steps']} steps, {report['wall_time_s']:.1f} s"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("test accuracy", f"{100 * report['metrics']['test_accuracy']:.2f}%")
    sparsity = report["sparsity"]
    table.add_row(
        "sparsity (eligible weights)",
        f"{sparsity['global']:.4f} ({sparsity['zeros']}/{sparsity['eligible']})",
    )
    oneshot = report.get("evaluations", {}).get("oneshot") or {}
    for row in oneshot.get("results", []):
        label = target_label(row["operator"], row["target_sparsity"])
        table.add_row(
            f"one-shot {label} (sparsity {row['sparsity']:.3f})",
            f"{100 * row['accuracy_before_recalibration']:.2f}% → {100 * row['accuracy']:.2f}% after BN recal.",
        )
    for name, result in report.get("evaluations", {}).items():
        if name != "oneshot":
            for key, value in _flat_numbers(result):
                table.add_row(f"{name}: {key}", f"{value:.4f}")
    out.print(table)
    out.print(f"report: {out_dir / 'report.json'}   checkpoint: {out_dir / 'checkpoint.pt'}")


def _flat_numbers(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(prefix, float(value))]
    rows: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            rows += _flat_numbers(item, f"{prefix}.{key}" if prefix else str(key))
    return rows


def cmd_validate(args: argparse.Namespace, plugins: Plugins) -> int:
    from compressor.train.loop import prepare

    failed = False
    for path in args.recipes:
        try:
            recipe = read_recipe(path, plugins, args.set)
            session = prepare(recipe, plugins, with_data=False).session
            session.optimizer()  # builds the wrapper: its config is checked against the model
        except RecipeError as exc:
            err.print(str(exc), markup=False, highlight=False)
            failed = True
            continue
        except CompressorError as exc:
            err.print(f"{path}: error: {exc}", markup=False, highlight=False)
            failed = True
            continue
        clock = session.clock
        out.print(
            f"{path}: ok — '{recipe.name}', {clock.total_steps} steps "
            f"({clock.steps_per_epoch} per epoch), {len(session.modifiers)} modifier(s)",
            markup=False,
            highlight=False,
        )
    return 2 if failed else 0


def cmd_explain(args: argparse.Namespace, plugins: Plugins) -> int:
    from compressor.train.loop import prepare

    recipe = read_recipe(args.recipe, plugins, args.set)
    session = prepare(recipe, plugins, with_data=False).session
    clock = session.clock
    config = recipe.config
    out.print(
        f"[bold]{recipe.name}[/bold]: {config.train.epochs} epochs × {clock.steps_per_epoch} steps = {clock.total_steps} optimizer steps"
    )
    optimizer = f"{config.optimizer.name} (lr {config.optimizer.lr:g})"
    if config.wrapper is not None:
        optimizer = f"{config.wrapper.name} wrapping {optimizer}"
    out.print(f"optimizer: {optimizer}")
    if session.lr_schedule is not None:
        points = ", ".join(
            f"step {s}: ×{session.lr_schedule(s):.3f}" for s in session.lr_schedule.milestones()
        )
        out.print(f"lr schedule ({config.lr_schedule.kind}): {points}")
    for title, rows in session.timeline():
        table = Table(title=title, title_justify="left")
        table.add_column("step", justify="right")
        table.add_column("epoch", justify="right")
        table.add_column("what")
        for step, text in rows:
            table.add_row(str(step), f"{clock.epoch_of(step):.2f}", text)
        out.print(table)
    if not session.modifiers:
        out.print("no modifiers: the model is trained dense")
    return 0


def cmd_schema(args: argparse.Namespace, plugins: Plugins) -> int:
    schema = build_recipe_model(plugins.registries).model_json_schema()
    text = json.dumps(schema, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        out.print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "provides": plugins.registries.provided_by(info.name),
        }
        for info in plugins.infos.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="compressor plugins")
    for column in ("plugin", "distribution", "version", "provides"):
        table.add_column(column, overflow="fold")
    for row in rows:
        provides = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in row["provides"].items()
        )
        table.add_row(row["name"], row["distribution"], row["version"], provides or "(hooks only)")
    out.print(table)
    return 0


def cmd_export(args: argparse.Namespace, plugins: Plugins) -> int:
    run_dir = Path(args.run)
    _, prepared = _restore_run(run_dir, plugins)
    target = Path(args.out) if args.out else run_dir / f"export-{args.format}.pt"
    written = plugins.hook.export(
        session=prepared.session, model=prepared.model, path=target, format=args.format
    )
    if written is None:
        raise CompressorError(f"no plugin exports the format '{args.format}'")
    out.print(f"wrote {written}")
    return 0


def cmd_compare(args: argparse.Namespace, plugins: Plugins) -> int:
    from compressor.study.report import render
    from compressor.study.runner import run_study
    from compressor.study.spec import adhoc_study, load_study

    paths = list(args.files)
    first = read_yaml(paths[0]).data
    if len(paths) == 1 and isinstance(first, dict) and "recipes" in first:
        study = load_study(paths[0], plugins.registries, seeds=args.seeds, overrides=args.set)
    else:
        study = adhoc_study(paths, plugins.registries, seeds=args.seeds or [0], overrides=args.set)
    out_dir = Path(args.out) if args.out else Path("runs") / "studies" / study.name
    out.print(
        f"study '{study.name}': {len(study.labels)} method(s) × {len(study.trials) // max(len(study.labels), 1)} "
        f"seed(s) = {len(study.trials)} runs → {out_dir}"
    )
    store = run_study(study, out_dir, plugins=plugins, progress=not args.quiet)
    store.close()
    render(out_dir, console=out)
    return 0


def cmd_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from compressor.study.report import render

    render(args.study_dir, console=out)
    return 0


def _restore_run(run_dir: Path, plugins: Plugins) -> Any:
    """Rebuild a finished run (recipe, model weights, session state) from its checkpoint."""
    from compressor.recipe.source import Source
    from compressor.train.checkpoint import load
    from compressor.train.loop import CHECKPOINT, prepare

    path = run_dir / CHECKPOINT
    if not path.exists():
        raise CompressorError(f"{path} not found: is {run_dir} a run folder?")
    state = load(path)
    recipe = validate_source(Source(str(path), state["recipe"]), plugins.registries)
    prepared = prepare(recipe, plugins, with_data=False)
    prepared.model.load_state_dict(state["model"])
    prepared.session.optimizer()
    prepared.session.load_state_dict(state["session"])
    return recipe, prepared


def cmd_evaluate(args: argparse.Namespace, plugins: Plugins) -> int:
    recipe, prepared = _restore_run(Path(args.run), plugins)
    oneshot: dict[str, Any] = {"name": "oneshot", "sparsities": args.sparsities}
    if args.nm:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", args.nm)
        if not match:
            raise CompressorError(f"--nm takes N:M such as 2:4, not {args.nm!r}")
        oneshot["targets"] = [{"kind": "nm", "keep": int(match[1]), "group": int(match[2])}]
    oneshot["bn_recalibration"] = {"batches": args.batches}
    registry = plugins.registries.evaluators
    if "oneshot" not in registry:
        raise CompressorError("no plugin provides the 'oneshot' evaluator")
    schema = resolved_config(plugins.registries, registry.get("oneshot").config)
    try:
        config = schema.model_validate(oneshot)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CompressorError(f"bad evaluate options: {problems}") from None
    data = plugins.registries.datasets.build(recipe.config.data).build()
    result = registry.build(config).run(prepared.session, prepared.model, data)
    table = Table(title=f"one-shot robustness of {args.run}")
    for column in ("target", "sparsity", "before BN recal. %", "after BN recal. %"):
        table.add_column(column, justify="right")
    table.add_row("dense", "", "", f"{100 * result['dense']['accuracy']:.2f}")
    for row in result["results"]:
        table.add_row(
            target_label(row["operator"], row["target_sparsity"]),
            f"{row['sparsity']:.3f}",
            f"{100 * row['accuracy_before_recalibration']:.2f}",
            f"{100 * row['accuracy']:.2f}",
        )
    out.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        out.print(f"wrote {args.json}")
    return 0


def build_parser(plugins: Plugins) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compressor", description="Compress PyTorch models with declarative recipes."
    )
    parser.add_argument("--version", action="version", version=f"compressor {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="load a plugin from a Python file (repeatable)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (1 is often best on a busy machine)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_set(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe value, e.g. train.epochs=2",
        )

    p = sub.add_parser("run", help="train with a recipe and write a report")
    p.add_argument("recipe")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    with_set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check recipes; errors as file:line:col: path: message")
    p.add_argument("recipes", nargs="+")
    with_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("explain", help="show the resolved timeline of a recipe")
    p.add_argument("recipe")
    with_set(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("schema", help="print the JSON Schema of recipes (for editor completion)")
    p.add_argument("--out", help="write to a file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plugins", help="list plugins, their versions and what they provide")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("export", help="export a finished run's model in a format a plugin provides")
    p.add_argument("run", help="run folder (holds checkpoint.pt)")
    p.add_argument("--format", required=True)
    p.add_argument("--out", help="file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="one-shot robustness of a finished run's model")
    p.add_argument("run", help="run folder (holds checkpoint.pt)")
    p.add_argument(
        "--oneshot",
        dest="sparsities",
        type=float,
        nargs="+",
        default=[0.5, 0.7, 0.8, 0.9, 0.95],
        metavar="S",
        help="global magnitude sparsities",
    )
    p.add_argument("--nm", help="also an N:M target, e.g. 2:4")
    p.add_argument("--batches", type=int, default=100, help="BN re-calibration batches (0 = none)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare", help="compare recipes side by side (a study file, or several recipes)"
    )
    p.add_argument("files", nargs="+", metavar="STUDY_OR_RECIPES")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the study's, or 0)")
    p.add_argument("--out", help="study folder (default runs/studies/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    with_set(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="re-render a study's tables and plots from its store")
    p.add_argument("study_dir")
    p.set_defaults(func=cmd_report)

    plugins.hook.register_commands(cli=sub)
    return parser


def _plugin_files(argv: Sequence[str]) -> list[str]:
    files = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            files.append(arg.split("=", 1)[1])
    return files


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins = load_plugins(_plugin_files(argv))
        args = build_parser(plugins).parse_args(argv)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args, plugins))
    except RecipeError as exc:
        err.print(str(exc), markup=False, highlight=False)
        return 2
    except CompressorError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: finished checkpoints and reports are intact")
        return 130


if __name__ == "__main__":
    sys.exit(main())

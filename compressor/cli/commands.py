"""The built-in sub-commands, registered exactly as a plugin registers its own.

Each command is ``func(args) -> exit code``; the CLI hands it the plugins it loaded as
``args.plugins`` (and, as plugin commands see them, as ``args.host``): there is no global set.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from compressor.contract.errors import CompressorError, InputError, RecipeError
from compressor.contract.evaluation import Evaluation
from compressor.contract.exporter import Exporter
from compressor.host.manager import Plugins
from compressor.host.registry import Registries
from compressor.kit.selection import dense_by_default
from compressor.recipe.overrides import OverrideError, apply_overrides, override_locs
from compressor.recipe.schema import Recipe, build_recipe_model, validate_source
from compressor.recipe.source import read_yaml

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def read_recipe(path: str, registries: Registries, overrides: Sequence[str] = ()) -> Recipe:
    """Load and validate a recipe file, applying ``key.path=value`` overrides first."""
    source = read_yaml(path)
    if overrides:
        try:
            source.data = apply_overrides(source.data, list(overrides))
        except OverrideError as exc:
            loc = tuple(exc.item.split("=", 1)[0].strip().split("."))
            raise source.error(loc, f"bad --set {exc.item}: {exc.message}") from None
        for at, item in override_locs(list(overrides)):
            source.notes[at] = f"the value comes from --set {item}"
    return validate_source(source, registries)


def cmd_run(args: argparse.Namespace) -> int:
    from compressor.train.loop import run

    recipe = read_recipe(args.recipe, args.plugins.registries, args.set)
    out_dir = Path(args.out) if args.out else Path("runs") / recipe.name
    report = run(
        recipe,
        out_dir,
        plugins=args.plugins,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if "rank" not in report:  # under torchrun, rank 0 alone reports
        show_report(report, out_dir)
    return 0


def show_report(report: dict[str, Any], out_dir: Path) -> None:
    """The run's metric and sparsity, then every column each evaluator declared."""
    table = Table(
        title=f"{report['recipe']} — {report['steps']} steps, {report['wall_time_s']:.1f} s"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    metric = report.get("metric") or {"name": "accuracy", "title": "test accuracy", "percent": True}
    value = report["metrics"][f"test_{metric['name']}"]
    table.add_row(
        metric["title"], f"{100 * value:.2f}%" if metric.get("percent") else f"{value:.4g}"
    )
    sparsity = report["sparsity"]
    compressed = sparsity.get("compressed")
    if compressed and compressed["total"]:
        table.add_row(
            f"sparsity (compressed tensors: {compressed['count']})",
            f"{compressed['sparsity']:.4f} ({compressed['zeros']}/{compressed['total']})",
        )
    table.add_row(
        "sparsity (all eligible weights)",
        f"{sparsity['global']:.4f} ({sparsity['zeros']}/{sparsity['eligible']})",
    )
    for name, result in report.get("evaluations", {}).items():
        evaluation = Evaluation.from_dict(result)
        for column in sorted(evaluation.columns, key=lambda c: c.order):
            value = evaluation.metrics.get(column.metric)
            if value is None:
                continue
            text = (
                f"{100 * value:.{column.digits}f}%"
                if column.percent
                else f"{value:.{column.digits}f}"
            )
            table.add_row(f"{name}: {column.title}", text)
    out.print(table)
    out.print(f"report: {out_dir / 'report.json'}   checkpoint: {out_dir / 'checkpoint.pt'}")


def cmd_validate(args: argparse.Namespace) -> int:
    """Check recipes and studies without training: every recipe is validated, its model,
    session and optimizer built (no data), its evaluators asked to check the model."""
    from compressor.study.spec import is_study, load_study
    from compressor.train.loop import prepare

    plugins: Plugins = args.plugins
    failed = False
    for path in args.recipes:
        try:
            if is_study(read_yaml(path).data):
                study = load_study(path, plugins.registries, overrides=args.set)
                for trial in study.trials:
                    prepare(trial.recipe, plugins, with_data=False).session.optimizer()
                message = (
                    f"{path}: ok — study '{study.name}', {len(study.labels)} recipe(s) × "
                    f"{len(study.seeds)} seed(s) = {len(study.trials)} runs"
                )
            else:
                recipe = read_recipe(path, plugins.registries, args.set)
                session = prepare(recipe, plugins, with_data=False).session
                session.optimizer()  # builds the wrapper: its config is checked against the model
                clock = session.clock
                message = (
                    f"{path}: ok — '{recipe.name}', {clock.total_steps} steps "
                    f"({clock.steps_per_epoch} per epoch), {len(session.modifiers)} modifier(s)"
                )
        except RecipeError as exc:
            err.print(str(exc), markup=False, highlight=False)
            failed = True
            continue
        except CompressorError as exc:
            err.print(f"{path}: error: {exc}", markup=False, highlight=False)
            failed = True
            continue
        out.print(message, markup=False, highlight=False)
    return 2 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from compressor.train.loop import prepare

    recipe = read_recipe(args.recipe, args.plugins.registries, args.set)
    session = prepare(recipe, args.plugins, with_data=False).session
    clock = session.clock
    config = recipe.config
    out.print(
        f"[bold]{recipe.name}[/bold]: {config.train.epochs} epochs × {clock.steps_per_epoch} "
        f"steps = {clock.total_steps} optimizer steps"
    )
    out.print(f"optimizer: {settings(config.optimizer)}")
    if config.wrapper is not None:
        out.print(f"wrapper: {settings(config.wrapper)} (wraps {config.optimizer.name})")
    if session.lr_schedule is not None:
        points = ", ".join(
            f"step {s}: ×{session.lr_schedule(s):.3f}" for s in session.lr_schedule.milestones()
        )
        out.print(f"lr schedule ({config.lr_schedule.kind}): {points}")
    for title, rows in session.timeline():
        if not rows:
            out.print(f"{title}: acts every step, no scheduled events")
            continue
        table = Table(title=title, title_justify="left")
        table.add_column("step", justify="right")
        table.add_column("epoch", justify="right")
        table.add_column("what")
        for step, text in rows:
            table.add_row(str(step), f"{clock.epoch_of(step):.2f}", text)
        out.print(table)
    if not session.modifiers:
        out.print("no modifiers: the model is trained dense")
    dense = [names[0] for names in dense_by_default(session.model).values() if names]
    if dense:
        out.print(
            f"language model: {', '.join(dense)} stay dense unless an operator names them "
            "(include: [...], or modules: [..., embedding])",
            markup=False,
            highlight=False,
        )
    return 0


def settings(config: Any) -> str:
    """``sgd (lr 0.1, momentum 0.9, ...)``: a config's name and every field."""
    fields = config.model_dump(mode="json")
    name = fields.pop("name", "")
    return f"{name} ({', '.join(f'{k} {v}' for k, v in fields.items())})"


def cmd_schema(args: argparse.Namespace) -> int:
    schema = build_recipe_model(args.plugins.registries).model_json_schema()
    text = json.dumps(schema, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        out.print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins: Plugins = args.plugins
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
    # one table per distribution, so the module names keep the width they need (never broken
    # mid-word at 80 columns) and only "provides" wraps, between words
    width = max((len(row["name"]) for row in rows), default=6)
    for distribution in dict.fromkeys((row["distribution"], row["version"]) for row in rows):
        table = Table(title=f"plugins of {distribution[0]} {distribution[1]}")
        table.add_column("plugin", no_wrap=True, min_width=width)
        table.add_column("provides", overflow="fold")
        for row in rows:
            if (row["distribution"], row["version"]) != distribution:
                continue
            provides = "; ".join(
                f"{kind}: {', '.join(names)}" for kind, names in row["provides"].items()
            )
            table.add_row(row["name"], provides or "(hooks only)")
        out.print(table)
    return 0


def build_exporter(plugins: Plugins, format_name: str, *, int8: bool = False) -> Exporter:
    """The exporter of ``--format``, its packages checked: an InputError names what is wrong."""
    from compressor.kit.extras import require_package

    registry = plugins.registries.exporters
    try:
        entry = registry.get(format_name)
    except KeyError as exc:
        raise InputError(f"{exc.args[0]}; known: {', '.join(registry.names())}") from None
    options: dict[str, Any] = {"format": format_name}
    if int8:
        options["int8"] = True
    try:
        config = entry.config.model_validate(options)
    except ValidationError:
        raise InputError(f"--int8 does not apply to --format {format_name}") from None
    exporter: Exporter = entry.cls(config)
    for module, extra in exporter.requires:
        require_package(module, extra, f"--format {format_name}")
    return exporter


def cmd_export(args: argparse.Namespace) -> int:
    from compressor.kit.files import staged
    from compressor.train.restore import restore_run

    exporter = build_exporter(args.plugins, args.format, int8=args.int8)
    run_dir = Path(args.run)
    target = Path(args.out) if args.out else run_dir / f"export-{args.format}{exporter.suffix}"
    if target.exists() and not args.overwrite:
        raise InputError(f"{target} exists: pass --overwrite to replace it")
    context = restore_run(run_dir, args.plugins)
    exporter.check(context, context.model)
    with staged(target) as stage:
        written = exporter.export(context, context.model, stage / target.name)
    staged_path = written.is_relative_to(stage)
    out.print(f"wrote {target.parent / written.relative_to(stage) if staged_path else written}")
    for line in exporter.summary():
        out.print(f"  {line}", markup=False, highlight=False)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from compressor.study.report import render
    from compressor.study.runner import build_launcher, run_study
    from compressor.study.spec import adhoc_study, is_study, load_study

    plugins: Plugins = args.plugins
    registries = plugins.registries
    paths = list(args.files)
    first = read_yaml(paths[0]).data
    if len(paths) == 1 and is_study(first):
        study = load_study(paths[0], registries, seeds=args.seeds, overrides=args.set)
    else:
        study = adhoc_study(paths, registries, seeds=args.seeds or [0], overrides=args.set)
    out_dir = Path(args.out) if args.out else Path("runs") / "studies" / study.name
    out.print(
        f"study '{study.name}': {len(study.labels)} method(s) × "
        f"{len(study.trials) // max(len(study.labels), 1)} seed(s) = {len(study.trials)} runs "
        f"→ {out_dir}"
    )
    chosen = launcher_config(study, args)
    launcher = build_launcher(plugins, chosen, out_dir) if chosen is not None else None
    store = run_study(study, out_dir, plugins=plugins, progress=not args.quiet, launcher=launcher)
    failed = [row for row in store.runs() if row.status == "failed"]
    store.close()
    render(out_dir, console=out)
    if failed:
        err.print(
            f"{len(failed)} of {len(study.trials)} runs failed: "
            + "; ".join(f"{row.key}: {row.error}" for row in failed),
            markup=False,
            highlight=False,
        )
        return 1
    return 0


def launcher_config(study: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """The study's ``launcher:``, with ``--launcher`` (another launcher, its defaults) and
    ``--jobs`` applied on top; None: one trial after another in this process."""
    from compressor.study.runner import default_launcher

    data: dict[str, Any] | None = None
    if study.launcher is not None:
        data = study.launcher.model_dump()
    if args.launcher and (data is None or args.launcher != data["name"]):
        data = {"name": args.launcher}
    if args.jobs is not None:
        data = data or {"name": default_launcher(args.plugins)}
        data["jobs"] = args.jobs
    return data


def cmd_report(args: argparse.Namespace) -> int:
    from compressor.study.report import render

    render(args.study_dir, console=out)
    return 0


def with_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. train.epochs=2",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register_commands(sub: argparse._SubParsersAction, plugins: Plugins) -> None:  # type: ignore[type-arg]
    """The built-in commands, added like a plugin's ``register_commands``."""
    p = sub.add_parser("run", help="train with a recipe and write a report")
    p.add_argument("recipe")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    with_set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", help="check recipes and studies; errors as file:line:col: path: message"
    )
    p.add_argument("recipes", nargs="+", metavar="RECIPE_OR_STUDY")
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
    p.add_argument(
        "--format", required=True, help="an export format (compressor plugins lists them)"
    )
    p.add_argument("--out", help="file (or folder) to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--int8", action="store_true", help="--format onnx: static int8 (W8A8, QDQ)")
    p.set_defaults(func=cmd_export)

    from compressor.cli.compress import add_parser  # it builds on this module's helpers

    add_parser(sub)

    p = sub.add_parser(
        "compare", help="compare recipes side by side (a study file, or several recipes)"
    )
    p.add_argument("files", nargs="+", metavar="STUDY_OR_RECIPES")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the study's, or 0)")
    p.add_argument("--out", help="study folder (default runs/studies/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="run N trials at once (worker processes; the CPUs are split between them)",
    )
    p.add_argument(
        "--launcher",
        choices=plugins.registries.launchers.names(),
        help="where trials run (default: the study's launcher:, else one by one in this process)",
    )
    with_set(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="re-render a study's tables and plots from its store")
    p.add_argument("study_dir")
    p.set_defaults(func=cmd_report)

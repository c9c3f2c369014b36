"""The plugin contract: the core names no built-in, plugins use only the plugin API and no
family imports another, and every hook has an implementation that a test exercises."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressor import plugin_api
from compressor.contract import hookspecs
from compressor.host.manager import Plugins
from tests.support import ROOT

CORE = ROOT / "compressor"
PLUGINS = ROOT / "plugins"
MODULE_KINDS = {"linear", "conv", "embedding"}  # selection's module kinds, not operators
# The one built-in type the core names: the default operator of the built-ins' configs
# (kit/defaults.py), kept in the kit so every family agrees on it; it is validated like any
# other spec, so the core still runs without the plugin that provides it. "pruned" in the
# channel removal toolkit is a report key (dense vs pruned sizes), not the exporter's name;
# "heads"/"neurons" in the unit removal toolkit are the keys of what each layer kept.
NAMED_ON_PURPOSE = {
    "compressor/kit/defaults.py": ["magnitude"],
    "compressor/kit/channel_removal.py": ["pruned"],
    "compressor/kit/unit_removal.py": ["heads", "neurons"],
}


def _string_literals(path: Path) -> set[str]:
    """Every string constant in the module except docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def builtin_names(plugins: Plugins) -> set[str]:
    names = {entry.name for registry in plugins.registries.all() for entry in registry}
    return names - MODULE_KINDS


def test_no_core_module_names_a_builtin_type(plugins: Plugins) -> None:
    names = builtin_names(plugins)
    assert {"magnitude", "nm", "oneshot", "realised", "sam", "cram", "gmp", "pruned"} <= names
    found = {
        str(path.relative_to(ROOT)): sorted(_string_literals(path) & names)
        for path in CORE.rglob("*.py")
    }
    assert {path: hits for path, hits in found.items() if hits} == NAMED_ON_PURPOSE


def test_builtin_plugins_import_only_the_plugin_api() -> None:
    wrong = []
    for path in PLUGINS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            for module in modules:
                if module.split(".")[0] == "compressor" and module != "compressor.plugin_api":
                    wrong.append(f"{path.relative_to(ROOT)}: {module}")
    assert wrong == []


def _imported_modules(source: str, package: str) -> list[str]:
    """The absolute names of every module ``source`` (a module of ``package``) imports."""
    here = package.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append(module)
            # ``from compressor_plugins import nm`` imports the family nm
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def _family_of(module: str, families: set[str]) -> str | None:
    parts = module.split(".")
    if parts[0] == "compressor_plugins" and len(parts) > 1 and parts[1] in families:
        return parts[1]
    return None


def test_no_builtin_family_imports_another() -> None:
    """A family is written as a third party would write it: what two families share lives in
    the plugin API's kit, never in one of them (an import-linter contract checks it too)."""
    families = {p.name for p in PLUGINS.iterdir() if (p / "__init__.py").exists()}
    assert {"prune", "nm", "channel", "evaluate", "export"} <= families
    wrong = []
    for path in PLUGINS.rglob("*.py"):
        package = ".".join(["compressor_plugins", *path.relative_to(PLUGINS).parent.parts])
        own = _family_of(package, families)
        for module in _imported_modules(path.read_text(), package):
            if _family_of(module, families) not in (None, own):
                wrong.append(f"{path.relative_to(ROOT)}: {module}")
    assert wrong == []


def test_the_family_check_sees_every_kind_of_import() -> None:
    source = (
        "import compressor_plugins.prune.gmp\n"
        "from compressor_plugins.nm.operator import NM\n"
        "from compressor_plugins import channel\n"
        "from ..export import pruned\n"
        "from . import own\n"
        "from compressor.plugin_api import keep_count\n"
    )
    families = {"prune", "nm", "channel", "export", "evaluate"}
    modules = _imported_modules(source, "compressor_plugins.evaluate")
    assert [_family_of(m, families) for m in modules] == [
        "prune",
        *["nm", "nm"],  # the module, and the name imported from it
        *[None, "channel"],
        *["export", "export"],
        *["evaluate", "evaluate"],
        *[None, None],
    ]


def test_every_export_is_used_by_a_builtin_or_documented_for_third_parties() -> None:
    used = set()
    for path in PLUGINS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "compressor.plugin_api":
                used |= {alias.name for alias in node.names}
    guide = (ROOT / "docs" / "plugins.md").read_text()
    documented = {n for n in plugin_api.__all__ if re.search(rf"`{re.escape(n)}\b", guide)}
    for line in re.findall(r"^from compressor\.plugin_api import (.*)$", guide, re.M):
        documented |= {name.strip() for name in line.split(",")}  # imported by an example
    idle = [n for n in plugin_api.__all__ if n not in used | documented]
    assert idle == []


def test_the_plugin_api_exports_what_it_declares() -> None:
    missing = [name for name in plugin_api.__all__ if not hasattr(plugin_api, name)]
    assert missing == []
    assert {"Operator", "Evaluator", "Exporter", "CompressionContext", "hookimpl"} <= set(
        plugin_api.__all__
    )


def _implementations() -> dict[str, list[str]]:
    """hook name -> the built-in or test plugin modules implementing it."""
    sources = list(PLUGINS.rglob("*.py")) + list((ROOT / "tests" / "support").rglob("*.py"))
    found: dict[str, list[str]] = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "hookimpl" for d in node.decorator_list
            ):
                found.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_hook_has_an_implementation() -> None:
    specs = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "compressor_spec")]
    found = _implementations()
    assert [spec for spec in specs if spec not in found] == []


def test_observer_hooks_see_every_step_of_a_cli_run(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\nmodel: {name: mlp, hidden: [8]}\n"
        "data: {name: synthetic, samples: 32, test_samples: 16, features: 4, batch_size: 16}\n"
        "train: {epochs: 2}\noptimizer: {name: sgd}\n"
        "modifiers:\n  - {type: gmp, schedule: {kind: linear, final: 0.5, end: 2}}\n"
    )
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "COMPRESSOR_TEST_EVENTS": str(events)}
    command = [sys.executable, "-m", "compressor.cli", "--plugin",
               str(ROOT / "tests" / "support" / "observers.py"), "run", str(recipe),
               "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    assert rows[0] == {"event": "session_started", "step": 0, "total": 4}
    steps = [r for r in rows if r["event"] == "step_finished"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(isinstance(r["loss"], float) for r in steps)
    assert steps[0]["sparsity"] == pytest.approx(0.25, abs=0.02)
    assert steps[-1]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert rows[-1] == {"event": "session_finished", "step": 4, "steps": 4}

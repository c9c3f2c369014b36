"""Plugin loading: built-ins, a real entry-point distribution, plugin files, switches."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.contract.errors import PluginError
from compressor.host.manager import builtin_plugins, load_plugins
from tests.support import ROOT

PACKAGE = ROOT / "tests" / "support" / "plugin_pkg"
COMPRESSOR = [sys.executable, "-m", "compressor.cli"]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Install the example distribution into a private folder; return an env that sees it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PACKAGE),
        ],
        check=True,
        cwd=tmp_path_factory.mktemp("build"),
    )
    env = dict(os.environ)
    env.pop("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", None)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def test_entry_point_plugin_is_listed_with_version_and_types(
    installed_plugin: dict[str, str],
) -> None:
    result = subprocess.run(
        [*COMPRESSOR, "plugins", "--json"],
        env=installed_plugin,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["random_prune"]["distribution"] == "compressor-random-prune"
    assert rows["random_prune"]["version"] == "0.2.0"
    assert rows["random_prune"]["provides"] == {"operators": ["random"], "evaluators": ["density"]}


def test_recipe_using_the_plugin_validates_and_runs(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    recipe = tmp_path / "random.yaml"
    recipe.write_text(
        "name: random\nmodel: {name: mlp, hidden: [8]}\n"
        "data: {name: synthetic, samples: 32, test_samples: 16, features: 4, batch_size: 16}\n"
        "train: {epochs: 1}\noptimizer: {name: sgd}\n"
        "modifiers:\n  - type: oneshot\n    sparsity: 0.5\n    operator: {kind: random}\n"
    )
    validate = subprocess.run(
        [*COMPRESSOR, "validate", str(recipe)], env=installed_plugin, capture_output=True, text=True
    )
    assert validate.returncode == 0, validate.stderr
    run = subprocess.run(
        [*COMPRESSOR, "run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"],
        env=installed_plugin,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
    assert any(p["distribution"] == "compressor-random-prune" for p in report["plugins"])


def test_without_the_distribution_the_kind_is_unknown(tmp_path: Path) -> None:
    recipe = tmp_path / "random.yaml"
    recipe.write_text(
        "name: random\nmodel: {name: mlp}\ndata: {name: synthetic}\noptimizer: {name: sgd}\n"
        "modifiers:\n  - {type: oneshot, sparsity: 0.5, operator: {kind: random}}\n"
    )
    result = subprocess.run([*COMPRESSOR, "validate", str(recipe)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown operator kind 'random'" in result.stderr


def test_disable_autoload_switch_hides_entry_points(installed_plugin: dict[str, str]) -> None:
    env = {**installed_plugin, "COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [*COMPRESSOR, "plugins", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert "random_prune" not in {row["name"] for row in json.loads(result.stdout)}


def test_block_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPRESSOR_BLOCK_PLUGINS", "compressor_plugins.prune.gmp")
    plugins = load_plugins(autoload=False)
    assert "gmp" not in plugins.registries.modifiers
    assert "magnitude" in plugins.registries.operators


def test_trace_switch_prints_hook_calls(tmp_path: Path) -> None:
    env = {**os.environ, "COMPRESSOR_TRACE_HOOKS": "1"}
    result = subprocess.run(
        [*COMPRESSOR, "plugins"], env=env, capture_output=True, text=True, check=True
    )
    assert "register_commands" in result.stderr


def test_plugin_file_and_duplicate_names_name_both_plugins(tmp_path: Path) -> None:
    plugin = tmp_path / "dup.py"
    plugin.write_text(
        "from typing import Literal\n"
        "from compressor.plugin_api import Operator, OperatorConfig, hookimpl\n"
        "class Dup(Operator):\n"
        "    class Config(OperatorConfig):\n"
        "        kind: Literal['magnitude']\n"
        "@hookimpl\n"
        "def register_operators(register):\n"
        "    register(Dup)\n"
    )
    with pytest.raises(
        PluginError,
        match=r"operator kind 'magnitude' is registered twice: by plugin "
        r"'compressor_plugins.prune.magnitude' and by plugin 'file:dup.py'",
    ):
        load_plugins([plugin], autoload=False)


def test_unknown_hook_in_plugin_file_is_rejected(tmp_path: Path) -> None:
    plugin = tmp_path / "typo.py"
    plugin.write_text(
        "from compressor import hookimpl\n@hookimpl\ndef register_operator(register):\n    pass\n"
    )
    with pytest.raises(PluginError, match="register_operator"):
        load_plugins([plugin], autoload=False)


def test_every_builtin_is_loaded_and_provides_something() -> None:
    plugins = load_plugins(autoload=False)
    for name in builtin_plugins():
        assert name in plugins.infos
        hooks = [h for h in plugins.pm.get_hookcallers(plugins.pm.get_plugin(name)) or []]
        assert plugins.registries.provided_by(name) or hooks, name


def test_every_hookspec_is_documented() -> None:
    from compressor.contract import hookspecs

    for name in dir(hookspecs):
        func = getattr(hookspecs, name)
        if callable(func) and hasattr(func, "compressor_spec"):
            assert func.__doc__ and len(func.__doc__.strip()) > 20, name


def test_a_third_party_evaluator_appears_in_compare_with_no_core_change(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    base = (
        "name: {name}\nmodel: {{name: mlp, hidden: [8]}}\n"
        "data: {{name: synthetic, samples: 32, test_samples: 16, features: 4, batch_size: 16}}\n"
        "train: {{epochs: 1}}\noptimizer: {{name: sgd}}\n"
    )
    (tmp_path / "dense.yaml").write_text(base.format(name="dense"))
    (tmp_path / "random.yaml").write_text(
        base.format(name="random")
        + "modifiers:\n  - {type: oneshot, sparsity: 0.75, operator: {kind: random}}\n"
    )
    (tmp_path / "study.yaml").write_text(
        "name: third-party\nshared:\n  evaluate: {density: {}}\n"
        "recipes: [dense.yaml, random.yaml]\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [*COMPRESSOR, "compare", str(tmp_path / "study.yaml"), "--out", str(out), "--quiet"],
        env=installed_plugin,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "density %" in result.stdout and "non-zero fraction" in result.stdout
    with (out / "report.csv").open() as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("density %")
    assert [row[column] for row in rows[1:]] == ["100.00", "25.00"]
    report = json.loads((out / "report.json").read_text())
    random = next(m for m in report["methods"] if m["label"] == "random")
    assert random["metrics"]["density:overall"]["mean"] == pytest.approx(0.25, abs=0.01)
    assert (out / "density.png").read_bytes()[:4] == b"\x89PNG"


def test_plugins_table_never_breaks_a_name_mid_word_at_80_columns() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    listed = json.loads(
        subprocess.run(
            [*COMPRESSOR, "plugins", "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    table = subprocess.run(
        [*COMPRESSOR, "plugins"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert max(len(line) for line in table.splitlines()) <= 80
    for row in listed:
        assert row["name"] in table and f"plugins of {row['distribution']} " in table

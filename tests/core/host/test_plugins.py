"""Plugin loading: built-ins, a real entry-point distribution, plugin files, switches."""

from __future__ import annotations

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

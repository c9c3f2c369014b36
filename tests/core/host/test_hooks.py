"""Every hook call goes through pluggy: tracing sees them all, wrappers run, pluggy's order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from compressor.contract import hookspecs
from compressor.contract.errors import PluginError
from compressor.host.manager import load_plugins
from compressor.train.loop import run
from tests.conftest import TINY_RECIPE, make_recipe

OBSERVER = """\
from compressor.plugin_api import hookimpl

@hookimpl
def session_started(context): pass

@hookimpl
def step_finished(context, step, loss): pass

@hookimpl
def session_finished(context, report): pass

@hookimpl
def run_started(info): pass

@hookimpl
def metrics_logged(info, step, metrics, phase): pass

@hookimpl
def run_finished(info, status, report): pass
"""

ALL_HOOKS = {
    name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "compressor_spec")
}


def traced(stderr: str) -> list[tuple[str, str]]:
    """(hook, plugins) of every ``hook NAME: PLUGINS`` line."""
    lines = [line.removeprefix("hook ") for line in stderr.splitlines() if line.startswith("hook ")]
    return [(name, plugins) for name, _, plugins in (line.partition(": ") for line in lines)]


def test_the_trace_of_a_cli_run_shows_every_hook_it_calls(tmp_path: Path) -> None:
    (tmp_path / "observer.py").write_text(OBSERVER)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    env = {**os.environ, "COMPRESSOR_TRACE_HOOKS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "--plugin", str(tmp_path / "observer.py")]
        + ["run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    calls = traced(result.stderr)
    assert {name for name, _ in calls} == ALL_HOOKS
    # a registration hook is called once per implementing plugin, naming it
    assert ("register_operators", "compressor_plugins.prune.magnitude") in calls
    # TINY_RECIPE: 2 epochs of 64 samples, batch 16 -> 8 optimizer steps
    assert calls.count(("step_finished", "file:observer.py")) == 8
    assert calls.count(("run_finished", "file:observer.py")) == 1


WRAPPER = """\
from compressor.plugin_api import hookimpl

SEEN = []

@hookimpl
def step_finished(context, step, loss):
    SEEN.append(("plain", step))

@hookimpl(wrapper=True)
def session_finished(context, report):
    SEEN.append(("before", report["steps"]))
    result = yield
    SEEN.append(("after", report["steps"]))
    return result
"""


def test_a_wrapper_observer_runs_around_the_others(tmp_path: Path) -> None:
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    plugins = load_plugins([tmp_path / "wrapper.py"], autoload=False)
    run(make_recipe(TINY_RECIPE, plugins), tmp_path / "run", plugins=plugins, progress=False)
    seen = plugins.pm.get_plugin("file:wrapper.py").SEEN
    assert seen == [("plain", step) for step in range(1, 9)] + [("before", 8), ("after", 8)]


def order_plugin(name: str, marker: str) -> str:
    return (
        "from compressor.plugin_api import hookimpl\n"
        f"@hookimpl({marker})\n"
        f"def session_started(context):\n    context.calls.append({name!r})\n"
    )


def test_observers_run_in_pluggys_order_with_tryfirst_and_trylast(tmp_path: Path) -> None:
    """tryfirst first and trylast last whatever their place, the rest last-registered first."""
    files = []
    for name, marker in [("a", "tryfirst=True"), ("b", ""), ("c", ""), ("d", "trylast=True")]:
        files.append(tmp_path / f"{name}.py")
        files[-1].write_text(order_plugin(name, marker))
    plugins = load_plugins(files, autoload=False)
    context = SimpleNamespace(calls=[])
    plugins.notify("session_started", context=context)
    assert context.calls == ["a", "c", "b", "d"]


def test_a_failing_wrapper_is_named(tmp_path: Path) -> None:
    (tmp_path / "w.py").write_text(
        "from compressor.plugin_api import hookimpl\n"
        "@hookimpl(wrapper=True)\n"
        "def session_started(context):\n    yield\n    raise ValueError('after')\n"
    )
    plugins = load_plugins([tmp_path / "w.py"], autoload=False)
    with pytest.raises(
        PluginError,
        match=r"^plugin 'file:w.py' \(.*w.py -\) failed in session_started: "
        r"ValueError: after$",
    ):
        plugins.notify("session_started", context=SimpleNamespace())

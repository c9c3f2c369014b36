"""A failing plugin is one line naming the plugin and where it failed, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.cli.main import main
from tests.conftest import TINY_RECIPE

PLUGINS = {
    "register": (
        "from compressor.plugin_api import hookimpl\n"
        "@hookimpl\ndef register_operators(register):\n    raise ValueError('nope')\n",
        "plugin 'file:p.py' ({path} -) failed in register_operators: ValueError: nope",
    ),
    "session_started": (
        "from compressor.plugin_api import hookimpl\n"
        "@hookimpl\ndef session_started(context):\n    raise KeyError('started')\n",
        "failed in session_started: KeyError: 'started'",
    ),
    "step_finished": (
        "from compressor.plugin_api import hookimpl\n"
        "@hookimpl\ndef step_finished(context, step, loss):\n    raise RuntimeError('observer broke')\n",
        "failed in step_finished: RuntimeError: observer broke",
    ),
    "import": (
        "raise ImportError('missing dependency xyz')\n",
        "failed to import: ImportError: missing dependency xyz",
    ),
    "sys-exit": ("import sys\nsys.exit(3)\n", "failed to import: SystemExit: 3"),
    "operator": (
        "from typing import Literal\n"
        "from compressor.plugin_api import Operator, OperatorConfig, hookimpl\n"
        "class Boom(Operator):\n"
        "    class Config(OperatorConfig):\n        kind: Literal['boom']\n"
        "    def compute_masks(self, weights, sparsity, generator):\n"
        "        return {n: w[999] for n, w in weights.items()}\n"
        "@hookimpl\ndef register_operators(register):\n    register(Boom)\n",
        "plugin 'file:p.py' ({path} -) failed in Boom.compute_masks: IndexError: index 999",
    ),
}


@pytest.mark.parametrize("kind", list(PLUGINS))
def test_a_failing_plugin_is_named(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, expected = PLUGINS[kind]
    plugin = tmp_path / "p.py"
    plugin.write_text(code)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE + "modifiers: [{type: oneshot, sparsity: 0.5, operator: {kind: boom}}]\n"
                      if kind == "operator" else TINY_RECIPE)  # fmt: skip
    argv = ["--plugin", str(plugin), "run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert expected.format(path=plugin) in err


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = PLUGINS["step_finished"]
    (tmp_path / "p.py").write_text(code)
    (tmp_path / "r.yaml").write_text(TINY_RECIPE)
    argv = ["--debug", "--plugin", str(tmp_path / "p.py"), "run", str(tmp_path / "r.yaml"),
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_inspect_works_through_the_real_cli(tmp_path: Path) -> None:
    layer = torch.nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.view(-1, 4)[:, :2] = 0  # every group of 4 keeps 2
    torch.save(
        {"0.weight": layer.weight.detach(), "0.bias": layer.bias.detach()}, tmp_path / "m.pt"
    )
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "inspect", str(tmp_path / "m.pt"), "--nm", "2:4"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "1 satisfied, 0 violated, 0 skipped" in result.stdout
    torch.save({"0.weight": torch.ones(4, 8)}, tmp_path / "dense.pt")
    bad = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "inspect", str(tmp_path / "dense.pt")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "0 satisfied, 1 violated" in bad.stdout

"""The README's examples run as written."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    first = blocks("bash")[0].strip().splitlines()
    assert len(first) == 2
    assert README.index("```bash") < README.index("\n## ")
    assert first[0].startswith("bash scripts/setup.sh && ")
    assert first[1] == "bash scripts/setup.sh && .venv/bin/python -m pytest"


def test_session_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = [b for b in blocks("python") if "Session(" in b]
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(script), run_name="__main__")
    assert "sparsity" in capsys.readouterr().out


def test_recipe_shown_in_readme_is_the_shipped_one() -> None:
    (shown,) = [b for b in blocks("yaml") if "name: gmp90-mnist1d" in b]
    shipped = (ROOT / "recipes" / "gmp-mnist1d.yaml").read_text()
    body = "\n".join(line for line in shipped.splitlines() if not line.startswith("#"))
    assert shown.strip() == body.strip()


def test_plugin_example_loads_and_its_model_trains(tmp_path: Path) -> None:
    (code,) = [b for b in blocks("python") if "@model(" in b]
    (tmp_path / "my_zoo.py").write_text(code)
    (tmp_path / "r.yaml").write_text(
        "name: r\nmodel: {name: tiny_mlp, hidden: 64}\n"
        "data: {name: synthetic, samples: 64, test_samples: 16, features: 8, batch_size: 16}\n"
        "train: {epochs: 1}\noptimizer: {name: sgd}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "compressor.cli", "--plugin", "my_zoo.py", "run", "r.yaml",
         "--out", "run", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout

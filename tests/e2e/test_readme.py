"""The README's examples run as written."""

from __future__ import annotations

import re
import runpy
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

"""docs/integrations/: every page's examples run as written and print what the page shows.

Each Python block on a page is an example (first line ``# example: <file>``); the test writes
the page's ``# recipe: <file>`` blocks next to it, runs it in a fresh folder and compares the
last lines it printed with the page's ``# output: <file>`` block.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.docs import BLOCK, marked_blocks

DOCS = ROOT / "docs" / "integrations"
NEEDS = {  # page: the optional packages its examples import
    "hf-trainer.md": ("transformers", "accelerate"),
    "lightning.md": ("lightning",),
    "accelerate.md": ("accelerate",),
}
EXAMPLES = [
    (page, name) for page in NEEDS for name in marked_blocks((DOCS / page).read_text(), "example")
]


def test_every_page_has_examples_and_every_python_block_is_one() -> None:
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(NEEDS)
    for page in NEEDS:
        text = (DOCS / page).read_text()
        examples = marked_blocks(text, "example")
        python = [body for lang, body in BLOCK.findall(text) if lang == "python"]
        assert examples and len(python) == len(examples), page
        assert sorted(examples) == sorted(marked_blocks(text, "output")), page


@pytest.mark.parametrize(("page", "name"), EXAMPLES)
def test_the_example_runs_and_prints_what_the_page_shows(
    page: str,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for package in NEEDS[page]:
        pytest.importorskip(
            package, reason=f"docs/integrations/{page} needs the optional package {package}"
        )
    text = (DOCS / page).read_text()
    for recipe, body in marked_blocks(text, "recipe").items():
        (tmp_path / recipe).write_text(body)
    script = tmp_path / name
    script.write_text(marked_blocks(text, "example")[name])
    monkeypatch.chdir(tmp_path)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        _reset_accelerate()
    expected = marked_blocks(text, "output")[name].strip().splitlines()
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-len(expected) :] == expected


def _reset_accelerate() -> None:
    """accelerate keeps its state in process-wide singletons; the next test starts afresh."""
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(True)
    GradientState._reset_state()

"""docs/methods/language-models.md: its recipes, commands and loading examples run, on a tiny
byte-level Llama folder the test saves (random init; nothing is downloaded)."""

from __future__ import annotations

import json
import runpy
import shlex
from pathlib import Path

import pytest

from compressor.cli.main import main
from tests.core.cli.test_compress import held_out, llama_folder, loaded_perplexity, text_file
from tests.support import ROOT
from tests.support.docs import BLOCK, marked_blocks

pytest.importorskip("transformers", reason="the hf extra is not installed")
pytest.importorskip("compressed_tensors", reason="the compressed-tensors extra is not installed")

PAGE = (ROOT / "docs" / "methods" / "language-models.md").read_text()


def test_the_commands_and_loading_code_of_language_models_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    llama_folder(Path("models/tiny-llama"))
    text_file(Path("corpus.txt"))
    recipes = marked_blocks(PAGE, "recipe")
    assert set(recipes) == {"gptq.yaml", "sparsegpt.yaml"}
    for name, body in recipes.items():
        Path(name).write_text(body)
    commands = [
        shlex.split(line)
        for lang, body in BLOCK.findall(PAGE)
        if lang == "bash"
        for line in body.splitlines()
        if line.strip()
    ]
    assert len(commands) == 2 and all(argv[:2] == ["compressor", "compress"] for argv in commands)
    for argv in commands:
        assert main(argv[1:]) == 0, argv
    assert "block 2/2:" in capsys.readouterr().out
    gptq = json.loads(Path("runs/llama-gptq/report.json").read_text())
    windows = held_out(Path("corpus.txt"), 32, 4)
    folder = Path("runs/llama-gptq/compressed-tensors")
    assert loaded_perplexity(folder, windows) == pytest.approx(
        gptq["perplexity"]["after"], rel=1e-4
    )
    stdlib = json.loads(Path("runs/llama-sparsegpt/report.json").read_text())
    assert stdlib["calibration"]["source"] == "the Python standard library's sources"
    blocks = marked_blocks(PAGE, "load")
    assert set(blocks) == {"hf", "compressed-tensors"}
    for name, code in blocks.items():
        script = tmp_path / f"load_{name}.py"
        script.write_text(code)
        runpy.run_path(str(script), run_name="__main__")
        assert "(1, 11, 256)" in capsys.readouterr().out, name

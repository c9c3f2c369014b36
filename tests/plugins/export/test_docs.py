"""docs/exporting.md: the export commands run through the CLI and every loading example runs."""

from __future__ import annotations

import runpy
import shlex
from pathlib import Path

import pytest

from compressor.cli.main import main
from tests.plugins.export.support import hf_run, llama
from tests.plugins.export.test_sparse import GMP90, RECIPE
from tests.support import ROOT
from tests.support.docs import BLOCK, marked_blocks

pytest.importorskip("transformers", reason="the hf extra is not installed")
pytest.importorskip("compressed_tensors", reason="the compressed-tensors extra is not installed")

PAGE = (ROOT / "docs" / "exporting.md").read_text()


def test_the_commands_and_loading_code_of_exporting_md_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (gptq,) = [b for lang, b in BLOCK.findall(PAGE) if lang == "yaml" and "gptq" in b]
    hf_run(runs, llama(), name="tiny-llama")
    hf_run(runs, llama(hidden=128, inter=256), gptq, name="llama-gptq")
    (runs / "mlp.yaml").write_text(RECIPE + GMP90)
    assert main(["run", str(runs / "mlp.yaml"), "--out", "runs/mlp-gmp", "--quiet"]) == 0
    exports = [
        shlex.split(line)
        for lang, body in BLOCK.findall(PAGE)
        if lang == "bash"
        for line in body.splitlines()
        if line.startswith("compressor export") and "--format onnx" not in line
    ]  # the onnx commands run in test_export_onnx.py
    assert len(exports) == 2
    packing = '"format": "pack-quantized"'
    for argv in [*exports, ["compressor", "export", "runs/mlp-gmp", "--format", "sparse"]]:
        assert main(argv[1:]) == 0, argv
    assert packing in (runs / "llama-gptq/export-compressed-tensors/config.json").read_text()
    capsys.readouterr()
    blocks = marked_blocks(PAGE, "load")
    assert set(blocks) == {"hf", "compressed-tensors", "sparse"}
    expected = {"hf": "(1, 5, 256)", "compressed-tensors": "(1, 5, 256)", "sparse": " zeros"}
    for name, code in blocks.items():
        script = tmp_path / f"load_{name}.py"
        script.write_text(code)
        runpy.run_path(str(script), run_name="__main__")
        assert expected[name] in capsys.readouterr().out, name

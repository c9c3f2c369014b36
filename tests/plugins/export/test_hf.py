"""``--format hf``: a save_pretrained folder plain transformers loads, identical to the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor.train.restore import restore_run
from tests.core.cli.test_export import one_line
from tests.plugins.export.support import GPT2, export, hf_run, llama

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

GMP = "modifiers:\n  - type: gmp\n    schedule: {kind: agp, final: 0.5, end: 1ep}\n"


@pytest.mark.parametrize("spec", [GPT2, llama()], ids=["gpt2", "llama"])
def test_plain_transformers_loads_the_run_with_identical_logits(tmp_path: Path, spec: str) -> None:
    run = hf_run(tmp_path, spec, GMP)
    own = restore_run(run).model.eval()
    (tmp_path / "corpus.txt").unlink()  # the run folder alone must be enough
    folder = tmp_path / "hf"
    assert export(run, "hf", folder) == 0
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 256
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, own(ids).logits)
    theirs = loaded.state_dict()
    zeros = {n: int((t == 0).sum()) for n, t in own.state_dict().items()}
    assert zeros == {n: int((theirs[n] == 0).sum()) for n in zeros}
    assert sum(zeros.values()) > 10_000  # the masks (half of the eligible weights) survive
    before = (folder / "config.json").stat().st_mtime_ns
    assert export(run, "hf", folder) == 2  # an existing folder needs --overwrite
    assert (folder / "config.json").stat().st_mtime_ns == before
    assert export(run, "hf", folder, "--overwrite") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run", "run.yaml"]


def test_a_model_that_is_not_hugging_face_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compressor.cli.main import main
    from tests.conftest import TINY_RECIPE

    (tmp_path / "r.yaml").write_text(TINY_RECIPE)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert export(tmp_path / "run", "hf", tmp_path / "hf") == 2
    assert "needs a Hugging Face model" in one_line(capsys)
    assert not (tmp_path / "hf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "run"]

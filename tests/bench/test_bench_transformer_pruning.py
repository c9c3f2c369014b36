"""The structured transformer pruning benchmark runs end to end in its smoke size (CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (transformers)")

from bench.transformer_pruning import main  # noqa: E402


def test_smoke_loads_the_hf_folder_with_equal_outputs_and_computed_params(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["--smoke", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_abs_diff"] <= 1e-5
    assert result["params"]["pruned"] == result["params"]["computed"] == 76096
    config = result["pruned_config"]
    assert (config["num_attention_heads"], config["intermediate_size"]) == (3, 48)
    assert config["model_type"] == "mistral" and config["head_dim"] == 16

"""check_nm per layer (model or state dict) and the ``compressor inspect`` view."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("COMPRESSOR_DISABLE_PLUGIN_AUTOLOAD", "1")
torch.set_num_threads(1)

from compressor.contract.errors import CompressorError  # noqa: E402
from compressor.host.manager import load_plugins  # noqa: E402
from compressor.plugin_api import nm_mask  # noqa: E402
from compressor_plugins.nm.check import check_nm  # noqa: E402


def pruned_model() -> nn.Module:
    """conv (2:4), linear (2:4), linear with one dense group, linear with in=6 (skipped)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(8, 4, 3),
        nn.BatchNorm1d(4),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.Linear(8, 6),
        nn.Linear(6, 2),
    )
    with torch.no_grad():
        for layer in (model[0], model[3], model[4]):
            layer.weight.mul_(nm_mask(layer.weight, 2, 4))
        model[4].weight[1, :4] = 1.0  # one group now holds 4 non-zeros
    return model


def test_check_nm_on_a_model_and_its_state_dict_agree() -> None:
    model = pruned_model()
    for source in (model, model.state_dict()):
        result = check_nm(source, 2, 4)
        assert set(result) == {"0.weight", "3.weight", "4.weight", "5.weight"}  # no BN, no bias
        assert result["0.weight"].status == "satisfied"
        assert result["0.weight"].sparsity == 0.5
        assert result["3.weight"].status == "satisfied"
        assert result["4.weight"].status == "violated"
        assert result["4.weight"].violating_groups == 1 and result["4.weight"].groups == 12
        assert result["5.weight"].status == "skipped"
        assert "input dim 6" in result["5.weight"].reason


def test_a_sparser_pattern_satisfies_a_looser_check() -> None:
    weight = torch.randn(4, 8)
    weight *= nm_mask(weight, 1, 4)
    assert check_nm({"w.weight": weight}, 2, 4)["w.weight"].status == "satisfied"
    assert check_nm({"w.weight": torch.randn(4, 8)}, 2, 4)["w.weight"].status == "violated"


def cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor")
    sub = parser.add_subparsers(dest="command")
    load_plugins(autoload=False).hook.register_commands(cli=sub)
    return parser


def test_inspect_prints_a_row_per_layer_and_fails_on_violations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = pruned_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "step": 3}, path)
    args = cli().parse_args(["inspect", str(path), "--nm", "2:4", "--width", "200"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "N:M 2:4" in out
    for name in ("0.weight", "3.weight", "4.weight", "5.weight"):
        assert name in out
    assert "NO" in out and "skipped" in out and "50.00%" in out
    assert "2 satisfied, 1 violated, 1 skipped" in out

    with torch.no_grad():
        model[4].weight.mul_(nm_mask(model[4].weight, 2, 4))
    torch.save(model.state_dict(), path)
    args = cli().parse_args(["inspect", str(path)])
    assert args.func(args) == 0
    assert "3 satisfied, 0 violated, 1 skipped" in capsys.readouterr().out


def test_inspect_rejects_bad_patterns_and_files(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli().parse_args(["inspect", "x.pt", "--nm", "4:4"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    args = cli().parse_args(["inspect", str(tmp_path / "junk.pt")])
    with pytest.raises(CompressorError, match="cannot read"):
        args.func(args)

"""The command line end to end on tiny recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor.cli.main import main
from tests.conftest import TINY_RECIPE

GMP = TINY_RECIPE + "modifiers:\n  - type: gmp\n    schedule: {kind: agp, final: 0.6, end: 1ep}\n"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "gmp.yaml"
    path.write_text(GMP)
    return path


def test_run_writes_report_checkpoint_and_model(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 8
    assert report["sparsity"]["zeros"] == 176 - round(0.4 * 176)  # exact top-k over 176 weights
    assert set(report["sparsity"]["per_layer"]) == {"1.weight", "3.weight"}
    assert 0.0 <= report["metrics"]["test_accuracy"] <= 1.0
    assert len(report["recipe_hash"]) == 64
    assert {p["name"] for p in report["plugins"]} >= {"compressor_plugins.prune.gmp"}
    assert report["wall_time_s"] > 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 1


def test_set_overrides_recipe_values(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    assert json.loads((out / "report.json").read_text())["steps"] == 4


def test_export_state_dict(recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert (
        main(["export", str(out), "--format", "state_dict", "--out", str(tmp_path / "m.pt")]) == 0
    )
    weights = torch.load(tmp_path / "m.pt", weights_only=True)
    assert (weights["1.weight"] == 0).float().mean() > 0.5
    assert main(["export", str(out), "--format", "nonsense"]) == 2


def test_explain_shows_the_timeline(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert "2 epochs × 4 steps = 8 optimizer steps" in text
    assert "target sparsity 0.6000" in text
    assert "masks frozen" in text


def test_schema_is_json_schema_with_registered_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    text = json.dumps(schema)
    assert schema["title"] == "Recipe"
    for name in ("gmp", "oneshot", "magnitude", "cubic", "mnist1d_cnn"):
        assert f'"{name}"' in text


def test_plugins_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "gmp, oneshot" in out.replace("│", "").replace("\n", "") or ".gmp" in out


def test_evaluate_a_finished_run_leaves_it_untouched(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    result = tmp_path / "oneshot.json"
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--oneshot",
                "0.5",
                "0.9",
                "--batches",
                "2",
                "--json",
                str(result),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "one-shot robustness" in text and "0.9" in text
    rows = json.loads(result.read_text())["details"]["results"]
    assert [row["target_sparsity"] for row in rows] == [0.5, 0.9]
    assert rows[1]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nm", "2-4"], "--nm takes N:M such as 2:4"),
        (["--oneshot", "1.5"], "bad evaluate options"),
        (["--nm", "4:4"], "bad evaluate options"),
    ],
)
def test_evaluate_rejects_bad_options_cleanly(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *options]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_explain_shows_the_optimizer_and_wrapper_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.support import ROOT

    assert main(["explain", str(ROOT / "recipes" / "cram-plus-multi-mnist1d.yaml")]) == 0
    out = capsys.readouterr().out
    assert "optimizer: sgd (lr 0.1, weight_decay 0.0005, momentum 0.9, nesterov True" in out
    assert (
        "wrapper: cram (every 1, alpha 0.7, rho 0.02, plus True, sparse_grad True,"
        " sparsities [0.7, 0.8, 0.9, 0.95]" in out
    )


def run_tiny(tmp_path: Path, modifiers: str) -> Path:
    """Run the tiny recipe with ``modifiers`` (YAML lines); return the run folder."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE + "modifiers:\n" + modifiers)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    return out


def test_report_labels_sparsity_of_compressed_tensors_and_of_all_eligible_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An excluded layer stays in the eligible count but not in the compressed one."""
    out = run_tiny(
        tmp_path,
        "  - {type: oneshot, sparsity: 0.5, operator: {kind: magnitude, exclude: ['3.*']}}\n",
    )
    sparsity = json.loads((out / "report.json").read_text())["sparsity"]
    assert sparsity["compressed"] == {"sparsity": 0.5, "zeros": 64, "total": 128, "count": 1}
    assert (sparsity["zeros"], sparsity["eligible"]) == (64, 176)
    printed = capsys.readouterr().out
    assert "sparsity (compressed tensors: 1)" in printed and "0.5000 (64/128)" in printed
    assert "sparsity (all eligible weights)" in printed and "0.3636 (64/176)" in printed


def test_a_warning_reaches_the_user_as_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """N:M 2:4 skips the first layer (input dim 6): one `warning:` line, no internal path."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        TINY_RECIPE.replace("features: 8", "features: 6")
        + "modifiers:\n  - {type: oneshot, operator: {kind: nm, keep: 2, group: 4}}\n"
    )
    assert main(["validate", str(recipe)]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "skips" in line]
    assert warned == [
        "warning: N:M 2:4 skips 1 tensor(s) whose input dimension is not a multiple of 4 "
        "(they stay dense): 1.weight (input dim 6)"
    ], err
    assert ".py:" not in err and "Warning" not in err


def test_export_pruned_prints_parameters_macs_and_size_before_and_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_tiny(tmp_path, "  - {type: oneshot, sparsity: 0.5, operator: {kind: channel}}\n")
    capsys.readouterr()
    assert main(["export", str(out), "--format", "pruned"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "export-pruned.json").read_text())
    # 8→16→3 MLP; half of the 16 hidden units go: 8·16+16+16·3+3 = 195 → 8·8+8+8·3+3 = 99
    assert report["params"] == {"dense": 195, "pruned": 99}
    assert "parameters 195 → 99 (-49.2%)" in printed
    macs = report["macs"]
    assert f"MACs       {macs['dense']:,} → {macs['pruned']:,}" in printed
    size = report["file_bytes"]
    assert f"file size  {size['dense']:,} bytes → {size['pruned']:,} bytes" in printed

"""Every broken recipe gives one clear located line and exit code 2 (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.cli.main import main

BASE = """\
name: broken
model: {name: mlp}
data: {name: synthetic}
optimizer: {name: sgd, lr: 0.1}
"""

CASES = {
    "yaml_syntax": (BASE + "modifiers: [\n", r"^r\.yaml:6:1: YAML syntax error: "),
    "unknown_top_level_key": (
        BASE + "modifers: []\n",
        r"^r\.yaml:5:1: modifers: unknown key 'modifers' \(did you mean 'modifiers'\?\)$",
    ),
    "unknown_modifier_type": (
        BASE + "modifiers:\n  - type: gmpp\n",
        r"^r\.yaml:6:11: modifiers\[0\]\.type: unknown modifier type 'gmpp' \(did you mean 'gmp'\?\); known: .*gmp",
    ),
    "unknown_operator_kind": (
        BASE + "modifiers:\n  - type: oneshot\n    sparsity: 0.5\n    operator: {kind: magnitud}\n",
        r"^r\.yaml:8:22: modifiers\[0\]\.operator\.kind: unknown operator kind 'magnitud' \(did you mean 'magnitude'\?\)",
    ),
    "extra_key_in_modifier": (
        BASE + "modifiers:\n  - type: gmp\n    schedule: {kind: cubic, final: 0.5}\n    evry: 3\n",
        r"^r\.yaml:8:5: modifiers\[0\]\.evry: unknown key 'evry'",
    ),
    "wrong_type": (
        BASE.replace("lr: 0.1", "lr: fast"),
        r"^r\.yaml:4:28: optimizer\.lr: Input should be a valid number",
    ),
    "sparsity_above_one": (
        BASE + "modifiers:\n  - type: oneshot\n    sparsity: 1.0\n",
        r"^r\.yaml:7:15: modifiers\[0\]\.sparsity: sparsity must be in \[0, 1\), got 1\.0$",
    ),
    "sparsity_below_zero": (
        BASE + "modifiers:\n  - type: gmp\n    schedule: {kind: linear, final: -0.2}\n",
        r"^r\.yaml:7:37: modifiers\[0\]\.schedule\.final: sparsity must be in \[0, 1\), got -0\.2$",
    ),
    "missing_required_field": (
        BASE + "modifiers:\n  - type: gmp\n",
        r"^r\.yaml:6:5: modifiers\[0\]\.schedule: missing required field 'schedule'$",
    ),
    "end_before_start": (
        BASE
        + "modifiers:\n  - type: gmp\n    schedule: {kind: cubic, final: 0.9, start: 10, end: 5}\n",
        r"^r\.yaml:7:57: modifiers\[0\]\.schedule\.end: end \(5\) is before start \(10\)$",
    ),
    "sparsity_decreasing_without_regrowth": (
        BASE
        + "modifiers:\n  - type: gmp\n    schedule: {kind: linear, initial: 0.8, final: 0.5}\n",
        r"^r\.yaml:7:51: modifiers\[0\]\.schedule\.final: the target sparsity decreases over "
        r"training, but masks never regrow pruned weights",
    ),
    "two_modifiers_masking_the_same_parameters": (
        BASE
        + "modifiers:\n  - type: gmp\n    schedule: {kind: cubic, final: 0.9}\n"
        + "  - type: oneshot\n    sparsity: 0.5\n    operator: {kind: magnitude, include: ['1.*', '3.weight']}\n",
        r"^r\.yaml:8:5: modifiers\[1\]: masks '1\.weight', which modifiers\[0\] already masks",
    ),
    "missing_name": (
        BASE.replace("name: broken\n", ""),
        r"^r\.yaml:1:1: name: missing required field 'name'$",
    ),
    "unknown_model": (
        BASE.replace("name: mlp", "name: mpl"),
        r"^r\.yaml:2:15: model\.name: unknown model 'mpl' \(did you mean 'mlp'\?\)",
    ),
    "bad_epoch_string": (
        BASE + "modifiers:\n  - type: oneshot\n    sparsity: 0.5\n    at: 3 weeks\n",
        r"^r\.yaml:8:9: modifiers\[0\]\.at: '3 weeks' is neither a step count nor epochs",
    ),
    "not_a_mapping": ("- just\n- a list\n", r"^r\.yaml:1:1: a recipe must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_recipe_gives_one_located_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text, pattern = CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(text)
    assert main(["validate", "r.yaml"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in captured.err


def test_valid_recipe_exits_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(BASE)
    assert main(["validate", "r.yaml"]) == 0
    assert "r.yaml: ok" in capsys.readouterr().out


def test_missing_file_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


LATE_CASES = {
    "evaluator_selects_nothing": (
        BASE
        + "evaluate:\n  oneshot: {sparsities: [0.5], operator: {kind: magnitude, include: ['nothing.*']}}\n",
        r"^r\.yaml:6:\d+: evaluate\.oneshot\.operator: selects no tensors in this model",
    ),
    "unknown_device": (
        BASE + "train: {device: gpu0}\n",
        r"^r\.yaml:5:\d+: train\.device: 'gpu0' is not a torch device",
    ),
    "negative_float_steps": (
        BASE + "modifiers:\n  - {type: oneshot, sparsity: 0.5, at: -1.0}\n",
        r"^r\.yaml:6:\d+: modifiers\[0\]\.at: .*>= 0",
    ),
}


@pytest.mark.parametrize("case", sorted(LATE_CASES))
def test_problems_found_only_with_the_model_are_still_located(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    text, pattern = LATE_CASES[case]
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(text)
    assert main(["validate", "r.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), lines


def test_cram_without_sparsities_is_rejected_by_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(BASE + "wrapper: {name: cram, sparsities: []}\n")
    assert main(["validate", "r.yaml"]) == 2
    assert "r.yaml:5:" in capsys.readouterr().err


REGROW_PLUGIN = """\
from typing import Literal
from compressor.plugin_api import Modifier, TypeConfig, hookimpl
class Regrow(Modifier):
    regrows = True
    class Config(TypeConfig):
        type: Literal['regrow']
@hookimpl
def register_modifiers(register):
    register(Regrow)
"""


def test_decreasing_sparsity_is_accepted_when_a_modifier_regrows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("regrow.py").write_text(REGROW_PLUGIN)
    Path("r.yaml").write_text(
        BASE
        + "modifiers:\n  - type: gmp\n    schedule: {kind: linear, initial: 0.8, final: 0.5}\n"
        + "  - type: regrow\n"
    )
    assert main(["--plugin", "regrow.py", "validate", "r.yaml"]) == 0, capsys.readouterr().err

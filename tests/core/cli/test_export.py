"""``compressor export``'s bad-input rules: exit 2, one line, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor.cli.main import main
from compressor.kit.extras import require_package
from compressor.plugin_api import InputError
from tests.conftest import TINY_RECIPE

FAILING = '''
from pathlib import Path
from typing import Literal

from compressor.plugin_api import Exporter, TypeConfig, hookimpl


class Failing(Exporter):
    """Writes half a file and a side file, then fails."""

    class Config(TypeConfig):
        format: Literal["failing"] = "failing"

    def export(self, context, model, path):
        path.write_bytes(b"half")
        path.with_suffix(".json").write_text("{}")
        raise RuntimeError("the disk caught fire")


class Missing(Exporter):
    class Config(TypeConfig):
        format: Literal["missing"] = "missing"

    requires = (("no_such_module_xyz", "nonesuch"),)


@hookimpl
def register_exporters(register):
    register(Failing)
    register(Missing)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "r.yaml").write_text(TINY_RECIPE)
    assert main(["run", str(root / "r.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_an_existing_output_needs_overwrite(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "m.pt"
    target.write_bytes(b"precious")
    argv = ["export", str(run), "--format", "state_dict", "--out", str(target)]
    assert main(argv) == 2
    assert "--overwrite" in one_line(capsys)
    assert target.read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    assert set(torch.load(target, weights_only=True)) == {
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no staging folder left


@pytest.mark.parametrize("kind", ["empty", "absent"])
def test_a_run_without_a_model_file_is_exit_2(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    if kind == "empty":
        folder.mkdir()
    assert main(["export", str(folder), "--format", "state_dict"]) == 2
    assert str(folder) in one_line(capsys)
    assert list(tmp_path.iterdir()) == ([folder] if kind == "empty" else [])
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_failing_exporter_leaves_nothing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING)
    out = tmp_path / "out"
    argv = ["--plugin", str(plugin), "export", str(run), "--out", str(out / "m.bin")]
    assert main([*argv, "--format", "failing"]) == 1
    assert "the disk caught fire" in one_line(capsys)
    assert list(out.iterdir()) == []
    assert main([*argv, "--format", "missing"]) == 2
    assert one_line(capsys) == (
        "error: --format missing needs the 'no_such_module_xyz' package: "
        "pip install 'compressor[nonesuch]'"
    )
    assert list(out.iterdir()) == []


def test_require_package_names_the_extra() -> None:
    assert require_package("json", "none").dumps([1]) == "[1]"
    with pytest.raises(InputError, match=r"pip install 'compressor\[sparse\]'"):
        require_package("no_such_module_xyz", "sparse", "the sparse format")

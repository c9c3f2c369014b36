"""``--format sparse``: bitmask / N:M encodings, a bit-for-bit round trip, the size at 90%."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from compressor.cli.main import main
from compressor.train.restore import restore_run
from compressor_plugins.export.sparse import (
    decode_nm,
    encode_nm,
    load_sparse,
    pack_small,
    save_sparse,
    unpack_small,
)
from tests.conftest import TINY_RECIPE
from tests.core.cli.test_export import one_line

pytest.importorskip("safetensors", reason="the sparse extra (safetensors) is not installed")

RECIPE = """\
version: 1
name: wide
model: {name: mlp, hidden: [256, 256]}
data: {name: synthetic, samples: 64, test_samples: 32, features: 64, classes: 4, batch_size: 16}
train: {epochs: 2, seed: 0}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""
GMP90 = "modifiers:\n  - type: gmp\n    schedule: {kind: agp, final: 0.9, end: 1ep}\n"
NM24 = "modifiers:\n  - type: oneshot\n    at: 2ep\n    operator: {kind: nm, keep: 2, group: 4}\n"


def run_of(root: Path, body: str) -> Path:
    (root / "r.yaml").write_text(RECIPE + body)
    assert main(["run", str(root / "r.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def raw(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of ``tensor`` (so ``-0.0`` differs from ``0.0``)."""
    return tensor.reshape(-1).view(torch.uint8)


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and torch.equal(raw(a[n]), raw(b[n]))
        for n in a
    )


def test_90_percent_unstructured_is_a_fifth_of_the_dense_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_of(tmp_path, GMP90)
    assert main(["export", str(run), "--format", "sparse", "--out", str(tmp_path / "s.st")]) == 0
    assert (
        main(["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "d.pt")]) == 0
    )
    dense = torch.load(tmp_path / "d.pt", weights_only=True)
    assert same_bits(load_sparse(tmp_path / "s.st"), dense)
    ratio = (tmp_path / "s.st").stat().st_size / (tmp_path / "d.pt").stat().st_size
    assert ratio <= 0.2, ratio
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["encodings"]["1.weight"] == "bitmask"


def test_a_2_4_run_is_stored_as_values_and_in_group_indices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_of(tmp_path, NM24)
    assert main(["export", str(run), "--format", "sparse"]) == 0
    path = run / "export-sparse.safetensors"
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["encodings"]["1.weight"] == "nm"
    own = restore_run(run).model.state_dict()
    assert same_bits(load_sparse(path), own)
    capsys.readouterr()
    # 2:4 leaves no channel empty: pruned says nothing can be removed and points at sparse
    assert main(["export", str(run), "--format", "pruned", "--out", str(tmp_path / "p.pt")]) == 2
    assert "--format sparse" in one_line(capsys)
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "p.json").exists()


def test_without_safetensors_the_extra_is_named_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r.yaml").write_text(TINY_RECIPE)
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert main(["export", str(tmp_path / "run"), "--format", "sparse"]) == 2
    assert "pip install 'compressor[sparse]'" in one_line(capsys)
    assert not list((tmp_path / "run").glob("export-*"))


def test_round_trip_keeps_negative_zero_ties_and_every_dtype(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, generator=generator)
    weight[torch.rand(8, 16, generator=generator) < 0.9] = 0.0
    weight[0, 0] = -0.0
    nm = torch.randn(4, 8, generator=generator) * torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0])
    shared = torch.randn(5, 3, generator=generator)
    state = {
        "w": weight,
        "nm": nm,
        "half": weight.half(),
        "steps": torch.tensor(7),
        "tied.a": shared,
        "tied.b": shared,
        "dense": torch.randn(3, 3, generator=generator),
        "empty": torch.zeros(0),
    }
    index = save_sparse(state, tmp_path / "x.safetensors")
    kinds = {e["name"]: e.get("encoding", "alias") for e in index["tensors"]}
    assert kinds == {
        "w": "bitmask", "nm": "nm", "half": "bitmask", "steps": "dense",
        "tied.a": "dense", "tied.b": "alias", "dense": "dense", "empty": "dense",
    }  # fmt: skip
    back = load_sparse(tmp_path / "x.safetensors")
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(
            back[name].flatten().view(torch.uint8), tensor.flatten().view(torch.uint8)
        )
    assert torch.signbit(back["w"][0, 0])


def test_nm_encoding_along_each_axis() -> None:
    conv = torch.zeros(4, 8, 3, 3)
    conv[:, 1::4] = 1.5  # 1:4 along the input axis
    conv[:, 2::4] = -2.0
    values, packed = encode_nm(conv, 2, 4, 1)
    assert values.shape == (4 * 9 * 2, 2)
    entry = {"shape": [4, 8, 3, 3], "axis": 1, "keep": 2, "group": 4}
    assert torch.equal(decode_nm(entry, values, packed), conv)
    assert torch.equal(
        unpack_small(pack_small(torch.tensor([3, 0, 2, 1, 7]), 3), 3, 5),
        torch.tensor([3, 0, 2, 1, 7]),
    )

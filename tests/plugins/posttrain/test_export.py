"""The quantized export format: codes, bitmaps and the exact round trip of a quantized model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compressor_plugins.posttrain.export import (
    QuantizedExporter,
    load_quantized,
    pack_bits,
    pack_codes,
    quantized_payload,
    unpack_bits,
    unpack_codes,
)
from tests.plugins.posttrain.support import bound, weights_of

torch.set_num_threads(1)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [1, 7, 64])
def test_codes_and_bitmaps_round_trip(bits: int, count: int) -> None:
    top = 2 ** (bits - 1) - 1
    codes = torch.randint(-top, top + 1, (count,), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count + 1) // 2 if bits <= 4 else count
    assert torch.equal(unpack_codes(packed, bits, count), codes)
    mask = torch.rand(count) > 0.5
    assert pack_bits(mask).numel() == (count + 7) // 8
    assert torch.equal(unpack_bits(pack_bits(mask), count), mask)


def model_on_grid(bits: int, group: int | None) -> nn.Module:
    torch.manual_seed(bits)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 5)
    )
    magnitude = bound({"kind": "magnitude", "scope": "layer", "include": ["4.weight"]}, model)
    pruned = magnitude.project(weights_of(magnitude), 0.8)  # a sparse layer: bitmap storage
    quant = bound({"kind": "quant", "bits": bits, "group_size": group}, model)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in quant.project({**weights_of(quant), **pruned}, None).items():
            params[name].copy_(value)
    return model


@pytest.mark.parametrize(("bits", "group"), [(4, None), (3, 9), (8, 16)])
def test_a_quantized_model_exports_exactly(tmp_path: Path, bits: int, group: int | None) -> None:
    model = model_on_grid(bits, group)
    config = QuantizedExporter.Config(group_size=group)
    path = QuantizedExporter(config).export(None, model, tmp_path / "q.pt")  # type: ignore[arg-type]
    restored = load_quantized(path)
    state = model.state_dict()
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[k], state[k]) for k in state)
    report = torch.load(path, weights_only=True)["report"]
    assert {r["bits"] for r in report.values()} <= set(range(2, bits + 1))
    assert report["4.weight"]["sparse_storage"] is True
    assert all(r["lossless"] for r in report.values())


def test_weights_off_the_grid_are_quantized_at_the_fallback_and_say_so() -> None:
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    _, report = quantized_payload(model, QuantizedExporter.Config())
    assert report["weight"]["bits"] == 8 and report["weight"]["lossless"] is False
    _, report = quantized_payload(model, QuantizedExporter.Config(bits=4))
    assert report["weight"]["bits"] == 4

"""``--format compressed-tensors``: a GPTQ int4 g128 Llama loads in transformers unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compressor.train.restore import restore_run
from compressor_plugins.export.compressed_tensors import recover_scales
from compressor_plugins.posttrain.quant import (
    ct_dequantize,
    ct_quantize,
    ct_range,
    ct_scale,
    group_absmax,
    round_to_grid,
)
from tests.core.cli.test_export import one_line
from tests.plugins.export.support import export, hf_run, llama

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
pytest.importorskip("compressed_tensors", reason="the compressed-tensors extra is not installed")


def oneshot(operator: str) -> str:
    return f"modifiers:\n  - type: oneshot\n    at: 1ep\n    operator: {operator}\n"


GPTQ4 = oneshot(
    "{kind: gptq, bits: 4, group_size: 128, grid: compressed-tensors, "
    "calibration: {samples: 32, batch_size: 16}}"
)


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_gptq_int4_g128_llama_loads_in_transformers(tmp_path: Path) -> None:
    run = hf_run(tmp_path, llama(hidden=256, inter=512), GPTQ4, batch_size=64)
    own = restore_run(run).model.eval()
    folder, dense = tmp_path / "ct", tmp_path / "hf"
    assert export(run, "compressed-tensors", folder) == 0
    assert export(run, "hf", dense) == 0
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (quant["format"], weights["num_bits"], weights["group_size"]) == (
        "pack-quantized",
        4,
        128,
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (loaded(ids).logits - own(ids).logits).abs().max().item() <= 1e-5
    ratio = safetensors_bytes(folder) / safetensors_bytes(dense)
    assert ratio <= 0.3, ratio


def test_rtn_int8_per_row_is_int_quantized(tmp_path: Path) -> None:
    run = hf_run(tmp_path, llama(), oneshot("{kind: quant, bits: 8, grid: compressed-tensors}"))
    assert export(run, "compressed-tensors", tmp_path / "ct") == 0
    quant = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (quant["format"], weights["num_bits"], weights["strategy"]) == (
        "int-quantized",
        8,
        "channel",
    )
    own = restore_run(run).model.eval()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    with torch.no_grad():
        loaded(torch.zeros(1, 4, dtype=torch.long))  # decompresses on the first forward
    theirs = loaded.state_dict()
    assert all(torch.equal(t, theirs[n]) for n, t in own.state_dict().items())


def test_weights_off_the_grid_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = hf_run(tmp_path, llama(), oneshot("{kind: quant, bits: 4}"))  # the symmetric grid
    assert export(run, "compressed-tensors", tmp_path / "ct") == 2
    assert "grid: compressed-tensors" in one_line(capsys)
    assert not (tmp_path / "ct").exists()


@pytest.mark.parametrize("bits", [4, 8])
def test_scales_are_recovered_from_the_weights_alone(bits: int) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 32, generator=generator)
    scale = ct_scale(weight.view(6, 4, 8).abs().amax(-1), bits)
    full = scale.repeat_interleave(8, dim=1)
    codes = ct_quantize(weight, full, bits)
    codes[0, :8] = torch.tensor([1, -2, 0, 3, 1, 0, 0, 2])  # a group whose top code is small
    on_grid = ct_dequantize(codes, full, torch.float32)
    found = recover_scales(on_grid, bits, 8)
    assert found is not None
    again = found.repeat_interleave(8, dim=1)
    assert torch.equal(
        ct_dequantize(ct_quantize(on_grid, again, bits), again, torch.float32), on_grid
    )
    assert int(codes.min()) >= ct_range(bits)[0] and int(codes.max()) <= ct_range(bits)[1]
    assert recover_scales(on_grid, bits, None) is None  # per row is not exact: refused
    assert recover_scales(torch.randn(6, 32, generator=generator), bits, 8) is None


@pytest.mark.parametrize(("bits", "group"), [(4, 8), (8, None), (4, None)])
def test_the_grid_is_compressed_tensors_own_rtn(bits: int, group: int | None) -> None:
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    weight = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    args = QuantizationArgs(
        num_bits=bits,
        symmetric=True,
        strategy="channel" if group is None else "group",
        group_size=group,
    )
    peak = group_absmax(weight, group)
    scale, zero = calculate_qparams(-peak, peak, args)
    assert torch.equal(scale, ct_scale(peak, bits))
    theirs = fake_quantize(weight, scale, zero, args)
    assert torch.equal(round_to_grid(weight, bits, group, "compressed-tensors"), theirs)

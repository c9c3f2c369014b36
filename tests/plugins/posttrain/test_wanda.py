"""Wanda (METHODS.md §10): the mask is its definition, computed by brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.plugin_api import NMSkippedWarning, nm_violations
from tests.plugins.posttrain.support import bound, keep_largest, round_keep, weights_of

torch.set_num_threads(1)


def brute_mask(weight: torch.Tensor, norms: list[float], sparsity: float, nm=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per row of the 2-D weight: the largest |W_ij|·||X_j|| (ties: lower j), by sorting."""
    weight = weight.detach()
    rows, cols = weight.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        scores = [abs(float(weight[r, j])) * norms[j] for j in range(cols)]
        if nm is None:
            for j in keep_largest(scores, round_keep(cols, sparsity)):
                mask[r, j] = True
        else:
            for start in range(0, cols, nm[1]):
                for j in keep_largest(scores[start : start + nm[1]], nm[0]):
                    mask[r, start + j] = True
    return mask


def linear_norms(x: torch.Tensor) -> list[float]:
    rows = x.reshape(-1, x.shape[-1]).double()
    return [math.sqrt(sum(float(v) ** 2 for v in rows[:, j])) for j in range(rows.shape[1])]


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_linear_mask_is_the_definition(sparsity: float) -> None:
    torch.manual_seed(0)
    model = nn.Linear(10, 7)
    x = torch.randn(3, 5, 10) * torch.linspace(0.1, 3, 10)  # extra token dimension
    operator = bound({"kind": "wanda"}, model, [x[:2], x[2:]])
    (mask,) = operator.masks(weights_of(operator), sparsity).values()
    assert torch.equal(mask, brute_mask(model.weight, linear_norms(x), sparsity))


def test_linear_nm_mask_is_the_definition() -> None:
    torch.manual_seed(1)
    model = nn.Linear(16, 6)
    x = torch.randn(40, 16) * torch.rand(16)
    operator = bound({"kind": "wanda", "nm": [2, 4]}, model, [x])
    (mask,) = operator.masks(weights_of(operator), None).values()
    assert torch.equal(mask, brute_mask(model.weight, linear_norms(x), 0.5, nm=(2, 4)))
    assert nm_violations(model.weight * mask, 2, 4) == 0
    assert operator.label(None) == "wanda 2:4" and operator.fixed_sparsity() == 0.5


def conv_norms(conv: nn.Conv1d, x: torch.Tensor) -> list[float]:
    """||X_j|| for GEMM input j = (tap t, channel c) -> index t·in + c, by explicit loops."""
    (k,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    (pad,) = conv.padding
    padded = F.pad(x, (pad, pad)).double()
    positions = (padded.shape[2] - dilation * (k - 1) - 1) // stride + 1
    norms = []
    for t, c in itertools.product(range(k), range(conv.in_channels)):
        total = 0.0
        for b, p in itertools.product(range(x.shape[0]), range(positions)):
            total += float(padded[b, c, p * stride + t * dilation]) ** 2
        norms.append(math.sqrt(total))
    return norms


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_conv_mask_is_the_definition(nm: tuple[int, int] | None) -> None:
    torch.manual_seed(2)
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(5, 4, 11) * torch.tensor([0.2, 1.0, 3.0, 0.5])[None, :, None]
    operator = bound({"kind": "wanda", "nm": list(nm) if nm else None}, conv, [x])
    (mask,) = operator.masks(weights_of(operator), 0.5 if nm is None else None).values()
    as_gemm = conv.weight.detach().permute(0, 2, 1).reshape(6, -1)  # [out, k·in]
    expected = brute_mask(as_gemm, conv_norms(conv, x), 0.5, nm=nm)
    assert torch.equal(mask, expected.view(6, 3, 4).permute(0, 2, 1))
    if nm:
        assert nm_violations(conv.weight * mask, *nm) == 0


def test_masks_only_and_idempotent() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    operator = bound({"kind": "wanda"}, model, [torch.randn(30, 8)])
    assert not operator.is_projection
    once = operator.project(weights_of(operator), 0.5)
    for name, value in once.items():
        kept = value != 0
        assert torch.equal(value[kept], dict(model.named_parameters())[name][kept])
    twice = operator.project(once, 0.5)
    assert all(torch.equal(once[k], twice[k]) for k in once)


def test_nm_skips_layers_it_cannot_group() -> None:
    model = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(80, 3))
    with pytest.warns(NMSkippedWarning, match=r"0.weight \(input dim 1\)"):
        operator = bound({"kind": "wanda", "nm": [2, 4]}, model, [torch.randn(4, 1, 10)])
    masks = operator.masks(weights_of(operator), None)
    assert bool(masks["0.weight"].all())
    assert nm_violations(model[3].weight * masks["3.weight"], 2, 4) == 0


def test_other_sparsity_than_the_pattern_is_refused() -> None:
    from compressor.plugin_api import ConfigError

    model = nn.Linear(8, 4)
    operator = bound({"kind": "wanda", "nm": [2, 4]}, model, [torch.randn(4, 8)])
    with pytest.raises(ConfigError, match="pattern has sparsity 0.5"):
        operator.levels([0.7])
    with pytest.raises(ValueError, match="not 0.7"):
        operator.masks(weights_of(operator), 0.7)

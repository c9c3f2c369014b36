"""The linear-time magnitude mask selects exactly what a stable descending argsort selects."""

from __future__ import annotations

import pytest
import torch

from compressor.plugin_api import keep_count, topk_mask


def _reference(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.9, 0.95, 0.999])
def test_matches_stable_argsort_with_and_without_ties(seed: int, sparsity: float) -> None:
    g = torch.Generator().manual_seed(seed)
    for scores in (
        torch.rand(1001, generator=g),
        torch.randint(0, 7, (1001,), generator=g).float(),  # heavy ties at every threshold
        torch.zeros(1001),
    ):
        keep = keep_count(scores.numel(), sparsity)
        mask = topk_mask(scores, keep)
        assert int(mask.sum()) == keep
        assert torch.equal(mask, _reference(scores, keep))


def test_edge_counts() -> None:
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0])
    assert not topk_mask(scores, 0).any()
    assert topk_mask(scores, 4).all()
    assert topk_mask(scores, 1).tolist() == [True, False, False, False]
    assert topk_mask(scores, 3).tolist() == [True, False, True, True]

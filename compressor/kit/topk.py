"""Exact top-k masks: keep the ``k`` largest scores, ties to the earlier index (METHODS.md §1).

Keeps exactly ``k = round((1 - s)·n)`` entries; ties are broken deterministically (among equal
scores the earlier index in the concatenated order is kept, as a stable descending sort would),
so achieved sparsity equals the target to within one element per tensor. The mask is found
without sorting and, for large models, without concatenating the tensors (a sampled bracket,
then an exact selection inside it): CrAM computes one every training step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def keep_count(n: int, sparsity: float) -> int:
    """``round((1 - s)·n)`` with halves rounded up, clamped to ``[0, n]``."""
    return min(n, max(0, math.floor((1.0 - sparsity) * n + 0.5)))


SELECT_DIRECTLY = 1 << 21  # up to ~2M weights one topk over the concatenation is faster
SAMPLE = 1 << 16  # strided sample used to bracket the threshold


def kth_smallest(chunks: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The exact ``k``-th smallest value (1-based) over 1-D ``chunks``, without concatenating
    them (BENCHMARKS.md S). A strided sample brackets the answer; one exact count below the
    bracket and one selection inside it leave a few candidates for ``kthvalue``. A bracket that
    misses (possible with a skewed sample) is widened, so the result is always exact."""
    total = sum(c.numel() for c in chunks)
    if total <= SELECT_DIRECTLY:
        return torch.kthvalue(torch.cat(list(chunks)), k).values
    stride = max(1, total // SAMPLE)
    sample = torch.cat([c[::stride] for c in chunks]).sort().values
    margin = 4 * int(sample.numel() ** 0.5) + 8  # many standard deviations of the sample quantile
    position = k / total * sample.numel()
    for _ in range(4):
        low, high = int(position) - margin, int(position) + margin
        left = sample[low] if low >= 0 else sample.new_tensor(-math.inf)
        right = sample[high] if high < sample.numel() else sample.new_tensor(math.inf)
        keep = [c >= left for c in chunks]
        under = total - int(torch.stack([m.sum() for m in keep]).sum())
        inside = [c[m.logical_and_(c <= right)] for c, m in zip(chunks, keep, strict=True)]
        if under < k <= under + sum(x.numel() for x in inside):
            return torch.kthvalue(torch.cat(inside), k - under).values
        margin *= 8
    return torch.kthvalue(torch.cat(list(chunks)), k).values


def topk_masks(scores: Sequence[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Boolean masks of the ``keep`` largest entries over all 1-D ``scores`` together.

    Exactly what a stable descending argsort of their concatenation would keep: everything
    above the threshold (the keep-th largest value), then the earliest entries equal to it.
    """
    n = sum(s.numel() for s in scores)
    if keep <= 0 or keep >= n:
        return [torch.full_like(s, keep > 0, dtype=torch.bool) for s in scores]
    if n <= SELECT_DIRECTLY:  # small: one partial selection over the concatenation is fastest
        flat = torch.cat(list(scores))
        if 2 * keep <= n:
            threshold = torch.topk(flat, keep, sorted=False).values.min()
        else:
            threshold = torch.topk(flat, n - keep, largest=False, sorted=False).values.max()
    else:
        threshold = kth_smallest(scores, n - keep + 1)
    masks = [s >= threshold for s in scores]
    if int(torch.stack([m.sum() for m in masks]).sum()) == keep:  # no tie to break (the usual case)
        return masks
    masks = [s > threshold for s in scores]
    need = keep - int(torch.stack([m.sum() for m in masks]).sum())
    for i, s in enumerate(scores):  # ties at the threshold: the earliest ones are kept
        if need <= 0:
            break
        ties = s == threshold
        take = ties & (torch.cumsum(ties, 0) <= need)
        need -= int(take.sum())
        masks[i] = masks[i] | take
    return masks


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries of a 1-D tensor (stable tie order)."""
    return topk_masks([scores], keep)[0]

"""N:M group layouts and masks (METHODS.md §1): keep N weights in every group of M.

Groups run along the *input* axis so the pattern matches what sparse tensor cores accelerate:
Linear ``[out, in]`` along ``in``; ConvNd ``[out, in, *k]`` is viewed as ``[out, *k, in]``
first, so a group never straddles kernel positions. Within a group the N largest ``|w|`` are
kept; ties go to the earlier input index, so masks are deterministic. Shared by the N:M
operator, the post-training methods that prune to N:M and the 2:4 exporter.
"""

from __future__ import annotations

import torch


class NMSkippedWarning(UserWarning):
    """Some selected tensors cannot be grouped (input dimension not a multiple of M)."""


def to_group_layout(tensor: torch.Tensor) -> torch.Tensor:
    """``[out, in, *k] -> [out, *k, in]``: the input axis last, so groups run along it.

    2-D tensors (Linear) are returned unchanged; the result is a view (not contiguous).
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"N:M needs a weight with at least 2 dims, got shape {tuple(tensor.shape)}"
        )
    if tensor.dim() == 2:
        return tensor
    return tensor.permute(0, *range(2, tensor.dim()), 1)


def from_group_layout(tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_group_layout`: ``[out, *k, in] -> [out, in, *k]``."""
    if tensor.dim() <= 2:
        return tensor
    last = tensor.dim() - 1
    return tensor.permute(0, last, *range(1, last))


def input_dim(tensor: torch.Tensor) -> int:
    """The size of the axis groups run along (``in``; per conv group for grouped convs)."""
    return int(tensor.shape[1]) if tensor.dim() >= 2 else 0


def groupable(tensor: torch.Tensor, group: int) -> bool:
    return tensor.dim() >= 2 and input_dim(tensor) % group == 0


def group_view(tensor: torch.Tensor, group: int) -> torch.Tensor:
    """``[num_groups, group]``: every row is one group of M consecutive input weights."""
    if not groupable(tensor, group):
        raise ValueError(
            f"input dimension {input_dim(tensor)} of shape {tuple(tensor.shape)} "
            f"is not a multiple of the group size {group}"
        )
    return to_group_layout(tensor).reshape(-1, group)


def _from_groups(groups: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    layout_shape = to_group_layout(like).shape
    return from_group_layout(groups.reshape(layout_shape)).contiguous()


def _check_pattern(keep: int, group: int) -> None:
    if not 1 <= keep < group:
        raise ValueError(f"need 1 <= keep < group, got keep={keep}, group={group}")


def nm_mask(tensor: torch.Tensor, keep: int = 2, group: int = 4) -> torch.Tensor:
    """Boolean keep-mask with the ``keep`` largest ``|x|`` of every group of ``group``.

    Ties go to the earlier input index (stable sort), so the mask is deterministic.
    """
    _check_pattern(keep, group)
    scores = group_view(tensor.detach().abs(), group)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :keep], True)
    return _from_groups(mask, tensor)


def nm_ramp_mask(
    tensor: torch.Tensor,
    keep: int,
    group: int,
    fraction: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """A partial N:M mask: prune ``round(fraction · G · (M - N))`` of the tensor's prunable slots.

    Candidates are the ``M - N`` smallest members of every group; the smallest candidates
    across the tensor are pruned first (ties: lower rank within its group, then earlier group).
    Each group therefore loses a prefix of its own ascending order, never more than ``M - N``,
    and ``fraction = 1`` gives exactly :func:`nm_mask`. Entries already pruned in ``prior``
    score below everything else, so ramps are monotone: once pruned, always pruned.
    """
    _check_pattern(keep, group)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    scores = group_view(tensor.detach().abs().float(), group).clone()
    if prior is not None:
        scores[~group_view(prior.to(torch.bool), group)] = -1.0
    prunable = group - keep
    order = torch.argsort(scores, dim=1, stable=True)  # ascending: smallest first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(group, device=order.device).expand_as(order))
    candidate = rank < prunable
    flat = torch.nonzero(candidate.flatten()).squeeze(1)  # row-major: group, then position
    cand_scores = scores.flatten()[flat]
    cand_rank = rank.flatten()[flat]
    # Sort candidates by (score, rank, group): stable sorts applied from the last key.
    by_rank = torch.argsort(cand_rank, stable=True)
    by_score = torch.argsort(cand_scores[by_rank], stable=True)
    ordered = flat[by_rank[by_score]]
    count = min(ordered.numel(), int(fraction * ordered.numel() + 0.5))
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[ordered[:count]] = False
    if prior is not None:  # a prior heavier than this fraction stays pruned
        mask &= group_view(prior.to(torch.bool), group).flatten()
    return _from_groups(mask.view_as(scores), tensor)


def nm_violations(tensor: torch.Tensor, keep: int, group: int) -> int:
    """How many groups hold more than ``keep`` non-zeros (0 means the N:M pattern holds)."""
    nonzeros = (group_view(tensor.detach(), group) != 0).sum(dim=1)
    return int((nonzeros > keep).sum().item())

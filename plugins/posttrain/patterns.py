"""Config pieces shared by the data-aware sparsity operators: the ``nm: [N, M]`` pattern."""

from __future__ import annotations

__all__ = ["check_nm", "check_scope", "nm_label"]


def check_nm(value: tuple[int, int] | None) -> tuple[int, int] | None:
    """``[N, M]``: N weights kept in every group of M consecutive inputs, ``1 <= N < M``."""
    if value is None:
        return None
    keep, group = value
    if not 1 <= keep < group:
        raise ValueError(f"nm is [N, M] with 1 <= N < M (N kept of every M), got [{keep}, {group}]")
    return value


def nm_label(value: tuple[int, int]) -> str:
    """``(2, 4)`` -> ``'2:4'``."""
    return f"{value[0]}:{value[1]}"


def check_scope(nm: tuple[int, int] | None, scope: str) -> None:
    """An N:M pattern fixes every layer's sparsity: a global allocation cannot apply."""
    if nm is not None and scope == "global":
        raise ValueError("scope: global allocates unstructured sparsity; drop it for nm")

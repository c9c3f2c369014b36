"""``key.path=value`` overrides (``--set`` and a study's ``set:``), applied to raw recipe data.

Values are YAML read with the safe loader (tags are refused), within the same limits as recipe
files; list items are addressed by their index (``modifiers.0.schedule.end=5ep``). Every
mistake is an :class:`OverrideError` saying which override and why; the caller locates it.
"""

from __future__ import annotations

import copy
from typing import Any

from compressor.contract.errors import Loc, RecipeError


class OverrideError(ValueError):
    """One override cannot be applied; ``item`` is the override as written."""

    def __init__(self, item: str, message: str) -> None:
        super().__init__(f"{item}: {message}")
        self.item = item
        self.message = message


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.0=3"`` -> ``(["a", "b", "0"], 3)``."""
    from compressor.recipe.source import parse_yaml  # the same limits as recipe files

    if "=" not in item:
        raise OverrideError(item, "an override looks like key.path=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(k.strip() for k in keys):
        raise OverrideError(item, f"'{dotted}' is not a key path such as train.epochs")
    try:
        value = parse_yaml(raw, "--set").data if raw.strip() else None
    except RecipeError as exc:
        problem = exc.problems[0]
        raise OverrideError(item, f"the value is not valid YAML ({problem.message})") from None
    if isinstance(value, dict) and not value and raw.strip() not in ("{}", "{ }"):
        value = None  # an empty value parses to {} above; it means null
    return [k.strip() for k in keys], value


def apply_overrides(data: Any, overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with every override applied in order."""
    out = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        set_path(out, keys, value, item)
    return out  # type: ignore[no-any-return]


def override_locs(overrides: list[str]) -> list[tuple[Loc, str]]:
    """The recipe path each override sets (list indices as ints), with the override."""
    out: list[tuple[Loc, str]] = []
    for item in overrides:
        keys, _ = parse_override(item)
        out.append((tuple(int(k) if k.isdigit() else k for k in keys), item))
    return out


def set_path(data: Any, keys: list[str], value: Any, item: str) -> None:
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.lstrip("-").isdigit():
                raise OverrideError(item, f"'{where}': a list is indexed by a number, not '{key}'")
            index = int(key)
            if index < 0 or index >= len(node):
                raise OverrideError(
                    item,
                    f"'{where}': no item {index} in a list of {len(node)} (indices 0–{len(node) - 1})",
                )
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            elif key not in node or node[key] is None:
                if keys[depth + 1].lstrip("-").isdigit():
                    raise OverrideError(
                        item, f"there is no list '{where}' to take item {keys[depth + 1]} of"
                    )
                node[key] = {}
                node = node[key]
            elif isinstance(node[key], dict | list):
                node = node[key]
            else:
                raise OverrideError(item, f"'{where}' is a value ({node[key]!r}), not a section")
        else:
            parent = ".".join(keys[:depth]) or "the recipe"
            raise OverrideError(item, f"'{parent}' is a value, not a section or a list")

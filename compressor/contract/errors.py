"""Errors users see: every problem with a recipe becomes ``file:line:col: path: message``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Loc = tuple[str | int, ...]


class CompressorError(Exception):
    """Base class for errors the CLI reports as one clean line (no traceback)."""


class InputError(CompressorError):
    """The user's input cannot work (a missing file, an output that exists, a missing extra):
    the CLI prints one line and exits with code 2, as for a bad recipe."""


class PluginError(CompressorError):
    """A plugin could not be loaded or registered (duplicate names, bad types)."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a recipe."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class RecipeError(CompressorError):
    """One or more located problems with a recipe; ``str()`` gives one line per problem."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class ConfigError(CompressorError):
    """Raised by a plugin when its (already schema-valid) config cannot work for this model.

    ``loc`` is relative to the plugin's config; the engine prefixes where the config sits in the
    recipe and turns it into a located :class:`RecipeError`.
    """

    def __init__(self, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


def format_loc(loc: Sequence[str | int]) -> str:
    """``('modifiers', 0, 'schedule', 'end')`` -> ``modifiers[0].schedule.end``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A ``(did you mean 'x'?)`` suffix, or an empty string when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def data_path(data: Any, loc: Sequence[str | int]) -> Loc:
    """Drop the parts of a pydantic error location that are not keys of the input.

    Pydantic inserts union tags and validator names into locations; walking the input data
    alongside keeps only the real path.
    """
    out: list[str | int] = []
    node: Any = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and 0 <= part < len(node)
        ):
            out.append(part)
            node = node[part]  # type: ignore[index]
        elif isinstance(node, dict | list):
            # Not a key of this node: either a union tag (skip) or a missing/extra key (keep,
            # it is the last element and names what is missing).
            if i == last and not _is_tag(node, part):
                out.append(part)
        else:
            break
    return tuple(out)


def _is_tag(node: Any, part: str | int) -> bool:
    return isinstance(node, dict) and part in {str(v) for v in node.values() if isinstance(v, str)}

"""YAML documents that remember where every key and value came from (for located errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressor.contract.errors import Loc, Problem, RecipeError, format_loc


@dataclass
class Source:
    """Parsed YAML plus the ``(line, col)`` (1-based) of every key and value in it."""

    file: str
    data: Any
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """Where ``loc`` is, or its closest existing ancestor (a missing key -> its parent)."""
        for depth in range(len(loc), -1, -1):
            prefix = loc[:depth]
            if key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        line, col = self.position(loc, key=key)
        return Problem(self.file, line, col, format_loc(loc), message)

    def error(self, loc: Loc, message: str, *, key: bool = False) -> RecipeError:
        return RecipeError([self.problem(loc, message, key=key)])


def parse_yaml(text: str, file: str = "<recipe>") -> Source:
    """Parse with the safe loader only; YAML syntax errors become a located RecipeError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax error: {exc.problem or exc.context}"
        raise RecipeError([Problem(file, line, col, "", message)]) from None
    source = Source(file=file, data=data if data is not None else {})
    if node is not None:
        _walk(node, (), source)
    return source


def read_yaml(path: str | Path) -> Source:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(
            [Problem(str(path), 1, 1, "", f"cannot read file: {exc.strerror}")]
        ) from None
    return parse_yaml(text, str(path))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: yaml.Node, loc: Loc, source: Source) -> None:
    source.values[loc] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = yaml.constructor.SafeConstructor().construct_object(key_node, deep=True)
            child = (*loc, key)
            source.keys[child] = _mark(key_node)
            _walk(value_node, child, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), source)

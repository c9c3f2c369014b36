"""YAML documents that remember where every key and value came from (for located errors).

Recipes are read with the safe loader only, and hostile or broken files are refused before
they cost anything: files over :data:`MAX_BYTES`, text that is not UTF-8, nesting deeper than
:data:`MAX_DEPTH`, more than :data:`MAX_NODES` values, aliases that expand to more than
:data:`MAX_EXPANDED` values (an "alias bomb" is a few lines), duplicate keys (the last would
silently win) and keys that are not text. The scan of the event stream stops at the first
limit, so any input is rejected in time proportional to what was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compressor.contract.errors import Loc, Problem, RecipeError, format_loc

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_EXPANDED = 100_000

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Source:
    """Parsed YAML plus the ``(line, col)`` (1-based) of every key and value in it."""

    file: str
    data: Any
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    foreign: dict[Loc, tuple[str, int, int]] = field(default_factory=dict)
    """Values that came from another file (a study's ``shared:`` and ``set:``): where."""
    notes: dict[Loc, str] = field(default_factory=dict)
    """Values set by an override: a note for messages about them ("from --set ...")."""

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """Where ``loc`` is, or its closest existing ancestor (a missing key -> its parent)."""
        for depth in range(len(loc), -1, -1):
            prefix = loc[:depth]
            if key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def _deepest(self, table: dict[Loc, Any], loc: Loc) -> tuple[int, Any] | None:
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in table:
                return depth, table[loc[:depth]]
        return None

    def folder(self, loc: Loc) -> Path:
        """The folder a relative path at ``loc`` resolves against: that of the file it was
        written in (the recipe, or a study's ``shared:``/``set:``), or the current directory
        for a ``--set`` on the command line."""
        foreign = self._deepest(self.foreign, loc)
        if foreign is not None:
            return Path(foreign[1][0]).parent
        if self._deepest(self.notes, loc) is not None:
            return Path.cwd()
        return Path(self.file).parent

    def problem(self, loc: Loc, message: str, *, key: bool = False) -> Problem:
        note = self._deepest(self.notes, loc)
        if note is not None:
            message = f"{message} ({note[1]})"
        foreign = self._deepest(self.foreign, loc)
        if foreign is not None:
            file, line, col = foreign[1]
            return Problem(file, line, col, format_loc(loc), message)
        line, col = self.position(loc, key=key)
        return Problem(self.file, line, col, format_loc(loc), message)

    def error(self, loc: Loc, message: str, *, key: bool = False) -> RecipeError:
        return RecipeError([self.problem(loc, message, key=key)])


def _fail(file: str, line: int, col: int, message: str) -> RecipeError:
    return RecipeError([Problem(file, line, col, "", message)])


def _mark_of(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _scan(text: str, file: str) -> None:
    """Walk the event stream once, refusing excessive depth and size as soon as seen."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(
                    file, *_mark_of(event.start_mark), f"nesting deeper than {MAX_DEPTH} levels"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            if getattr(event, "tag", None) == "tag:yaml.org,2002:binary":
                raise _fail(
                    file,
                    *_mark_of(event.start_mark),
                    "binary data (!!binary) is not a recipe value",
                )
            nodes += 1
            if nodes > MAX_NODES:
                raise _fail(file, *_mark_of(event.start_mark), f"more than {MAX_NODES} values")


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document has once aliases are expanded (shared nodes counted
    every time they are used), computed without expanding; capped just above the limit."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = min(MAX_EXPANDED + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse_yaml(text: str, file: str = "<recipe>") -> Source:
    """Parse with the safe loader only; syntax errors and the refusals in the module
    docstring become one located RecipeError."""
    if len(text) > MAX_BYTES:
        raise _fail(
            file, 1, 1, f"the file is {len(text)} characters; a recipe is at most {MAX_BYTES}"
        )
    try:
        _scan(text, file)
        node = yaml.compose(text, Loader=Loader)
        if node is not None and _expanded_size(node) > MAX_EXPANDED:
            raise _fail(file, 1, 1, f"the aliases expand to more than {MAX_EXPANDED} values")
        data = yaml.SafeLoader("").construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _mark_of(mark)
        message = f"YAML syntax error: {exc.problem or exc.context}"
        raise RecipeError([Problem(file, line, col, "", message)]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, controls)
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise _fail(
            file, line, col, f"character {exc.character!r} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise _fail(file, 1, 1, f"YAML error: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise _fail(file, 1, 1, f"nesting deeper than {MAX_DEPTH} levels") from None
    source = Source(file=file, data=data if data is not None else {})
    if node is not None:
        _walk(node, source)
    return source


def decode(raw: bytes, file: str) -> str:
    """UTF-8 text, or a located error at the first byte that is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        what = "a binary file" if b"\0" in raw[:4096] else "not UTF-8 text"
        raise _fail(
            file, line, col, f"{what} (byte 0x{raw[exc.start]:02x} cannot be decoded)"
        ) from None


def read_yaml(path: str | Path) -> Source:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _fail(
                str(path),
                1,
                1,
                f"the file is {path.stat().st_size} bytes; a recipe is at most {MAX_BYTES}",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(
            [Problem(str(path), 1, 1, "", f"cannot read file: {exc.strerror}")]
        ) from None
    return parse_yaml(decode(raw, str(path)), str(path))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(root: yaml.Node, source: Source) -> None:
    """Record the position of every key and value (iteratively: no recursion limit); refuse
    duplicate keys and keys that are not text, each at its own position."""
    constructor = yaml.SafeLoader("")
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        source.values.setdefault(loc, _mark(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, tuple[int, int]] = {}
            children = []
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                where = _mark(key_node)
                if not isinstance(key, str):
                    shown = "~ (null)" if key is None else repr(key)
                    message = f"key {shown} is not text (quote it if it is a name)"
                    raise RecipeError([Problem(source.file, *where, format_loc(loc), message)])
                if key in seen:
                    message = (
                        f"duplicate key '{key}' (first at line {seen[key][0]}); "
                        "the second would silently replace the first"
                    )
                    path = format_loc((*loc, key))
                    raise RecipeError([Problem(source.file, *where, path, message)])
                seen[key] = where
                child = (*loc, key)
                source.keys.setdefault(child, where)
                children.append((value_node, child))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(item, (*loc, i)) for i, item in enumerate(node.value)]))

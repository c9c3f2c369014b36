"""No function in compressor/ is longer than a screen: long ones grow nested state that no
name owns (the training loop did, issue 21). Split it into parts that own their state."""

from __future__ import annotations

import ast
from pathlib import Path

import compressor

LIMIT = 80
"""Lines from ``def`` to the last line of the body, decorators and docstring included."""


def long_functions(root: Path, limit: int = LIMIT) -> list[str]:
    """``path:line name (n lines)`` of every function or method over ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > limit:
                    found.append(
                        f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    return found


def test_no_function_in_compressor_is_over_80_lines() -> None:
    assert long_functions(Path(compressor.__file__).parent) == []


def test_the_check_sees_long_functions_and_methods(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    (package / "m.py").write_text(
        f"def short():\n    return 1\n\n\nclass A:\n    @staticmethod\n    def long():\n{body}\n"
    )
    assert long_functions(package) == ["pkg/m.py:7 long (82 lines)"]
    assert long_functions(package, limit=82) == []

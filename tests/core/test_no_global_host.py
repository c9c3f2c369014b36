"""There is no process-wide plugin host: plugins are handed down, and two sets live side by side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compressor.contract.errors import RecipeError
from compressor.host import manager
from compressor.host.manager import Plugins, load_plugins
from tests.conftest import TINY_RECIPE, make_recipe
from tests.support import ROOT

SOURCES = sorted(
    path
    for folder in ("compressor", "plugins")
    for path in (ROOT / folder).rglob("*.py")
    if "__pycache__" not in path.parts
)
GLOBAL_HOST = {"default_plugins", "use_plugins", "plugins_for"}


def module_level_plugins(tree: ast.Module) -> list[str]:
    """Names bound at module level to a Plugins value (annotated or loaded at import)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and "Plugins" in ast.unparse(node.annotation):
            found.append(ast.unparse(node.target))
        value = getattr(node, "value", None)
        loads = ("load_plugins", "load_host", "RunHost")
        if isinstance(value, ast.Call) and ast.unparse(value.func).endswith(loads):
            found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_keeps_or_calls_a_global_host(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & GLOBAL_HOST
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], "a `global` statement"
    assert not module_level_plugins(tree)


def test_the_manager_has_no_process_wide_set() -> None:
    assert not GLOBAL_HOST & set(vars(manager))
    assert not [value for value in vars(manager).values() if isinstance(value, Plugins)]


def test_two_plugin_sets_in_one_process_stay_independent(tmp_path: Path) -> None:
    """A --plugin file loaded into one set is unknown to the other, before and after use."""
    (tmp_path / "extra.py").write_text(
        "from typing import Literal\n"
        "from compressor.plugin_api import Operator, OperatorConfig, hookimpl\n"
        "class Extra(Operator):\n"
        "    class Config(OperatorConfig):\n        kind: Literal['extra']\n"
        "@hookimpl\ndef register_operators(register):\n    register(Extra)\n"
    )
    plain = load_plugins(autoload=False)
    extended = load_plugins([tmp_path / "extra.py"], autoload=False)
    text = TINY_RECIPE + "modifiers: [{type: oneshot, sparsity: 0.5, operator: {kind: extra}}]\n"
    assert make_recipe(text, extended).config.modifiers[0].operator.kind == "extra"
    with pytest.raises(RecipeError, match="unknown operator kind .extra."):
        make_recipe(text, plain)
    assert "extra" in extended.registries.operators
    assert "extra" not in plain.registries.operators
    assert extended.pm is not plain.pm and extended.registries is not plain.registries
    assert "file:extra.py" in extended.infos and "file:extra.py" not in plain.infos

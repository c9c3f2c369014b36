"""compressor: a plugin-based framework for compressing PyTorch models.

For your own training loop: :class:`Session` and :func:`load_recipe`; :func:`load_host` for
the plugin host that plugin functions needing the registries take. For plugin authors:
:mod:`compressor.plugin_api`, the one module a plugin imports from. The sub-packages are the
engine's layers, lowest first — ``contract`` (what plugins build on: protocols, base classes,
hookspecs), ``kit`` (the helpers and mask toolkit they share), ``host`` (plugin manager,
registries), ``recipe`` (schema, YAML positions), ``engine`` (Session, masks),
``train`` (the built-in loop), ``study`` (comparisons, store, reports), ``cli``,
``integrations`` (the Hugging Face Trainer, Lightning, accelerate; optional extras) — each
importing only the ones below it; none imports the built-in plugins in ``compressor_plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compressor._version import __version__
from compressor.contract.hookspecs import hookimpl

if TYPE_CHECKING:
    from compressor.engine.compress import compress
    from compressor.engine.session import Session
    from compressor.recipe.schema import load_recipe
    from compressor.train.host import load_host

__all__ = ["Session", "__version__", "compress", "hookimpl", "load_host", "load_recipe"]


def __getattr__(name: str) -> Any:  # lazy: importing a layer never pulls in the whole engine
    if name == "Session":
        from compressor.engine.session import Session

        return Session
    if name == "compress":
        from compressor.engine.compress import compress

        return compress
    if name == "load_recipe":
        from compressor.recipe.schema import load_recipe

        return load_recipe
    if name == "load_host":
        from compressor.train.host import load_host

        return load_host
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")

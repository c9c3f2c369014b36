"""compressor: a plugin-based framework for compressing PyTorch models.

The public surface is small: :class:`Session`, :func:`load_recipe`, :data:`hookimpl`, and the
base classes in :mod:`compressor.contract.bases` that plugins subclass.
"""

__version__ = "0.1.0"

from compressor.engine.session import Session  # noqa: E402
from compressor.host.manager import hookimpl  # noqa: E402
from compressor.recipe.schema import load_recipe  # noqa: E402

__all__ = ["Session", "__version__", "hookimpl", "load_recipe"]

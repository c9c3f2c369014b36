"""compressor: a plugin-based framework for compressing PyTorch models.

The public surface is small: :class:`Session`, :func:`load_recipe`, :data:`hookimpl`, and the
base classes in :mod:`compressor.interfaces` that plugins subclass.
"""

__version__ = "0.1.0"

from compressor.plugins import hookimpl  # noqa: E402
from compressor.recipe import load_recipe  # noqa: E402
from compressor.session import Session  # noqa: E402

__all__ = ["Session", "__version__", "hookimpl", "load_recipe"]

"""The one version string (pyproject.toml reads it too)."""

__version__ = "0.2.0.dev0"

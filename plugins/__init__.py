"""compressor's built-in plugins (installed as ``compressor_plugins``).

Each module is an ordinary plugin: it uses only :mod:`compressor`'s public interfaces, exactly
as a third-party package would.
"""

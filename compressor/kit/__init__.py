"""kit layer: the implementations plugins and the engine share, built on the contract's
types (helpers for files, threads, BatchNorm, selection, the two-pass skeleton, and the mask
toolkit); everything here is exported to plugins by ``compressor.plugin_api``."""

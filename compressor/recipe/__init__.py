"""recipe layer."""

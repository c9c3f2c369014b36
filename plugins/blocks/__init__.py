"""blocks plugins."""

"""zoo plugins."""

"""export plugins."""

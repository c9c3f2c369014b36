"""evaluate plugins."""

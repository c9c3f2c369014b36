"""channel plugins."""

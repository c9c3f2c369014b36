"""nm plugins."""

"""prune plugins."""

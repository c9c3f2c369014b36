"""optim plugins."""

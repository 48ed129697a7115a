"""pyro-iterative: iterative amortized inference for Pyro."""

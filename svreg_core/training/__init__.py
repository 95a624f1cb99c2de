"""Training of learned SPR registration networks: training data (synthesis, sources, datasets)."""

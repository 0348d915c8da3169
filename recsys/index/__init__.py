"""Nearest-movie search over the movie embeddings: exact and ScaNN searchers, the index stage."""

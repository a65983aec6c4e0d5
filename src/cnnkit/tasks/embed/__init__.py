"""Embeddings: vectors in which images of one class are close, for similarity search."""

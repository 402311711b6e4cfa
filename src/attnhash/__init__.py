"""attnhash: deep hashing with attention for image retrieval."""

__version__ = "0.1.0"

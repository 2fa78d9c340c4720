"""clo: Cross-Lingual Optimization for language transfer in large language models."""

__version__ = "0.1.0"

"""Test support: tiny randomly initialised models of every supported family (no downloads)."""

from mmembed.testing.tiny_models import FAMILIES, build_tiny, build_tiny_tokenizer

__all__ = ["FAMILIES", "build_tiny", "build_tiny_tokenizer"]

"""mmembed: universal multimodal retrieval with multimodal LLMs (MM-Embed)."""

__version__ = "0.1.0"

"""Text normalisation of the evaluation protocol: raw text (MM-Embed) or UniIR's ``format_string``.

UniIR normalises every query and candidate text before embedding: strip, drop carriage returns,
strip double quotes, capitalise the first character, and end with a period unless the text already
ends with ``.``, ``?`` or ``!``. MM-Embed's released code embeds the raw text, so ``"raw"`` is the
default; ``"uniir"`` reproduces UniIR's inputs. The choice is part of the evaluation configuration
written to results.json, and the wrapped encoder gets its own id, so cached pool embeddings of one
format are never served for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mmembed.encoders.base import Encoder, Instructions, Item
from mmembed.errors import ConfigError

TEXT_FORMATS = ("raw", "uniir")


def uniir_format(text: str | None) -> str | None:
    """UniIR's ``format_string`` (see the module docstring); ``None`` stays ``None``."""
    if text is None:
        return None
    text = text.replace("\r", "").strip().strip('"')
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


class UniIRTextEncoder:
    """An encoder whose items' texts are normalised with :func:`uniir_format` first."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.encoder_id = f"{encoder.encoder_id}+uniir-text"
        self.dim = encoder.dim

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode_queries(_formatted(queries), instruction, batch_size=batch_size,
                                           show_progress=show_progress)

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode_candidates(_formatted(candidates), batch_size=batch_size,
                                              show_progress=show_progress)


def _formatted(items: Sequence[Item]) -> list[Item]:
    return [replace(item, text=uniir_format(item.text)) for item in items]


def with_text_format(encoder: Encoder, text_format: str) -> Encoder:
    """``encoder`` itself for ``"raw"``, wrapped for ``"uniir"``."""
    if text_format == "raw":
        return encoder
    if text_format == "uniir":
        return UniIRTextEncoder(encoder)
    raise ConfigError(f"text_format must be one of {', '.join(TEXT_FORMATS)}, got {text_format!r}")

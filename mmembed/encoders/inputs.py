"""What encoders check and cut in their inputs: items that cannot be embedded, over-long texts.

- :func:`check_items` — empty item -> :class:`~mmembed.errors.DataError` naming it; an image given
  to a text-only encoder -> :class:`~mmembed.errors.DataError` naming it.
- :func:`clip_to_tokens` — a cheap prefix of a very long text that still tokenizes past the limit.
- :func:`warn_truncation` — one warning per process and encoder id when text is cut off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mmembed.encoders.base import Item
from mmembed.errors import DataError, Location
from mmembed.types import has_visible_text

logger = logging.getLogger(__name__)


def check_items(items: Sequence[Item], *, accepts_images: bool = True, encoder_name: str = "this encoder") -> None:
    """Refuse items an encoder cannot embed, naming the first offending item."""
    for item in items:
        has_text = has_visible_text(item.text)
        if not has_text and item.image is None:
            raise DataError("an item needs text, an image, or both; this one has neither", Location(item=item.id))
        if item.image is not None and not accepts_images:
            raise DataError(f"this item has an image but {encoder_name} encodes text only", Location(item=item.id))


#: Characters per token assumed before a text is tokenized to find where it can be cut.
CHARS_PER_TOKEN_BUDGET = 32


def clip_to_tokens(text: str | None, count_tokens: Callable[[str], int], max_tokens: int) -> str | None:
    """A prefix of ``text`` that still has more than ``max_tokens`` tokens, or ``text`` itself.

    Tokenizing a 10 MB string to keep its first 256 tokens costs seconds and gigabytes, so long
    texts are cut first. The cut is at whitespace, before which every tokenizer here (WordPiece,
    byte-level BPE, SentencePiece) tokenizes the same with or without what follows; a prefix is
    kept only once it tokenizes to more than ``max_tokens`` tokens, so the tokens a model sees
    after truncation are exactly those of the full text. The budget grows 4x until it is enough.
    """
    budget = max(max_tokens, 1) * CHARS_PER_TOKEN_BUDGET
    while text is not None and len(text) > budget:
        cut = max(text.rfind(" ", 0, budget), text.rfind("\n", 0, budget))
        prefix = text[:cut] if cut > 0 else text[:budget]
        if count_tokens(prefix) > max_tokens:
            return prefix
        budget *= 4
    return text


_warned_truncation: set[str] = set()


def warn_truncation(encoder_id: str, item_id: str, max_length: int) -> None:
    """Log once per process and encoder that inputs are being cut to ``max_length`` tokens.

    One warning rather than one per item: a corpus with long documents would otherwise flood the
    log, while silence would hide that the tail of those documents is ignored.
    """
    if encoder_id in _warned_truncation:
        return
    _warned_truncation.add(encoder_id)
    logger.warning("item %r (and possibly others) is longer than %d tokens and was truncated by %s",
                   item_id, max_length, encoder_id)

"""MM-Embed's prompt format, built in exactly one place.

- query with instruction:    ``Instruct: {instruction}\\nQuery: <image>\\n{text}``
- query without instruction: ``Query: <image>\\n{text}``
- candidate (never an instruction): ``<image>\\n{text}``

``<image>\\n`` is left out when the item has no image; the text part is empty when it has no text.
The leading part that pooling excludes (the instruction prefix, as NV-Embed/MM-Embed do) is
tracked as :attr:`Prompt.prefix`; encoders turn it into a token count with
:func:`count_prefix_tokens` and pooling masks those tokens out (see :mod:`.pooling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where the image goes in a prompt; each backbone replaces it with its own image token(s).
IMAGE_PLACEHOLDER = "<image>"

Role = Literal["query", "candidate"]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and the prefix of it that pooling must exclude."""

    text: str
    #: Leading characters excluded from pooling: ``"Instruct: ...\\nQuery: "`` or ``""``.
    prefix: str
    has_image: bool

    def with_image_token(self, image_token: str) -> Prompt:
        """The same prompt with the placeholder replaced by a backbone's image token string."""
        if image_token == IMAGE_PLACEHOLDER:
            return self
        # build_prompt escaped any placeholder in user text, so the one left is the image slot; it
        # only ever follows the prefix, so the prefix is unchanged.
        return Prompt(self.text.replace(IMAGE_PLACEHOLDER, image_token, 1), self.prefix, self.has_image)


def escape_tokens(text: str | None, tokens: tuple[str, ...] = (IMAGE_PLACEHOLDER,)) -> str | None:
    """``text`` with every occurrence of ``tokens`` broken up (``<image>`` -> ``< image>``), so that
    text a user typed can never become an image slot or a backbone's special image token."""
    if not text:
        return text
    for token in tokens:
        if token:
            text = text.replace(token, f"{token[0]} {token[1:]}")
    return text


def build_prompt(text: str | None, has_image: bool, role: Role, instruction: str | None = None,
                 image_placeholder: str = IMAGE_PLACEHOLDER) -> Prompt:
    """The MM-Embed prompt of one item (placeholders inside ``text`` or ``instruction`` are escaped)."""
    text, instruction = escape_tokens(text, (image_placeholder,)), escape_tokens(instruction, (image_placeholder,))
    if role == "candidate":
        if instruction:
            raise ValueError("candidates never get an instruction")
        prefix = ""
    elif role == "query":
        prefix = f"Instruct: {instruction}\nQuery: " if instruction else ""
        lead = "" if instruction else "Query: "
    else:
        raise ValueError(f"role must be 'query' or 'candidate', got {role!r}")
    body = (f"{image_placeholder}\n" if has_image else "") + (text or "")
    if role == "query":
        return Prompt(prefix + lead + body, prefix, has_image)
    return Prompt(body, prefix, has_image)


def count_prefix_tokens(tokenizer, prefix: str, add_special_tokens: bool = True) -> int:
    """How many leading tokens of ``prefix + rest`` belong to the prefix.

    The prefix is tokenized on its own with trailing whitespace removed: sub-word tokenizers fold
    a trailing space into the next word (``"Query: dog"`` -> ``Query``, ``:``, ``▁dog``), so
    counting the space would swallow the first content token. Special tokens the tokenizer adds at
    the start (BOS, CLS) are counted with the prefix; those it appends at the end are not.
    """
    if not prefix:
        return 0  # nothing to exclude: BOS/CLS stay in the mean, as in sentence-transformers
    ids = tokenizer(prefix.rstrip(), add_special_tokens=False)["input_ids"]
    return len(ids) + (_leading_special_tokens(tokenizer) if add_special_tokens else 0)


def _leading_special_tokens(tokenizer) -> int:
    """Special tokens a tokenizer puts before the text (1 for BOS/CLS, 0 for none)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return start
    return 0

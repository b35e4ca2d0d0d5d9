"""MM-Embed's prompt format, built in exactly one place.

- query with instruction:    ``Instruct: {instruction}\\nQuery: <image>\\n{text}``
- query without instruction: ``Query: <image>\\n{text}``
- candidate (never an instruction): ``<image>\\n{text}``

Dual-tower models (CLIP/SigLIP, sentence-transformers, the score-fusion towers) have no prompt
format: their query text is UniIR's ``"{instruction} {text}"`` (:func:`uniir_query_text`).

``<image>\\n`` is left out when the item has no image; the text part is empty when it has no text.

Which leading tokens of a query pooling excludes is an *instruction mask convention*; there are
two, and they give different vectors for queries with an instruction (:func:`excluded_tokens`):

- ``"prefix"`` (the convention NV-Embed's paper describes; the default, and what mmembed's own
  models are trained with): BOS and the whole ``Instruct: {instruction}\\nQuery: `` prefix
  (:attr:`Prompt.prefix`, counted by :func:`count_prefix_tokens`).
- ``"release"`` (what the released nvidia/MM-Embed code does, and the default when a release
  folder is loaded): the prompt is split at its first ``"\\nQuery: "``; the part before it is
  tokenized on its own *with* BOS and EOS (the release's tokenizer appends EOS), and that many
  leading positions are excluded: BOS, the ``Instruct: {instruction}`` tokens and one more
  position, while ``Query: `` stays in the mean. Prompts without ``"\\nQuery: "`` (queries without
  an instruction, candidates) exclude nothing — unless their own text contains it, which the
  release treats the same way (a quirk reproduced on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where the image goes in a prompt; each backbone replaces it with its own image token(s).
IMAGE_PLACEHOLDER = "<image>"

Role = Literal["query", "candidate"]
InstructionMask = Literal["prefix", "release"]
INSTRUCTION_MASKS = ("prefix", "release")
#: Where the release splits a prompt to find its instruction.
RELEASE_SPLIT = "\nQuery: "
#: The release adds ``576 - 1`` when the split-off part holds an image (LLaVA-NeXT's 336-px view
#: has 576 patch tokens); the number is the release's, whatever the backbone.
RELEASE_IMAGE_TOKENS = 576


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
        if instruction:  # a programming error: the Encoder protocol gives candidates no instruction argument
            raise ValueError("candidates never get an instruction")
        prefix = ""
    elif role == "query":
        prefix = f"Instruct: {instruction}\nQuery: " if instruction else ""
        lead = "" if instruction else "Query: "
    else:  # a programming error: roles come from the encoders' own code (the Role literal)
        raise ValueError(f"role must be 'query' or 'candidate', got {role!r}")
    body = (f"{image_placeholder}\n" if has_image else "") + (text or "")
    if role == "query":
        return Prompt(prefix + lead + body, prefix, has_image)
    return Prompt(body, prefix, has_image)


def uniir_query_text(text: str | None, instruction: str | None) -> str | None:
    """UniIR's query text for text towers: the instruction, a space, then the query's own text.

    A query without visible text (image only) gets the instruction alone as its text part.
    """
    if not instruction:
        return text
    return f"{instruction} {text}" if text and text.strip() else instruction


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


def release_instruction_part(prompt_text: str) -> str | None:
    """The part of a prompt the release's mask counts (before the first ``"\\nQuery: "``), if any."""
    if RELEASE_SPLIT not in prompt_text:
        return None
    return prompt_text.split(RELEASE_SPLIT)[0]


def excluded_tokens(tokenizer, prompt: Prompt, convention: InstructionMask, *, appends_eos: bool = True,
                    image_token: str = IMAGE_PLACEHOLDER) -> int:
    """How many leading positions of ``prompt`` pooling excludes under ``convention``.

    Only the part of ``prompt.text`` before its first ``"\\nQuery: "`` is read, so an EOS appended
    at the end does not matter. ``appends_eos`` says whether the tokenizer the release counted
    with appended EOS (the release's did: ``add_eos_token``).
    """
    if convention == "prefix":
        return count_prefix_tokens(tokenizer, prompt.prefix)
    if convention != "release":  # a programming error: encoders check instruction_mask (ConfigError) when built
        raise ValueError(f"instruction mask must be one of {', '.join(INSTRUCTION_MASKS)}, got {convention!r}")
    part = release_instruction_part(prompt.text)
    if part is None:
        return 0
    count = _leading_special_tokens(tokenizer) + len(tokenizer(part, add_special_tokens=False)["input_ids"])
    count += int(appends_eos)
    if image_token in part:
        count += RELEASE_IMAGE_TOKENS - 1
    return count


def _leading_special_tokens(tokenizer) -> int:
    """Special tokens a tokenizer puts before the text (1 for BOS/CLS, 0 for none)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return start
    return 0

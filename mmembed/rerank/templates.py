"""What the reranking LLM is asked, and how its answer is read.

A (query, candidate) pair becomes one user turn: an optional task line, the query (its image
first, then its text), the candidate (likewise), and a True/False question chosen by the pair's
M-BEIR task type (0-8, derived from the two items' modalities). The model's next-token
distribution at the answer position gives the score: P("True") from a softmax over the "True" and
"False" logits, where each word's logit is the log-sum-exp over its single-token spellings
("True", " True", "▁True" ...), because whether the answer starts with a space depends on the chat
template and the tokenizer, not on what the model means.

Templates are overridable per task type. ``{true}`` and ``{false}`` in a template are replaced by
the configured answer words, so switching to Yes/No does not need new templates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, ModelError
from mmembed.types import Task

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Default question per M-BEIR task type (query modality -> candidate modality).
DEFAULT_TEMPLATES: dict[int, str] = {
    0: "Does the above image match the query caption? {true} or {false}",                       # t -> i
    1: "Is the above candidate text relevant to the query, matching what it asks for? {true} or {false}",  # t -> t
    2: "Do the above image and its text match the query? {true} or {false}",                    # t -> it
    3: "Does the above candidate text describe the query image? {true} or {false}",             # i -> t
    4: "Does the above candidate image show the same thing as the query image? {true} or {false}",  # i -> i
    5: "Do the above candidate image and its text match the query image? {true} or {false}",    # i -> it
    6: "Does the above candidate text answer the query about the query image? {true} or {false}",   # it -> t
    7: ("Does the above candidate image show the query image changed as the query text asks? "
        "{true} or {false}"),                                                                   # it -> i
    8: "Does the above candidate (image and text) match the query (image and text)? {true} or {false}",  # it -> it
}

DEFAULT_ANSWER_WORDS = ("True", "False")
#: Prefixes under which a word appears in byte-level BPE (Ġ) and SentencePiece (▁) vocabularies.
_SPACE_MARKS = ("", "Ġ", "▁", " ")


def resolve_templates(overrides: Mapping[Any, str] | None = None) -> dict[int, str]:
    """Default templates with ``overrides`` applied; keys are task ids 0-8 (ints or digit strings)."""
    templates = dict(DEFAULT_TEMPLATES)
    for key, text in (overrides or {}).items():
        try:
            task_id = int(str(key).removeprefix("task"))
        except ValueError:
            raise ConfigError(f"reranking template key {key!r} is not an M-BEIR task id (0-8)") from None
        if task_id not in DEFAULT_TEMPLATES:
            raise ConfigError(f"reranking template key {key!r} is not an M-BEIR task id (0-8)")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"reranking template for task {task_id} must be a non-empty string")
        templates[task_id] = text
    return templates


def task_of(query: Item, candidate: Item) -> Task:
    """The M-BEIR task type of a pair, from the two items' modalities."""
    return Task(query.modality, candidate.modality)


def render_question(template: str, answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS) -> str:
    return template.replace("{true}", answer_words[0]).replace("{false}", answer_words[1])


def question_for(query: Item, candidate: Item, templates: Mapping[int, str],
                 answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS) -> str:
    return render_question(templates[task_of(query, candidate).id], answer_words)


# ----------------------------------------------------------------------------- the user turn


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


IMAGE_PART: dict[str, str] = {"type": "image"}


def item_parts(label: str, item: Item, text: str | None) -> list[dict[str, str]]:
    """``label`` line, the item's image (as a chat-template image part), then its text."""
    parts = [text_part(f"{label}:\n")]
    if item.image is not None:
        parts.append(IMAGE_PART)  # chat templates put their own separator after an image
    if text:
        parts.append(text_part(f"{text}\n"))
    return parts


def pair_content(query: Item, candidate: Item, question: str, instruction: str | None = None, *,
                 query_text: str | None = None, candidate_text: str | None = None) -> list[dict[str, str]]:
    """The user turn of one pair as chat-template content parts (query before candidate).

    ``query_text``/``candidate_text`` replace the items' texts (e.g. truncated versions). The
    query comes first so that everything before ``"Candidate:"`` is shared by all candidates of a
    query (which is what prefix caching reuses).
    """
    parts = head_content(query, instruction, query_text=query_text)
    parts += item_parts("Candidate", candidate, candidate.text if candidate_text is None else candidate_text)
    parts.append(text_part(question))
    return parts


def head_content(query: Item, instruction: str | None = None, *, query_text: str | None = None
                 ) -> list[dict[str, str]]:
    """The part of :func:`pair_content` shared by all candidates of a query (task line and query)."""
    parts = [text_part(f"Task: {instruction}\n")] if instruction else []
    return parts + item_parts("Query", query, query.text if query_text is None else query_text)


def join_text_parts(parts: Sequence[Mapping[str, str]]) -> str:
    """The content of text-only parts as one string (for text-only chat templates)."""
    if any(p["type"] != "text" for p in parts):
        # a programming error: callers pass text-only parts (images go to VLM rerankers only)
        raise ValueError("join_text_parts got an image part")
    return "".join(p["text"] for p in parts)


# ----------------------------------------------------------------------------- reading the answer


@dataclass(frozen=True)
class AnswerTokens:
    """Vocabulary ids of the positive and negative answer words, each with all its spellings."""

    words: tuple[str, str]
    true_ids: tuple[int, ...]
    false_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer, words: Sequence[str] = DEFAULT_ANSWER_WORDS) -> AnswerTokens:
        if len(words) != 2 or not all(isinstance(w, str) and w.strip() for w in words):
            raise ConfigError(f"answer_words must be two non-empty words (positive, negative), got {list(words)!r}")
        true_ids, false_ids = (single_token_ids(tokenizer, w) for w in words)
        if set(true_ids) & set(false_ids):
            raise ModelError(f"answer words {words[0]!r} and {words[1]!r} share a token in this tokenizer")
        return cls((words[0], words[1]), true_ids, false_ids)

    def p_true(self, logits: torch.Tensor) -> torch.Tensor:
        """P(positive word) from next-token ``logits`` (..., vocab): softmax over the two words."""
        import torch

        logits = logits.float()
        pos = torch.logsumexp(logits[..., list(self.true_ids)], dim=-1)
        neg = torch.logsumexp(logits[..., list(self.false_ids)], dim=-1)
        return torch.sigmoid(pos - neg)


def single_token_ids(tokenizer, word: str) -> tuple[int, ...]:
    """Ids of every single-token spelling of ``word`` (with and without a leading space).

    Looks the spellings up in the vocabulary and also encodes ``word`` and ``" " + word``; when no
    spelling is one token, the first token of ``word`` stands for it (with a warning), as long as
    it differs from the other word's.
    """
    vocab = tokenizer.get_vocab()
    ids = {vocab[mark + word] for mark in _SPACE_MARKS if mark + word in vocab}
    for form in (word, " " + word):
        encoded = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise ModelError(f"the tokenizer turns the answer word {word!r} into no tokens")
        logger.warning("answer word %r is not a single token; scoring its first token %r", word,
                       tokenizer.convert_ids_to_tokens(encoded[0]))
        ids.add(encoded[0])
    return tuple(sorted(ids))

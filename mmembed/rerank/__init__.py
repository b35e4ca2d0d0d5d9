"""Zero-shot reranking of retrieved candidates by prompting a (multimodal) LLM.

- :class:`~mmembed.rerank.base.Reranker` — the protocol; :class:`RerankResult`; fusion with the
  retrieval score (:func:`fuse`, min-max per query); :func:`rerank_run` for evaluation runs.
- :class:`~mmembed.rerank.vlm.VLMReranker` — P("True") from a generative VLM (LLaVA-NeXT,
  Qwen2-VL/2.5-VL, Idefics3/SmolVLM), images of query and candidate in one prompt.
- :class:`~mmembed.rerank.llm.LLMReranker` — text-only causal LM: query likelihood or P("True");
  the bundled SmolLM2-135M-Instruct works out of the box (``model: smollm2``).
- :class:`RerankConfig` + :func:`build_reranker` — what the CLI and the evaluation runner use.

Heavy modules (torch models, transformers) are imported only when a reranker is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mmembed.errors import ConfigError, ModelError
from mmembed.rerank.base import (
    NORMALIZATIONS,
    BaseReranker,
    Reranker,
    RerankResult,
    can_read_images,
    fuse,
    fuse_results,
    normalize_scores,
    rerank_run,
    results_to_run,
)
from mmembed.rerank.templates import DEFAULT_ANSWER_WORDS, DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from mmembed.rerank.llm import LLMReranker
    from mmembed.rerank.vlm import VLMReranker

#: ``RerankConfig.model`` value naming the bundled SmolLM2-135M-Instruct.
BUNDLED_SMOLLM2 = "smollm2"


@dataclass
class RerankConfig:
    """How to rerank; loadable with ``mmembed.config.load_config(RerankConfig, path, overrides)``."""

    #: ``"smollm2"`` (the bundled text LLM) or a local transformers model directory.
    model: str = BUNDLED_SMOLLM2
    #: ``auto``: a directory of a supported VLM family -> ``vlm``, anything else -> ``llm``.
    kind: Literal["auto", "llm", "vlm"] = "auto"
    #: ``auto``: ``query_likelihood`` for an LLM, ``p_true`` for a VLM (the only VLM mode).
    mode: Literal["auto", "query_likelihood", "p_true"] = "auto"
    #: How many of the retriever's top candidates are reranked; the rest keep their order below.
    top_k: int = 10
    #: Fusion weight of the retrieval score: ``alpha * retrieval + (1 - alpha) * rerank`` (min-max
    #: normalised per query); 0 = rerank score only.
    alpha: float = 0.0
    normalization: Literal["minmax", "none"] = "minmax"
    #: Pairs per forward pass (10 = one query's top 10, which is what prefix reuse groups).
    batch_size: int = 10
    #: LLM only: reuse the KV cache of the tokens shared by a group of pairs (see mmembed.rerank.llm).
    prefix_reuse: bool = True
    #: Texts of queries and candidates are cut to this many tokens.
    max_text_tokens: int = 256
    #: Show the retrieval task instruction to the reranker ("Task: ..." line).
    use_instruction: bool = True
    #: Overrides of the True/False question per M-BEIR task id 0-8 (``{true}``/``{false}`` = answer words).
    templates: dict[int, str] = field(default_factory=dict)
    #: LLM query-likelihood prompt; must contain ``{candidate}``; ``None`` = the default.
    ql_template: str | None = None
    answer_words: list[str] = field(default_factory=lambda: list(DEFAULT_ANSWER_WORDS))
    #: LLM only: ``None`` = use the tokenizer's chat template when it has one.
    use_chat_template: bool | None = None
    #: VLM only: padding side of batched prompts (scores do not depend on it).
    padding_side: Literal["left", "right"] = "left"
    #: VLM only: extra keyword arguments for the processor call (e.g. a pixel cap).
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    #: Where the converted SmolLM2 is cached (default ``$MMEMBED_CACHE`` or ``~/.cache/mmembed``).
    cache_dir: str | None = None
    show_progress: bool = False

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if self.model == BUNDLED_SMOLLM2:
            return "llm"
        from mmembed.encoders.vlm_families import SUPPORTED_MODEL_TYPES

        return "vlm" if _model_type(self.model) in SUPPORTED_MODEL_TYPES else "llm"


def build_reranker(config: RerankConfig | None = None) -> LLMReranker | VLMReranker:
    """The reranker a :class:`RerankConfig` describes (loads the model; never downloads)."""
    config = config or RerankConfig()
    kind = config.resolved_kind()
    common: dict[str, Any] = {
        "top_k": config.top_k, "alpha": config.alpha, "normalization": config.normalization,
        "batch_size": config.batch_size, "show_progress": config.show_progress, "templates": config.templates,
        "answer_words": config.answer_words, "use_instruction": config.use_instruction,
        "max_text_tokens": config.max_text_tokens, "device": config.device, "dtype": config.dtype}
    if kind == "vlm":
        if config.mode not in ("auto", "p_true"):
            raise ConfigError(f"a VLM reranker scores P(True) only; mode {config.mode!r} is for text LLMs")
        from mmembed.rerank.vlm import VLMReranker

        return VLMReranker.from_pretrained(config.model, trust_remote_code=config.trust_remote_code,
                                           padding_side=config.padding_side,
                                           processor_kwargs=config.processor_kwargs, **common)
    from mmembed.rerank.llm import LLMReranker

    llm = {**common, "mode": "query_likelihood" if config.mode == "auto" else config.mode,
           "prefix_reuse": config.prefix_reuse, "ql_template": config.ql_template,
           "use_chat_template": config.use_chat_template}
    if config.model == BUNDLED_SMOLLM2:
        return LLMReranker.smollm2(cache_dir=config.cache_dir, **llm)
    return LLMReranker.from_pretrained(config.model, trust_remote_code=config.trust_remote_code, **llm)


def _model_type(path: str) -> str | None:
    """The ``model_type`` of a reranker folder's config.json (read by :mod:`mmembed.encoders.folders`)."""
    from mmembed.encoders.folders import read_folder_config

    try:
        return read_folder_config(path).get("model_type")
    except ModelError as e:
        raise ModelError(f"reranker model {path!r} is neither {BUNDLED_SMOLLM2!r} nor a transformers model "
                         f"directory: {e}") from None


__all__ = ["BUNDLED_SMOLLM2", "DEFAULT_TEMPLATES", "NORMALIZATIONS", "BaseReranker", "RerankConfig",
           "RerankResult", "Reranker", "build_reranker", "can_read_images", "fuse", "fuse_results",
           "normalize_scores", "rerank_run", "results_to_run"]

"""all-MiniLM-L6-v2 for inference without importing transformers: a BERT encoder and its tokenizer.

Importing transformers' BERT costs 2-3 s of a cold process (it pulls in torch.distributed, dynamo
and its model-loading machinery), more than the rest of a search. For embedding, BERT is a few
lines of torch: :class:`CompactBert` computes what ``transformers.BertModel`` (``sdpa``
attention, no pooling layer, eval mode) computes, op for op, with the same parameter names, so
checkpoints, state dicts and weight identities are unchanged. :class:`WordPieceTokenizer` reads
the package's ``tokenizer.json`` with the ``tokenizers`` library and offers the part of the
transformers tokenizer interface that mmembed uses.

Training needs transformers' model (dropout, gradient checkpointing, peft): the towers models
swap it in first (:meth:`mmembed.encoders.parts.TextBackbone.use_transformers`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.errors import ModelError


def read_config(path: Path) -> SimpleNamespace:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu" or \
            config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"{path}: not a plain BERT model (model_type bert, hidden_act gelu, absolute positions)")
    return SimpleNamespace(**config)


# Layers whose parameters are allocated, never initialised (every weight is loaded): torch's own
# layers initialise randomly, which draws from the global RNG, or on the meta device imports dynamo.


class _Linear(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs))
        self.bias = nn.Parameter(torch.empty(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Embedding(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class _LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Embeddings(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.word_embeddings = _Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = _Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = _LayerNorm(c.hidden_size, c.layer_norm_eps)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        embeddings = inputs_embeds + self.token_type_embeddings.weight[0]
        embeddings = embeddings + self.position_embeddings.weight[:length]
        return self.LayerNorm(embeddings)


class _SelfAttention(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.heads = c.num_attention_heads
        self.head_size = c.hidden_size // c.num_attention_heads
        self.query = _Linear(c.hidden_size, c.hidden_size)
        self.key = _Linear(c.hidden_size, c.hidden_size)
        self.value = _Linear(c.hidden_size, c.hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, self.head_size)
        q, k, v = (layer(hidden).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_size ** -0.5)
        return out.transpose(1, 2).contiguous().reshape(*hidden.shape[:-1], -1)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's output of attention and of the feed-forward part."""

    def __init__(self, inputs: int, c: SimpleNamespace):
        super().__init__()
        self.dense = _Linear(inputs, c.hidden_size)
        self.LayerNorm = _LayerNorm(c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.hidden_size, c)


class _Intermediate(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.dense = _Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate_size, c)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention.output(self.attention.self(hidden, mask), hidden)
        return self.output(F.gelu(self.intermediate.dense(attended)), attended)


class _Encoder(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


#: Buffers older checkpoints store (constant position and token type ids); not parameters.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class CompactBert(nn.Module):
    """BERT's encoder for inference, named like ``transformers.BertModel(add_pooling_layer=False)``."""

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    @classmethod
    def from_directory(cls, path: Path) -> CompactBert:
        """The model of a transformers BERT folder (``config.json`` + ``model.safetensors``)."""
        from safetensors.torch import load_file

        model = cls(read_config(path))
        tensors = {k.removeprefix("bert."): v for k, v in load_file(str(path / "model.safetensors")).items()}
        tensors = {k: v for k, v in tensors.items() if not k.startswith("pooler.") and k not in _BUFFERS}
        missing, unexpected = set(model.state_dict()) - set(tensors), set(tensors) - set(model.state_dict())
        if missing or unexpected:
            raise ModelError(f"{path}: weights do not fit BERT (missing {sorted(missing)[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]})")
        model.load_state_dict(tensors, assign=True)
        return model.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.word_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.word_embeddings.weight.device

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        hidden = self.embeddings(inputs_embeds)
        mask = None
        if not bool(attention_mask.all()):  # as transformers: no mask when nothing is padded
            length = attention_mask.shape[1]
            mask = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, length)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return SimpleNamespace(last_hidden_state=hidden)


class WordPieceTokenizer:
    """The package's ``tokenizer.json`` through ``tokenizers``, with the calls mmembed makes of a
    transformers tokenizer: ``tokenizer(texts, add_special_tokens=...)["input_ids"]``,
    ``pad_token_id``, ``convert_tokens_to_ids``, ``len`` and ``backend_tokenizer``."""

    def __init__(self, path: Path, extra_special_tokens: Sequence[str] = ()):
        from tokenizers import AddedToken, Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.backend_tokenizer.no_truncation()
        self.backend_tokenizer.no_padding()
        self.backend_tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                                   for t in extra_special_tokens])
        settings = json.loads((path / "special_tokens_map.json").read_text(encoding="utf-8"))
        pad = settings.get("pad_token", "[PAD]")
        self.pad_token_id = self.convert_tokens_to_ids(pad["content"] if isinstance(pad, dict) else pad)

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        single = isinstance(texts, str)
        encodings = self.backend_tokenizer.encode_batch([texts] if single else list(texts),
                                                        add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encodings]
        return {"input_ids": ids[0] if single else ids}

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_tokens_to_ids(self, token: str) -> int:
        found = self.backend_tokenizer.token_to_id(token)
        if found is None:
            raise ModelError(f"{token!r} is not in the tokenizer's vocabulary")
        return found

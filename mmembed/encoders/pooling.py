"""Pooling of token states into one vector, in exactly one place.

Modes: ``mean`` (masked mean over the tokens after the instruction prefix; the default),
``last`` (the last real token, whatever the padding side), and ``latent_attention`` (NV-Embed:
the token states attend to a trainable latent array, then an MLP, both with residuals, then the
masked mean). Every mode is independent of the padding side and of batch mates.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PoolingMode = Literal["mean", "last", "latent_attention"]
POOLING_MODES = ("mean", "last", "latent_attention")


def pooling_mask(attention_mask: torch.Tensor, exclude_lengths: torch.Tensor | None) -> torch.Tensor:
    """Real tokens that are not among the first ``exclude_lengths`` real tokens of their row.

    Counting real tokens (rather than positions) makes it work for left and right padding alike.
    """
    mask = attention_mask.bool()
    if exclude_lengths is None:
        return mask
    rank = attention_mask.long().cumsum(dim=-1)  # 1-based index among real tokens
    return mask & (rank > exclude_lengths.to(rank.device).unsqueeze(-1))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of the last real token of each row (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class _PreNorm(nn.Module):
    """LayerNorm on the input (and on the context, when there is one) before ``fn``."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, self.norm_context(context))
        return self.fn(x)


class _CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), _GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentAttentionPooler(nn.Module):
    """NV-Embed's latent-attention pooling (module names follow NV-Embed's checkpoint layout).

    The token states are the queries; a trainable array of ``num_latents`` latents provides keys
    and values. Cross-attention and a GEGLU MLP, each pre-normed with a residual, are followed by
    the masked mean over the pooled tokens.
    """

    def __init__(self, hidden_size: int, num_latents: int = 512, latent_dim: int | None = None,
                 num_heads: int = 8, head_dim: int | None = None, mlp_mult: int = 4):
        super().__init__()
        latent_dim = latent_dim or hidden_size
        head_dim = head_dim or max(hidden_size // num_heads, 1)
        self.config = {"hidden_size": hidden_size, "num_latents": num_latents, "latent_dim": latent_dim,
                       "num_heads": num_heads, "head_dim": head_dim, "mlp_mult": mlp_mult}
        self.cross_attend_blocks = nn.ModuleList([
            _PreNorm(hidden_size, _CrossAttention(hidden_size, latent_dim, num_heads, head_dim), latent_dim),
            _PreNorm(hidden_size, _FeedForward(hidden_size, mlp_mult)),
        ])
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * latent_dim**-0.5)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attend, feed_forward = self.cross_attend_blocks
        latents = self.latents.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        hidden = attend(hidden, context=latents) + hidden
        hidden = feed_forward(hidden) + hidden
        return masked_mean(hidden, mask)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode = "mean",
         exclude_lengths: torch.Tensor | None = None, latent_pooler: LatentAttentionPooler | None = None,
         normalize: bool = True) -> torch.Tensor:
    """One vector per row of ``hidden`` (batch, tokens, dim), L2-normalised by default."""
    if mode == "mean":
        out = masked_mean(hidden, pooling_mask(attention_mask, exclude_lengths))
    elif mode == "last":
        out = last_token(hidden, attention_mask)
    elif mode == "latent_attention":
        if latent_pooler is None:  # a programming error: encoders build the pooler with the mode
            raise ValueError("latent_attention pooling needs a LatentAttentionPooler")
        out = latent_pooler(hidden, pooling_mask(attention_mask, exclude_lengths))
    else:  # a programming error: encoders check the mode against POOLING_MODES (ConfigError) when built
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    return F.normalize(out.float(), dim=-1) if normalize else out

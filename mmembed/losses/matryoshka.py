"""Matryoshka representation learning (MRL): the contrastive loss summed over nested prefixes.

Kusupati et al. (2022) train one embedding whose first ``d`` coordinates are themselves a good
embedding for several ``d``: the loss is computed on each prefix (renormalised, as the prefix is
used at search time) and the weighted losses are combined. Here the combination is the weighted
*mean*, so the logged loss stays on the scale of a plain run and the learning rate needs no
change. The full dimension is always among the prefixes (added with weight 1 when not listed):
truncation must not be paid for with the full-dimension score.

Any model family works unchanged: the prefixes are taken from the pooled output, whatever pooled
it (mean, last token, latent attention).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mmembed.errors import ArgumentError


def check_dims(dims: Sequence[int], weights: Sequence[float] | None = None, *,
               what: str = "train.matryoshka_dims") -> None:
    """Refuse dimensions that are not distinct positive integers, or weights that do not fit them."""
    if not dims:
        raise ArgumentError(f"{what}: give at least one dimension")
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ArgumentError(f"{what}: dimensions must be positive integers, got {d!r}")
    if len(set(dims)) != len(dims):
        raise ArgumentError(f"{what}: a dimension appears twice in {list(dims)}")
    if weights is not None:
        if len(weights) != len(dims):
            raise ArgumentError(f"{what.replace('dims', 'weights')}: {len(weights)} weights for {len(dims)} "
                                "dimensions; give one weight per dimension")
        if any(not isinstance(w, int | float) or isinstance(w, bool) or w < 0 for w in weights) or not any(weights):
            raise ArgumentError(f"{what.replace('dims', 'weights')}: weights must be >= 0, one of them > 0, "
                                f"got {list(weights)}")


class MatryoshkaLoss:
    """``base`` (a loss of ``(q, c, target, ...)``) on nested prefixes of the embeddings, weighted mean.

    ``base`` must normalise its inputs (InfoNCE does by default): a prefix of a unit vector is not one.
    """

    def __init__(self, base, dims: Sequence[int], weights: Sequence[float] | None = None):
        check_dims(dims, weights)
        self.base = base
        self.dims = tuple(int(d) for d in dims)
        self.weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(self.dims)

    def prefixes(self, dim: int) -> list[tuple[int, float]]:
        """(dimension, weight) pairs for embeddings of ``dim``: the listed ones plus the full one."""
        too_large = [d for d in self.dims if d > dim]
        if too_large:
            raise ArgumentError(f"train.matryoshka_dims: {too_large} exceed the model's embedding dimension {dim}")
        pairs = list(zip(self.dims, self.weights))
        if dim not in self.dims:
            pairs.append((dim, 1.0))
        return sorted(pairs, reverse=True)

    def __call__(self, q: Tensor, c: Tensor, target: Tensor, *args, **kwargs) -> Tensor:
        pairs = self.prefixes(q.shape[-1])
        total = sum(w for _, w in pairs)
        loss = sum(w * self.base(q[:, :d], c[:, :d], target, *args, **kwargs) for d, w in pairs if w)
        return loss / total

"""Arguments that do not fit together are library errors naming the argument (and still ValueErrors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmembed.encoders.base import Item, per_item_instructions
from mmembed.errors import ArgumentError, MMEmbedError, ModelError
from mmembed.losses.contrastive import info_nce
from mmembed.rerank import fuse
from mmembed.rerank.base import aligned_pairs


@pytest.mark.parametrize("call, argument", [
    (lambda: per_item_instructions(["a", "b"], 3), "instruction"),
    (lambda: fuse(np.zeros(2), np.zeros(3), alpha=0.5), "retrieval"),
    (lambda: aligned_pairs([Item("q")], [Item("a"), Item("b")], None), "queries and candidates"),
    (lambda: info_nce(torch.zeros(2, 4), torch.zeros(3, 5), torch.zeros(2)), "q and c"),
    (lambda: info_nce(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2), temperature=0.0), "temperature"),
])
def test_arguments_that_do_not_fit_name_the_argument(call, argument):
    with pytest.raises(ArgumentError, match=f"^{argument}") as caught:
        call()
    assert isinstance(caught.value, MMEmbedError) and isinstance(caught.value, ValueError)


def test_a_folder_kind_without_a_loader_is_a_model_error(tmp_path, monkeypatch):
    from mmembed.encoders import registry

    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    registry.registered_types()  # the built-in loaders are registered first, then one is taken away
    monkeypatch.delitem(registry._FOLDER_LOADERS, "clip")
    with pytest.raises(ModelError, match="clip folder, but no loader"):
        registry.load_encoder(tmp_path)

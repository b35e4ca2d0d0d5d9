"""The public Python API: load a model, embed plain inputs, compare embeddings, save with a card.

```python
import mmembed
model = mmembed.load("cpu-default-stage3")            # a named model or any model folder
q = model.encode_queries(["red heart"], instruction="Retrieve the emoji image that matches this keyword.")
d = model.encode_candidates(["red heart", Image.open("x.png"), {"text": "heart", "image": "x.png"}])
model.similarity(q, d)                                 # (1, 3) cosine scores
```

This module is a thin layer over :func:`mmembed.encoders.registry.load_encoder` and the
:class:`~mmembed.encoders.base.Encoder` protocol: it turns plain inputs into
:class:`~mmembed.encoders.base.Item` s (the internal type), picks instructions, and converts the
output. Plain inputs:

- a ``str`` is always text (never guessed to be a file name);
- a PIL image, or a :class:`os.PathLike` (``pathlib.Path``) naming an image file;
- a mapping with ``"text"`` and/or ``"image"`` (a PIL image or a path; inside the mapping a
  ``str`` is a path) and optionally ``"id"``;
- an :class:`Item`, or an M-BEIR :class:`~mmembed.types.Query` / :class:`~mmembed.types.Candidate`
  (their image paths are relative to ``image_root``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from mmembed.data.images import ImageStore, LazyImage
from mmembed.data.task_instructions import InstructionSource, read_instructions
from mmembed.encoders.base import Encoder, Item, as_items, l2_normalize
from mmembed.encoders.matryoshka import check_dimensions, trained_dims, truncate
from mmembed.errors import ConfigError, DataError, Location, ModelError
from mmembed.instructions import InstructionEntry, InstructionRegistry, mbeir_task_name
from mmembed.types import Candidate, Query

if TYPE_CHECKING:
    import torch

    from mmembed.eval.mbeir_runner import EvalResults

logger = logging.getLogger(__name__)

#: What ``encode_queries`` / ``encode_candidates`` accept, item by item.
Input = str | Image.Image | os.PathLike | Mapping[str, Any] | Item | Query | Candidate
#: Embeddings as returned by the encode methods.
Embeddings = Union[np.ndarray, "torch.Tensor"]  # noqa: UP007 (a string member cannot use |)

#: ``show_progress=None`` shows a bar from this many inputs on.
PROGRESS_FROM = 512
_MAPPING_KEYS = frozenset({"text", "image", "id"})


def load(name_or_path: str | os.PathLike, *, instructions: InstructionSource | None = None,
         **overrides: Any) -> Embedder:
    """A named model (``mmembed.encoders.registry.named_models()``) or a model folder, ready to embed.

    ``overrides`` go to the loader (e.g. ``device="cpu"``). ``instructions`` is where
    ``encode_queries(task=...)`` looks task names up; by default the bundled benchmark's tasks.
    """
    from mmembed.encoders.registry import load_encoder

    encoder = load_encoder(name_or_path, **overrides)
    return Embedder(encoder, name=os.fspath(name_or_path), instructions=instructions)


class Embedder:
    """One embedding model for queries and documents of any modality (wraps an :class:`Encoder`)."""

    def __init__(self, encoder: Encoder, *, name: str | None = None,
                 instructions: InstructionSource | None = None):
        if not isinstance(encoder, Encoder):
            raise ModelError(f"expected an mmembed Encoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.name = name or encoder.encoder_id
        self._instruction_source = instructions
        self._registry: InstructionRegistry | None = None

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dim={self.dim})"

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def dimensions(self) -> tuple[int, ...]:
        """The dimensions ``dimensions=`` accepts: the full one and those trained for (Matryoshka)."""
        return trained_dims(self.encoder)

    @property
    def encoder_id(self) -> str:
        """Identifies the weights (keys embedding caches and index manifests)."""
        return self.encoder.encoder_id

    # --- embedding ---------------------------------------------------------------------------------

    def encode_queries(self, inputs: Input | Sequence[Input], *, instruction: str | Sequence[str | None] | None = None,
                       task: str | None = None, ids: Sequence[str] | None = None, batch_size: int = 32,
                       show_progress: bool | None = None, convert_to_tensor: bool = False,
                       image_root: str | os.PathLike | None = None, dimensions: int | None = None) -> Embeddings:
        """Query embeddings, (n, dim) L2-normalised float32.

        ``instruction`` is one task instruction for all queries or one per query; ``task`` names a
        task whose first instruction is used instead (see :meth:`tasks`). Neither: no instruction.
        ``dimensions``: the first ``dimensions`` coordinates, renormalised; only a dimension the
        model was trained for (Matryoshka, :attr:`dimensions`), others are refused with the list.
        """
        if instruction is not None and task is not None:
            raise ConfigError("give an instruction or a task, not both")
        cut = check_dimensions(self.encoder, dimensions)
        if task is not None:
            instruction = self.task_instruction(task)
        items = to_items(inputs, ids=ids, image_root=image_root)
        vectors = self.encoder.encode_queries(items, instruction, batch_size=batch_size,
                                              show_progress=_show(show_progress, len(items)))
        return _as_output(truncate(vectors, cut), convert_to_tensor)

    def encode_candidates(self, inputs: Input | Sequence[Input], *, ids: Sequence[str] | None = None,
                          batch_size: int = 32, show_progress: bool | None = None, convert_to_tensor: bool = False,
                          image_root: str | os.PathLike | None = None, dimensions: int | None = None) -> Embeddings:
        """Candidate embeddings (the items searched: "documents" elsewhere), (n, dim) L2-normalised float32;
        never with an instruction. ``dimensions``: as in :meth:`encode_queries`."""
        cut = check_dimensions(self.encoder, dimensions)
        items = to_items(inputs, ids=ids, image_root=image_root)
        vectors = self.encoder.encode_candidates(items, batch_size=batch_size,
                                                 show_progress=_show(show_progress, len(items)))
        return _as_output(truncate(vectors, cut), convert_to_tensor)

    @staticmethod
    def similarity(a: Embeddings, b: Embeddings) -> Embeddings:
        """Cosine scores (len(a), len(b)); torch in, torch out, else numpy. 1-D inputs count as one row."""
        if _is_tensor(a) or _is_tensor(b):
            import torch

            ta, tb = (torch.as_tensor(x, dtype=torch.float32) for x in (a, b))
            ta, tb = (torch.nn.functional.normalize(x.reshape(-1, x.shape[-1]), dim=-1) for x in (ta, tb))
            return ta @ tb.T
        rows_a, rows_b = (l2_normalize(np.atleast_2d(np.asarray(x, dtype=np.float32))) for x in (a, b))
        return rows_a @ rows_b.T

    # --- tasks -------------------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        """Task names ``encode_queries(task=...)`` knows, M-BEIR style (``emoji_task0``)."""
        return sorted(mbeir_task_name(e) for e in self._instructions())

    def task_instruction(self, task: str) -> str:
        """The first instruction of a task named ``emoji_task0`` or ``emoji:text->image``."""
        for entry in self._instructions():
            if task in (mbeir_task_name(entry), _arrow_task_name(entry)):
                return entry.prompts[0]
        known = ", ".join(self.tasks()) or "none"
        raise ConfigError(f"unknown task {task!r}; known tasks: {known} (pass instructions= to mmembed.load "
                          "for another benchmark's tasks)")

    def _instructions(self) -> InstructionRegistry:
        if self._registry is None:
            self._registry = read_instructions(self._instruction_source)
        return self._registry

    # --- saving ------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, *,
                        eval_results: EvalResults | str | os.PathLike | None = None) -> Path:
        """Write the encoder (loads with ``mmembed.load(directory)``) and a model card README.md.

        The card states what is known: the parts and their licences, the training data and
        recipe (from the folder's ``train_config.yaml`` or the shipped model's recipe), and the
        metrics of ``eval_results`` (an evaluation result or its ``results.json``) when given.
        """
        from mmembed.model_card import ModelCard

        save = getattr(self.encoder, "save_pretrained", None)
        if save is None:
            raise ModelError(f"{type(self.encoder).__name__} cannot be saved (it has no save_pretrained)")
        card = ModelCard.collect(self.name, self.encoder, eval_results)  # before a save may replace the source
        directory = Path(save(directory))
        card.write(directory)
        logger.info("saved %s to %s", self.name, directory)
        return directory


# --- plain inputs -> items ---------------------------------------------------------------------------


def to_items(inputs: Input | Sequence[Input], *, ids: Sequence[str] | None = None,
             image_root: str | os.PathLike | None = None) -> list[Item]:
    """:class:`Item` s from plain inputs (see the module docstring); ids default to positions."""
    values = _as_sequence(inputs)
    if ids is not None and len(ids) != len(values):
        raise ConfigError(f"got {len(ids)} ids for {len(values)} inputs")
    images = ImageStore(image_root) if image_root is not None else None
    return [to_item(value, str(ids[i]) if ids is not None else str(i), images) for i, value in enumerate(values)]


def to_item(value: Input, default_id: str, images: ImageStore | None = None) -> Item:
    """One input as an :class:`Item`; :class:`DataError` naming the input when it is not one."""
    if isinstance(value, Item):
        return value
    if isinstance(value, (Query, Candidate)):
        return as_items([value], images)[0]
    if isinstance(value, str):
        return Item(default_id, text=value)
    if isinstance(value, (Image.Image, os.PathLike)):
        return Item(default_id, image=_image(value, default_id, images))
    if isinstance(value, Mapping):
        return _mapping_item(value, default_id, images)
    raise DataError(f"cannot embed a {type(value).__name__}: expected a str (text), a PIL image, a pathlib.Path "
                    "(an image file) or a dict with 'text' and/or 'image'", Location(item=default_id))


def _mapping_item(value: Mapping[str, Any], default_id: str, images: ImageStore | None) -> Item:
    unknown = sorted(set(value) - _MAPPING_KEYS)
    if unknown:
        raise DataError(f"unknown keys {unknown}; an input dict has 'text', 'image' and optionally 'id'",
                        Location(item=default_id))
    item_id = str(value.get("id", default_id))
    text = value.get("text")
    if text is not None and not isinstance(text, str):
        raise DataError(f"'text' must be a str, got {type(text).__name__}", Location(item=item_id, field="text"))
    image = value.get("image")
    if image is None and not (text and text.strip()):
        raise DataError("an input needs 'text', 'image' or both; this one has neither", Location(item=item_id))
    return Item(item_id, text=text, image=None if image is None else _image(image, item_id, images))


def _image(value: Any, item_id: str, images: ImageStore | None) -> Image.Image | LazyImage:
    """A PIL image as it is; a path as an image read when encoded (relative to ``images`` if given)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        if not os.fspath(value).strip():
            raise DataError("the image path is empty", Location(item=item_id, field="image"))
        path = Path(value)
        if images is not None and not path.is_absolute():
            # resolve() refuses a path that leaves the image root, as for dataset records.
            return LazyImage(images.resolve(os.fspath(value), item_id), item_id, images.max_pixels)
        return LazyImage(path, item_id)
    raise DataError(f"an image must be a PIL image or a path, got {type(value).__name__}",
                    Location(item=item_id, field="image"))


def _as_sequence(inputs: Input | Sequence[Input]) -> list[Input]:
    # A lone str, image, path or dict is one input, not a sequence of them (a str is iterable).
    if isinstance(inputs, (str, Image.Image, os.PathLike, Mapping, Item, Query, Candidate)):
        return [inputs]
    return list(inputs)


def _show(show_progress: bool | None, n: int) -> bool:
    return n >= PROGRESS_FROM if show_progress is None else show_progress


def _is_tensor(x: Any) -> bool:
    # By the type's module, so that comparing numpy arrays never imports torch.
    return type(x).__module__.startswith("torch")


def _as_output(vectors: np.ndarray, convert_to_tensor: bool) -> Embeddings:
    if not convert_to_tensor:
        return vectors
    import torch

    return torch.from_numpy(vectors)


# --- task instructions -------------------------------------------------------------------------------


def _arrow_task_name(entry: InstructionEntry) -> str:
    # The spelling the search service uses: "emoji:text->image".
    return f"{entry.dataset_name}:{entry.query_modality.value}->{entry.cand_modality.value}"

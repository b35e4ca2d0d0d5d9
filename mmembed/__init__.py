"""mmembed: universal multimodal retrieval with multimodal LLMs (MM-Embed).

```python
import mmembed
model = mmembed.load("cpu-default-stage3")
q = model.encode_queries(["red heart"], task="emoji_task0")
d = model.encode_candidates(["red heart", {"text": "heart", "image": "x.png"}])
model.similarity(q, d)
```

The names below are imported on first use (PEP 562), so ``import mmembed`` stays light: the
command line starts without importing torch, numpy or PIL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmembed.version import __version__

#: Public name -> the module that defines it.
_EXPORTS = {
    "load": "mmembed.api",
    "Embedder": "mmembed.api",
    "Item": "mmembed.encoders.base",
    "Encoder": "mmembed.encoders.base",
    "load_encoder": "mmembed.encoders.registry",
    "Modality": "mmembed.types",
    "Task": "mmembed.types",
    "Query": "mmembed.types",
    "Candidate": "mmembed.types",
    "InstructionRegistry": "mmembed.instructions",
    "MMEmbedError": "mmembed.errors",
}

# Spelled out (not derived from _EXPORTS) so that linters and IDEs see the public names.
__all__ = ["Candidate", "Embedder", "Encoder", "InstructionRegistry", "Item", "MMEmbedError", "Modality", "Query",
           "Task", "__version__", "load", "load_encoder"]

if TYPE_CHECKING:
    from mmembed.api import Embedder, load
    from mmembed.encoders.base import Encoder, Item
    from mmembed.encoders.registry import load_encoder
    from mmembed.errors import MMEmbedError
    from mmembed.instructions import InstructionRegistry
    from mmembed.types import Candidate, Modality, Query, Task


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmembed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

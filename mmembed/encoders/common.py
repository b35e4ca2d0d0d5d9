"""Transitional: the names this grab-bag held, re-exported from the modules that now own them.

New code imports from those modules: :mod:`.inputs` (item checks, truncation), :mod:`.batching`
(``BatchedEncoder``), :mod:`.devices` (device and dtype), :mod:`.checkpoint` (encoder checkpoint
files) and :mod:`mmembed.dependencies` (optional dependencies, package versions, quiet
transformers). Kept only while code written against the old path is being moved; nothing in the
package imports it.
"""

from mmembed.dependencies import package_version, quiet_transformers, require_module
from mmembed.encoders.batching import BatchedEncoder, encode_in_batches
from mmembed.encoders.checkpoint import load_checkpoint, load_state_strict, read_config, save_checkpoint
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.inputs import check_items, clip_to_tokens, warn_truncation

__all__ = ["BatchedEncoder", "check_items", "clip_to_tokens", "encode_in_batches", "load_checkpoint",
           "load_state_strict", "package_version", "quiet_transformers", "read_config", "require_module",
           "resolve_device", "resolve_dtype", "save_checkpoint", "warn_truncation"]

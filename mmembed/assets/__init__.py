"""Trained checkpoints shipped with the package, registered as named models.

``mmembed/assets/cpu-default/<run>/`` holds the final models of the CPU default recipe
(``mmembed recipe run recipes/cpu-default/recipe.yaml``), stored as float16 LoRA factors plus the
projector (2.3-3.3 MB each; see README.md there for the exact reproduction check):

- ``cpu-default-stage1``: stage 1 (in-batch negatives);
- ``cpu-default-stage2``: stage 2 (modality-aware hard negatives mined by stage 1);
- ``cpu-default-stage3``: stage 3 (continued on multimodal + text data): the trained default model;
- ``cpu-default-fusion-stage1``: the score-fusion towers baseline, trained like stage 1.
"""

from __future__ import annotations

from pathlib import Path

from mmembed.encoders.registry import load_encoder, register_named_model

ROOT = Path(__file__).resolve().parent
SHIPPED = {"cpu-default-stage1": "cpu-default/stage1", "cpu-default-stage2": "cpu-default/stage2",
           "cpu-default-stage3": "cpu-default/stage3", "cpu-default-fusion-stage1": "cpu-default/fusion"}


def shipped_path(name: str) -> Path:
    return ROOT / SHIPPED[name]


def _factory(directory: Path):
    return lambda **overrides: load_encoder(directory, **overrides)


for _name, _relative in SHIPPED.items():
    if (ROOT / _relative / "config.json").is_file():
        register_named_model(_name, _factory(ROOT / _relative))

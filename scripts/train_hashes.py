"""Hashes of the weights three 3-step training runs produce: a check that a refactor left training alone.

The runs are the CPU default recipe's stage 1 configuration cut to 3 steps of 16 examples, with the
towers model (``cpu-default``), the score-fusion towers (``cpu-default-fusion``) and a tiny random
LLaVA-NeXT (``mmembed.testing.tiny_models``), on a bundled benchmark build. Run it on two revisions
(e.g. ``git archive REV | tar -x -C DIR`` and run it there) with the same ``--data``: equal hashes
mean byte-identical trained weights. Only the weight files are hashed; config.json and the training
records name the output directory and differ between runs.

    .venv/bin/python -m mmembed.cli.main data build /tmp/bundled
    .venv/bin/python scripts/train_hashes.py --data /tmp/bundled --out /tmp/train-hashes
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

RECIPE = Path("recipes/cpu-default/stage1.yaml")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")


def weights_hash(final: Path) -> str:
    """sha256 (8 hex digits) over the weight files of a final model directory, in name order."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        if (final / name).is_file():
            digest.update(name.encode() + b"\0" + (final / name).read_bytes())
    return digest.hexdigest()[:8]


def train(name: str, encoder: str, data: Path, out: Path) -> str:
    config = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    config.update(output_dir=str(out / name), checkpoint={"every_steps": 3, "keep_last": 1},
                  logging={"every_steps": 1, "progress": False, "plot": False})
    config["model"].update(encoder=encoder, settings={})
    config["data"]["mbeir"][0]["root"] = str(data)
    config["train"].update(max_steps=3, global_batch_size=16)
    config["optim"]["warmup_steps"] = 1
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "MMEMBED_IMAGE_CACHE": "off"}  # features computed, never read from an older run
    subprocess.run([sys.executable, "-m", "mmembed.cli.main", "-q", "train", str(path)], check=True, env=env)
    return weights_hash(out / name / "final")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a bundled benchmark build")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the runs")
    parser.add_argument("--models", default="towers,fusion,llava")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    encoders = {"towers": "cpu-default", "fusion": "cpu-default-fusion"}
    if "llava" in args.models.split(","):
        from mmembed.testing.tiny_models import build_tiny

        encoders["llava"] = str(build_tiny("llava_next", args.out / "tiny-llava-next"))
    for name in args.models.split(","):
        print(f"{name}: {train(name, encoders[name], args.data.resolve(), args.out.resolve())}", flush=True)


if __name__ == "__main__":
    main()

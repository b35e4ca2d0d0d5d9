"""Copy the CPU default recipe's final models into the package (mmembed/assets/cpu-default/).

    mmembed recipe run recipes/cpu-default/recipe.yaml
    python scripts/ship_checkpoints.py            # copies and writes SHA256SUMS

Only the encoder files are shipped (config.json, model.safetensors); SHA256SUMS records the
weights' digests with their paths in the recipe's output directory, so a rerun of the recipe can
be checked against what ships:  (cd runs/cpu-default && sha256sum -c ../../mmembed/assets/cpu-default/SHA256SUMS)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from mmembed.fileio import write_text

RUNS = ("stage1", "stage2", "stage3", "fusion")
FILES = ("config.json", "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/cpu-default", help="the recipe's output directory")
    parser.add_argument("--assets", default="mmembed/assets/cpu-default")
    args = parser.parse_args()
    runs, assets = Path(args.runs), Path(args.assets)
    sums = []
    for run in RUNS:
        final = runs / run / "final"
        (assets / run).mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(final / name, assets / run / name)
        digest = hashlib.sha256((final / "model.safetensors").read_bytes()).hexdigest()
        sums.append(f"{digest}  {run}/final/model.safetensors\n")
    write_text(assets / "SHA256SUMS", "".join(sums))
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    print(f"shipped {len(RUNS)} models, {total / 1e6:.1f} MB in {assets}")


if __name__ == "__main__":
    main()

"""A class-label set from scikit-learn's bundled handwritten digits (``load_digits``).

1,797 real 8x8 scans of handwritten digits (UCI "Optical Recognition of Handwritten Digits", 43
writers) in 10 classes, shipped inside the scikit-learn wheel, drawn here as dark ink on white and
upscaled to :data:`SIZE` px RGB. Each image is, by a seeded hash, either a *gallery* image (a
candidate) or a *probe* (a query), so no query image is ever in a pool:

- ``digits_task0`` t->i: a class name (a few paraphrases per class) -> every gallery image of
  that class in the split;
- ``digits_task3`` i->t: a probe -> its class label, among the ten label texts;
- ``digits_task4`` i->i: a probe -> every gallery image of its class in the split.

Splits are by image (65 / 15 / 20 %, seeded), and every split has pools of its own images only
(split-named local pools, global pools per split): with shared pools, the train images of the
query's class would be false negatives in the test pool. The label texts are in every split.
Set-up: ``pip install scikit-learn`` (the dev extra brings it). Run:
``python -m benchmarks.realdata.digits --out DIR``.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict

import numpy as np

from benchmarks.realdata.common import DatasetSpec, image_concept, png_bytes, split_concept, write_build
from mmembed.data.bundled.specs import SPLITS, CandSpec, QuerySpec, TaskSpec, fraction, split_of, src_json
from mmembed.errors import MissingDependencyError
from mmembed.types import Task

log = logging.getLogger(__name__)

DATASET = "digits"
DATASET_ID = 21
SIZE = 64
#: Share of images that are probes (queries); the others are the gallery (candidates).
PROBE_SHARE = 0.4

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: The ten candidates of the i->t task.
LABELS = tuple(f"the handwritten digit {d} ({name})" for d, name in enumerate(NAMES))
#: t->i queries: paraphrases of each class name; none is a label text, so a text query never
#: meets its exact words among the candidates of the global pool.
PARAPHRASES = ("{d}", "{name}", "the number {name}", "a handwritten {d}", "digit {name} written by hand",
               "a scanned handwritten numeral {d}")

PROMPTS = {
    0: ("Retrieve images of handwritten digits of this number.",
        "Find a scanned handwritten digit that shows this number.",
        "Show me handwriting of the digit named here."),
    3: ("Retrieve the label of the handwritten digit in this image.",
        "Which digit is written in this picture? Retrieve its name.",
        "Identify the number shown in this handwritten digit image."),
    4: ("Retrieve other handwritten images of the same digit.",
        "Find a different writer's version of the digit in this image.",
        "Show me more scans of the digit written in this picture."),
}


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images (values 0-16, ink high) and their labels, from the scikit-learn wheel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("the digits set needs scikit-learn's bundled data; install it with: "
                                     "pip install scikit-learn") from None
    data = load_digits()
    return data.images, data.target


def draw(pixels: np.ndarray, size: int = SIZE) -> bytes:
    """One digit as dark ink on white, upscaled smoothly to ``size`` px, as RGB PNG bytes."""
    from PIL import Image

    grey = np.rint(255.0 - pixels * (255.0 / 16.0)).astype(np.uint8)
    return png_bytes(Image.fromarray(grey, "L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))


def build_tasks(labels: np.ndarray, seed: int) -> tuple[DatasetSpec, dict[str, str], set[str]]:
    """The three tasks; returns the dataset, each image's path by key and the probe keys."""
    paths = {f"{n:04d}": f"mbeir_images/{DATASET}/{n:04d}_{int(label)}.png" for n, label in enumerate(labels)}
    concept = {k: image_concept(DATASET, seed, k) for k in paths}
    label_of = {k: int(labels[int(k)]) for k in paths}
    probe = {k for k in paths if fraction(f"probe:{seed}:{k}") < PROBE_SHARE}
    candidates: dict[str, CandSpec] = {}
    gallery: dict[tuple[str, int], list[str]] = defaultdict(list)  # (split, class) -> image candidate keys
    for k in sorted(paths):
        if k not in probe:
            key = f"image:{k}"
            candidates[key] = CandSpec(key, None, paths[k], {"kind": "digit image", "index": int(k),
                                                               "label": label_of[k]}, frozenset({concept[k]}))
            gallery[(split_of(concept[k]), label_of[k])].append(key)
    for d, text in enumerate(LABELS):  # one concept per split: the labels belong to every split
        candidates[f"label:{d}"] = CandSpec(f"label:{d}", text, None, {"kind": "class label", "label": d},
                                            frozenset(split_concept(f"{DATASET}:label:{d}", s) for s in SPLITS))

    def concepts(keys: list[str]) -> frozenset[str]:
        return frozenset(c for key in keys for c in candidates[key].concepts)

    t2i = [QuerySpec(p.format(d=d, name=NAMES[d]), None, tuple(keys), concepts(keys), {"label": d})
           for (split, d), keys in sorted(gallery.items()) for p in PARAPHRASES]
    i2t, i2i = [], []
    for k in sorted(probe):
        split, d = split_of(concept[k]), label_of[k]
        facts = {"index": int(k), "label": d}
        i2t.append(QuerySpec(None, paths[k], (f"label:{d}",), frozenset({concept[k]}), facts))
        same_class = gallery.get((split, d))
        if same_class:  # a tiny set may have no gallery image of the class in the split
            i2i.append(QuerySpec(None, paths[k], tuple(same_class), frozenset({concept[k]}) | concepts(same_class),
                                 facts))
    images = sorted(key for key in candidates if key.startswith("image:"))
    labels_pool = [f"label:{d}" for d in range(len(LABELS))]
    tasks = [_task(0, "class name -> images of the class", t2i, images),
             _task(3, "image -> its class label", i2t, labels_pool),
             _task(4, "image -> other images of its class", i2i, images)]
    return DatasetSpec(DATASET, DATASET_ID, candidates, tasks), paths, probe


def _task(task_id: int, title: str, queries: list[QuerySpec], pool: list[str]) -> TaskSpec:
    return TaskSpec(DATASET, DATASET_ID, Task.from_id(task_id), title, "", PROMPTS[task_id], queries, pool)


def build(out, *, seed: int = 0) -> dict:
    import sklearn

    pixels, labels = load_digits_images()
    spec, paths, probe = build_tasks(labels, seed)
    images = {paths[f"{n:04d}"]: draw(p) for n, p in enumerate(pixels)}
    facts = {"source": f"scikit-learn {sklearn.__version__} load_digits (UCI optical handwritten digits)",
             "seed": seed, "size": SIZE, "classes": dict(sorted(Counter(int(x) for x in labels).items())),
             "probes": len(probe), "gallery": len(paths) - len(probe)}
    return write_build(out, images, [spec], facts, split_pools=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (replaced as a whole)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(src_json(build(args.out, seed=args.seed)["queries"]))


if __name__ == "__main__":
    main()

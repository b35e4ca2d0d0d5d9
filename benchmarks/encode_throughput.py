"""Encoding throughput of the CPU default model, against its bare parts, in one run.

- text: our ``encode_candidates`` vs sentence-transformers on the same all-MiniLM-L6-v2 and the
  same texts (target: at least 1.0x);
- image: our ``encode_candidates`` with a cold feature cache vs the bare EfficientNet-Lite0
  forward on the same, already preprocessed images, plus warm-cache figures; our tower runs in
  channels_last layout, so the bare forward in that layout is the reference (target: at least
  0.95x of it); the contiguous-layout forward is shown too;
- image+text: cold and warm cache;
- dtypes (``--dtypes float32,bfloat16``): the same encoder built in each dtype, text and cold-cache
  image throughput against float32 in the same run, and the cosine of each embedding to its
  float32 embedding (a dtype is worth choosing only when faster and at least 0.999 everywhere).

"Cold" means cold: the encoders are built with the on-disk feature cache off (memory only, as
``MMEMBED_IMAGE_CACHE=off`` would), the memory level is emptied before every cold run, and the
run is checked to have computed every image (no cache hit) so that no persistent cache can
answer it.

Texts are random sentences over a fixed word list; images are emoji rendered with Pillow from
NotoColorEmoji (random coloured shapes when the font is missing). Run:

    .venv/bin/python benchmarks/encode_throughput.py [--texts 2000] [--images 256]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mmembed.encoders.base import Item
from mmembed.encoders.efficientnet import preprocess
from mmembed.encoders.parts import minilm_dir
from mmembed.encoders.towers import TowersEncoder

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_WORD_LIST = ("a the red blue green small large old young happy sad cat dog bird fish tree house car boat "
         "train plane city river mountain beach forest garden kitchen table chair window door street "
         "market music dance food coffee tea bread cake apple orange banana flower sun moon star cloud "
         "rain snow wind fire water stone glass paper book letter phone camera picture painting photo "
         "runs jumps sits sleeps eats drinks reads writes plays sings walks flies swims looks holds "
         "near under over behind beside with without during after before quickly slowly quietly")
WORDS = _WORD_LIST.split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 60))).capitalize() + "." for _ in range(n)]


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    if EMOJI_FONT.is_file():
        import emoji

        font = ImageFont.truetype(str(EMOJI_FONT), 109)
        chars = [e for e in emoji.EMOJI_DATA if len(e) == 1][:n]
        images = []
        for ch in chars:
            canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((0, 0), ch, font=font, embedded_color=True)
            flat = Image.new("RGB", canvas.size, (255, 255, 255))
            flat.paste(canvas, mask=canvas.getchannel("A"))
            images.append(flat)
        if len(images) == n:
            return images
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (160, 120), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(5):
            x, y = rng.integers(0, 140), rng.integers(0, 100)
            draw.ellipse([x, y, x + 30, y + 30], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append(im)
    return out


def cold_run(encoder: TowersEncoder, items: list[Item], bs: int) -> Callable[[], object]:
    """Encode ``items`` with the feature cache emptied first; refuses to count a run a cache answered."""
    cache = encoder.vision.cached.cache
    if cache.directory is not None:
        raise SystemExit(f"the encoder keeps image features on disk ({cache.directory}): a cold run would not be cold")
    images = sum(item.image is not None for item in items)

    def run() -> object:
        cache.clear()
        hits = cache.hits
        out = encoder.encode_candidates(items, batch_size=bs)
        if cache.hits != hits:
            raise SystemExit(f"a cold run found {cache.hits - hits} of {images} images in the cache")
        return out
    return run


def measure(jobs: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """Best wall and CPU seconds of each job over ``rounds`` interleaved rounds.

    Jobs alternate within each round so that a busy neighbour on a shared machine slows all of
    them alike; process CPU time is reported too, as it is less disturbed by other processes.
    """
    best = {name: (float("inf"), float("inf")) for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            job()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="encoder dtypes compared with float32 ('float32' alone: skip the table)")
    parser.add_argument("--dtype-texts", type=int, default=500, help="texts of the dtype table")
    args = parser.parse_args()
    torch.manual_seed(0)
    from sentence_transformers import SentenceTransformer

    texts, images = make_texts(args.texts), make_images(args.images)
    bs, reps = args.batch_size, args.repeats
    encoder = TowersEncoder(image_cache_dir=False)  # memory only: a cold run computes every image
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    net = encoder.vision.net
    text_items = [Item(str(i), t) for i, t in enumerate(texts)]
    image_items = [Item(f"i{i}", None, im) for i, im in enumerate(images)]
    pair_items = [Item(f"p{i}", texts[i % len(texts)], im) for i, im in enumerate(images)]

    # warm-up: first calls pay for kernel selection and allocation
    encoder.encode_candidates(text_items[:64] + image_items[:8], batch_size=bs)
    st.encode(texts[:64], batch_size=bs)

    def cold(items: list[Item]) -> Callable[[], object]:
        return cold_run(encoder, items, bs)

    def warm(items: list[Item]) -> Callable[[], object]:
        return lambda: encoder.encode_candidates(items, batch_size=bs)

    contiguous_net = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    pixels = [preprocess(images[s:s + bs]) for s in range(0, len(images), bs)]

    def bare(model: torch.nn.Module, with_preprocess: bool, layout: torch.memory_format) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for i, start in enumerate(range(0, len(images), bs)):
                    batch = preprocess(images[start:start + bs]) if with_preprocess else pixels[i]
                    model.features(batch.contiguous(memory_format=layout))
        return run

    text = measure({"ours": warm(text_items),
                    "st": lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True)}, reps)
    image = measure({"bare": bare(contiguous_net, False, torch.contiguous_format),
                     "bare_pre": bare(contiguous_net, True, torch.contiguous_format),
                     "bare_cl": bare(net, False, torch.channels_last),
                     "cold": cold(image_items), "warm": warm(image_items),
                     "pair_cold": cold(pair_items), "pair_warm": warm(pair_items)}, reps)

    n_t, n_i = len(texts), len(images)
    print(f"torch threads: {torch.get_num_threads()}, batch size {bs}, best of {reps} interleaved rounds")
    print(f"{'what':46s} {'items/s':>9s} {'ratio':>7s} {'items/cpu-s':>12s} {'ratio':>7s}")
    rows = [
        ("text: ours", n_t, text["ours"], text["st"]),
        ("text: sentence-transformers (reference)", n_t, text["st"], None),
        ("image: ours, cold cache", n_i, image["cold"], image["bare_cl"]),
        ("image: bare forward, channels_last (reference)", n_i, image["bare_cl"], None),
        ("image: bare forward, contiguous", n_i, image["bare"], image["bare_cl"]),
        ("image: bare preprocess + contiguous forward", n_i, image["bare_pre"], image["bare_cl"]),
        ("image: ours, warm cache", n_i, image["warm"], image["bare_cl"]),
        ("image+text: ours, cold cache", n_i, image["pair_cold"], image["bare_cl"]),
        ("image+text: ours, warm cache", n_i, image["pair_warm"], image["bare_cl"]),
    ]
    for name, n, (wall, cpu), ref in rows:
        ratios = ("", "") if ref is None else (f"{ref[0] / wall:6.2f}x", f"{ref[1] / cpu:6.2f}x")
        print(f"{name:46s} {n / wall:9.1f} {ratios[0]:>7s} {n / cpu:12.1f} {ratios[1]:>7s}")
    print(f"text vs sentence-transformers: {text['st'][0] / text['ours'][0]:.2f}x wall, "
          f"{text['st'][1] / text['ours'][1]:.2f}x cpu (target >= 1.0)")
    print(f"image, cold cache, vs bare channels_last forward: {image['bare_cl'][0] / image['cold'][0]:.2f}x wall, "
          f"{image['bare_cl'][1] / image['cold'][1]:.2f}x cpu (target >= 0.95); vs bare contiguous forward: "
          f"{image['bare'][0] / image['cold'][0]:.2f}x wall, {image['bare'][1] / image['cold'][1]:.2f}x cpu")
    dtypes = [d for d in args.dtypes.split(",") if d and d != "float32"]
    if dtypes:
        dtype_table(texts[:args.dtype_texts], images, dtypes, bs, reps)


MIN_COSINE = 0.999


def dtype_table(texts: list[str], images: list[Image.Image], dtypes: list[str], bs: int, reps: int) -> None:
    """Throughput of the encoder built in each dtype against float32, and the agreement of its
    embeddings with float32's (the smallest cosine over all items)."""
    text_items = [Item(str(i), t) for i, t in enumerate(texts)]
    image_items = [Item(f"i{i}", None, im) for i, im in enumerate(images)]
    encoders = {"float32": TowersEncoder(image_cache_dir=False)}
    for name in dtypes:
        encoders[name] = TowersEncoder(dtype=name, image_cache_dir=False)

    def cold(encoder: TowersEncoder, items: list[Item]) -> Callable[[], object]:
        return cold_run(encoder, items, bs)

    reference = {kind: cold(encoders["float32"], items)() for kind, items in (("text", text_items),
                                                                               ("image", image_items))}
    jobs = {}
    for name, encoder in encoders.items():
        jobs[f"{name} text"] = cold(encoder, text_items)
        jobs[f"{name} image"] = cold(encoder, image_items)
    timings = measure(jobs, reps)
    print(f"\ndtypes: {len(texts)} texts, {len(images)} images (cold cache), best of {reps} interleaved rounds")
    print(f"{'dtype':10s} {'kind':6s} {'items/s':>9s} {'vs fp32':>8s} {'min cosine to fp32':>19s} verdict")
    for name, encoder in encoders.items():
        for kind, items in (("text", text_items), ("image", image_items)):
            wall = timings[f"{name} {kind}"][0]
            speed = timings[f"float32 {kind}"][0] / wall
            cosine = float(np.min(np.sum(cold(encoder, items)() * reference[kind], axis=1)))
            verdict = "reference" if name == "float32" else (
                "use" if speed > 1 and cosine >= MIN_COSINE else "keep float32")
            print(f"{name:10s} {kind:6s} {len(items) / wall:9.1f} {speed:7.2f}x {cosine:19.5f} {verdict}")


if __name__ == "__main__":
    main()

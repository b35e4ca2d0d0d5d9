"""Encoding throughput of the CPU default model, against its bare parts, in one run.

- text: our ``encode_candidates`` vs sentence-transformers on the same all-MiniLM-L6-v2 and the
  same texts (target: at least 1.0x);
- image: our ``encode_candidates`` with a cold feature cache vs the bare EfficientNet-Lite0
  forward on the same images (target: at least 0.85x), plus warm-cache figures;
- image+text: cold and warm cache.

Texts are random sentences over a fixed word list; images are emoji rendered with Pillow from
NotoColorEmoji (random coloured shapes when the font is missing). Run:

    .venv/bin/python benchmarks/encode_throughput.py [--texts 2000] [--images 256]
"""

from __future__ import annotations

import argparse
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
WORDS = ("a the red blue green small large old young happy sad cat dog bird fish tree house car boat "
         "train plane city river mountain beach forest garden kitchen table chair window door street "
         "market music dance food coffee tea bread cake apple orange banana flower sun moon star cloud "
         "rain snow wind fire water stone glass paper book letter phone camera picture painting photo "
         "runs jumps sits sleeps eats drinks reads writes plays sings walks flies swims looks holds "
         "near under over behind beside with without during after before quickly slowly quietly").split()


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


def rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    """Items per second, best of ``repeats`` (the machine is shared; the best run is least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    from sentence_transformers import SentenceTransformer

    texts, images = make_texts(args.texts), make_images(args.images)
    bs, reps = args.batch_size, args.repeats
    encoder = TowersEncoder()
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    net = encoder.vision.net
    text_items = [Item(str(i), t) for i, t in enumerate(texts)]
    image_items = [Item(f"i{i}", None, im) for i, im in enumerate(images)]
    pair_items = [Item(f"p{i}", texts[i % len(texts)], im) for i, im in enumerate(images)]

    # warm-up: first calls pay for kernel selection and allocation
    encoder.encode_candidates(text_items[:64] + image_items[:8], batch_size=bs)
    st.encode(texts[:64], batch_size=bs)

    def cold(items: list[Item]) -> Callable[[], object]:
        def run() -> object:
            encoder.vision.cached.cache.clear()
            return encoder.encode_candidates(items, batch_size=bs)
        return run

    def bare_forward() -> None:
        with torch.no_grad():
            for start in range(0, len(images), bs):
                net.features(pixels[start // bs])

    def bare_with_preprocess() -> None:
        with torch.no_grad():
            for start in range(0, len(images), bs):
                net.features(preprocess(images[start:start + bs]))

    pixels = [preprocess(images[s:s + bs]) for s in range(0, len(images), bs)]
    ours_text = rate(len(texts), lambda: encoder.encode_candidates(text_items, batch_size=bs), reps)
    st_text = rate(len(texts), lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True), reps)
    bare = rate(len(images), bare_forward, reps)
    bare_pre = rate(len(images), bare_with_preprocess, reps)
    ours_img_cold = rate(len(images), cold(image_items), reps)
    ours_img_warm = rate(len(images), lambda: encoder.encode_candidates(image_items, batch_size=bs), reps)
    ours_pair_cold = rate(len(images), cold(pair_items), reps)
    ours_pair_warm = rate(len(images), lambda: encoder.encode_candidates(pair_items, batch_size=bs), reps)

    print(f"torch threads: {torch.get_num_threads()}, batch size {bs}, best of {reps}")
    print(f"{'what':44s} {'items/s':>10s} {'ratio':>8s}")
    rows = [
        ("text: ours", ours_text, ours_text / st_text),
        ("text: sentence-transformers", st_text, None),
        ("image: ours, cold cache", ours_img_cold, ours_img_cold / bare),
        ("image: bare EfficientNet forward", bare, None),
        ("image: bare preprocess + forward", bare_pre, ours_img_cold / bare_pre),
        ("image: ours, warm cache", ours_img_warm, ours_img_warm / bare),
        ("image+text: ours, cold cache", ours_pair_cold, ours_pair_cold / bare),
        ("image+text: ours, warm cache", ours_pair_warm, ours_pair_warm / bare),
    ]
    for name, value, ratio in rows:
        print(f"{name:44s} {value:10.1f} {'' if ratio is None else f'{ratio:7.2f}x':>8s}")
    print(f"text ratio vs sentence-transformers: {ours_text / st_text:.2f}x (target >= 1.0)")
    print(f"image ratio (cold cache) vs bare forward: {ours_img_cold / bare:.2f}x (target >= 0.85); "
          f"vs bare preprocess + forward: {ours_img_cold / bare_pre:.2f}x")


if __name__ == "__main__":
    main()

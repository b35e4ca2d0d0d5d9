"""An image-description set from Debian's ``openclipart-svg``: clip-art with human-written titles.

Each SVG of the Open Clip Art Library 0.18 carries RDF metadata written by its author: a title,
often a description, and keywords. Most of it is noise for retrieval (one title for a whole
collection, file-name titles, French or Spanish titles, an e-mail address as the description), so
a clip-art is kept only when its title is English (by WordNet's word list), names one picture
(at most :data:`MAX_TITLE_FILES` files share it) and is not a duplicate of a kept one; a
description is added to the text when it is English, unique and short.

Every kept image plays one role, drawn by a seeded hash, so no image, caption or title is both a
query and a candidate anywhere (a shared one would be a trivial exact match in the global pool):

- ``openclipart_task0`` t->i: the caption -> the clip-art image;
- ``openclipart_task3`` i->t: the image -> its caption, among the captions of the i->t images;
- ``openclipart_task2`` t->(i,t): its keywords -> the clip-art shown with its title; images with
  the same keywords are all positives (and share a split); keywords shared by more than
  :data:`MAX_KEYWORD_POSITIVES` images are too vague, and those images become i->t queries.

Splits are by image (65 / 15 / 20 %, seeded). Set-up: ``apt-get install openclipart-svg
librsvg2-bin wordnet-base``. Run: ``python -m benchmarks.realdata.openclipart --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.realdata.common import DatasetSpec, english_share, image_concept, png_bytes, seeded_order, write_build
from mmembed.data.bundled.specs import CandSpec, QuerySpec, TaskSpec, fraction, src_json
from mmembed.errors import MissingDependencyError
from mmembed.types import Task

log = logging.getLogger(__name__)

DATASET = "openclipart"
DATASET_ID = 20
SVG_ROOT = Path("/usr/share/openclipart/svg")
PACKAGE = "openclipart-svg"
SIZE = 160
#: A title shared by more files than this names a collection, not a picture.
MAX_TITLE_FILES = 3
MIN_ENGLISH_SHARE = 0.66
MAX_DESCRIPTION_WORDS = 40
#: Most images one keyword query may have as positives.
MAX_KEYWORD_POSITIVES = 5
#: Roles by hash: t->i target below 0.4, i->t query below 0.7, keywords target above.
ROLE_EDGES = (0.4, 0.7)

_NS = {"dc": "http://purl.org/dc/elements/1.1/", "cc": "http://web.resource.org/cc/",
       "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
_CLIPART_BY = re.compile(r"^clip ?art by [^-]+ - ", re.IGNORECASE)
_GENERIC = re.compile(r"\b(collection|theme|icon ?set|clip ?arts?|submission|untitled)\b", re.IGNORECASE)
_CONTACT = re.compile(r"https?:|www\.|@|\.com\b", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

PROMPTS = {
    0: ("Retrieve the clip-art image that matches this description.",
        "Find the clip-art picture described by this text.",
        "Show me the piece of clip art that this caption describes."),
    3: ("Retrieve the description of this clip-art image.",
        "Find the caption that describes this piece of clip art.",
        "What does this clip-art picture show? Retrieve its title or description."),
    2: ("Retrieve the clip-art, with its title, that is tagged with these keywords.",
        "Find the clip-art picture and its title that match this list of keywords.",
        "Given these tags, retrieve the tagged piece of clip art and its title."),
}


@dataclass(frozen=True)
class Clipart:
    """One SVG file and the metadata its author wrote."""

    path: str  # relative to the SVG root
    title: str
    description: str
    keywords: tuple[str, ...]


def _clean(text: str) -> str:
    return " ".join(text.replace("_", " ").split())


def read_metadata(root: Path) -> list[Clipart]:
    """Every distinct SVG under ``root`` (the package links and copies files into several folders:
    the first path in sorted order stands for identical bytes), with its RDF title, description and
    keywords."""
    seen: set[str] = set()
    out = []
    for path in sorted(p for p in root.rglob("*.svg") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            work = ET.fromstring(data).find(".//cc:Work", _NS)
        except ET.ParseError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if work is None:
            continue
        def text(tag: str, work=work) -> str:
            return _clean(work.findtext(tag, default="", namespaces=_NS) or "")
        keywords = tuple(_clean(li.text or "") for li in work.findall("dc:subject//rdf:li", _NS))
        out.append(Clipart(path.relative_to(root).as_posix(), text("dc:title"), text("dc:description"), keywords))
    return out


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.casefold()))


def _english(text: str) -> bool:
    words, share = english_share(text)
    return words > 0 and share >= MIN_ENGLISH_SHARE


def clean_title(raw: str) -> str | None:
    title = _CLIPART_BY.sub("", raw).strip(" .-")
    title = re.sub(r"(?:\s*\d+)+$", "", title).strip(" .-")  # "smiley 111", "book 01"
    if len(re.sub(r"[^A-Za-z]", "", title)) < 3 or _GENERIC.search(title) or not _english(title):
        return None
    return title


def clean_description(raw: str, title: str) -> str | None:
    words = raw.split()
    if not 3 <= len(words) <= MAX_DESCRIPTION_WORDS or _CONTACT.search(raw) or _norm(raw) == _norm(title):
        return None
    return raw if _english(raw) else None


def clean_keywords(raw: tuple[str, ...]) -> tuple[str, ...]:
    keep = {k.casefold() for k in raw if len(k) >= 3 and k.casefold() != "hash" and _english(k)
            and not re.search(r"\d", k)}
    return tuple(sorted(keep))


@dataclass(frozen=True)
class Kept:
    """A clip-art that passed the text checks, with the texts the tasks use."""

    clip: Clipart
    title: str
    caption: str
    keywords: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.clip.path

    @property
    def image_path(self) -> str:
        stem = _SAFE.sub("_", self.clip.path.removesuffix(".svg"))
        return f"mbeir_images/{DATASET}/{stem}.png"


def select(cliparts: list[Clipart], counts: Counter) -> list[Kept]:
    """The clip-arts whose metadata describes one picture in English; one per title and per caption."""
    title_files = Counter(_norm(c.title) for c in cliparts)
    description_files = Counter(_norm(c.description) for c in cliparts if c.description)
    kept, titles, captions = [], set(), set()
    for c in cliparts:
        title = clean_title(c.title) if title_files[_norm(c.title)] <= MAX_TITLE_FILES else None
        if title is None:
            counts["no usable title"] += 1
            continue
        if _norm(title) in titles:
            counts["same title as a kept clip-art"] += 1
            continue
        description = None
        if c.description and description_files[_norm(c.description)] == 1:
            description = clean_description(c.description, title)
        caption = f"{title}: {description}" if description else title
        if _norm(caption) in captions:
            counts["same caption as a kept clip-art"] += 1
            continue
        titles.add(_norm(title))
        captions.add(_norm(caption))
        counts["with a description" if description else "title only"] += 1
        kept.append(Kept(c, title, caption, clean_keywords(c.keywords)))
    return kept


def render(svg: Path, size: int = SIZE) -> bytes | None:
    """The clip-art as a ``size`` x ``size`` RGB PNG on white, or None when it renders blank or fails.

    The SVG is drawn at twice the size and cropped to its drawing first: many pages are far larger
    than what is drawn on them, which would leave a speck in the middle of the picture.
    """
    from PIL import Image, ImageChops

    big = 2 * size
    try:
        done = subprocess.run(["rsvg-convert", "-w", str(big), "-h", str(big), "-a", "-b", "white", str(svg)],
                              capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        log.warning("rendering %s timed out", svg)
        return None
    if done.returncode != 0 or not done.stdout:
        log.warning("rsvg-convert failed on %s: %s", svg, done.stderr.decode(errors="replace").strip()[:200])
        return None
    with Image.open(io.BytesIO(done.stdout)) as im:
        drawing = im.convert("RGB")
    box = ImageChops.difference(drawing, Image.new("RGB", drawing.size, (255, 255, 255))).convert("L").point(
        lambda v: 255 if v > 8 else 0).getbbox()
    if box is None:  # nothing drawn
        return None
    drawing = drawing.crop(box)
    drawing.thumbnail((size - 8, size - 8), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(drawing, ((size - drawing.width) // 2, (size - drawing.height) // 2))
    return png_bytes(canvas)


def assign_roles(chosen: list[Kept], seed: int) -> dict[str, list[Kept]]:
    """Each image's one role, by a seeded hash: t->i target, i->t query or keywords target.

    A keywords target needs two keywords or more, and keywords that at most
    :data:`MAX_KEYWORD_POSITIVES` of the keyword targets share (more would make a vague query:
    "africa, flag, sign" fits dozens of flags); the others become i->t queries.
    """
    roles: dict[str, list[Kept]] = defaultdict(list)
    for item in chosen:
        x = fraction(f"role:{seed}:{item.key}")
        role = "t2i" if x < ROLE_EDGES[0] else "i2t" if x < ROLE_EDGES[1] or len(item.keywords) < 2 else "tags"
        roles[role].append(item)
    shared = Counter(i.keywords for i in roles["tags"])
    vague = [i for i in roles["tags"] if shared[i.keywords] > MAX_KEYWORD_POSITIVES]
    roles["tags"] = [i for i in roles["tags"] if shared[i.keywords] <= MAX_KEYWORD_POSITIVES]
    roles["i2t"] = sorted(roles["i2t"] + vague, key=lambda i: i.key)
    return roles


def render_sample(kept: list[Kept], root: Path, max_images: int, seed: int, counts: Counter,
                  render_svg: Callable[[Path], bytes | None] = render) -> tuple[list[Kept], dict[str, bytes]]:
    """Render kept clip-arts in seeded order until ``max_images`` distinct pictures are drawn."""
    chosen, images, pixels = [], {}, set()
    for item in seeded_order(kept, seed, "sample"):
        if len(chosen) >= max_images:
            break
        png = render_svg(root / item.key)
        if png is None:
            counts["renders blank or fails"] += 1
            continue
        digest = hashlib.sha256(png).hexdigest()
        if digest in pixels:
            counts["same pixels as a kept clip-art"] += 1
            continue
        pixels.add(digest)
        chosen.append(item)
        images[item.image_path] = png
    return sorted(chosen, key=lambda k: k.key), images


def build_tasks(chosen: list[Kept], seed: int) -> DatasetSpec:
    by_role = assign_roles(chosen, seed)
    # Images with the same keywords answer the same keyword query, so they share one split: a
    # query's positives in one split and its look-alikes in another would be false negatives.
    concept = {i.key: image_concept(DATASET, seed, i.key) for i in chosen}
    concept.update({i.key: image_concept(DATASET, seed, "keywords:" + "|".join(i.keywords)) for i in by_role["tags"]})
    candidates: dict[str, CandSpec] = {}

    def cand(kind: str, item: Kept, text: str | None, image: str | None) -> str:
        key = f"{kind}:{item.key}"
        facts = {"kind": kind, "file": item.clip.path, "title": item.clip.title,
                 "description": item.clip.description, "keywords": list(item.clip.keywords)}
        candidates[key] = CandSpec(key, text, image, facts, frozenset({concept[item.key]}))
        return key

    def query(items: list[Kept], text: str | None, image: str | None, positives: tuple[str, ...]) -> QuerySpec:
        return QuerySpec(text, image, positives, frozenset(concept[i.key] for i in items),
                         {"files": [i.clip.path for i in items]})

    t2i = [query([i], i.caption, None, (cand("image", i, None, i.image_path),)) for i in by_role["t2i"]]
    i2t = [query([i], None, i.image_path, (cand("caption", i, i.caption, None),)) for i in by_role["i2t"]]
    groups: dict[tuple[str, ...], list[Kept]] = defaultdict(list)
    for item in by_role["tags"]:
        groups[item.keywords].append(item)
    tags = [query(group, ", ".join(keywords), None, tuple(cand("entry", i, i.title, i.image_path) for i in group))
            for keywords, group in sorted(groups.items())]
    pool = {kind: sorted(k for k in candidates if k.startswith(kind + ":")) for kind in ("image", "caption", "entry")}
    tasks = [
        _task(0, "caption -> clip-art image", t2i, pool["image"]),
        _task(2, "keywords -> clip-art image with its title", tags, pool["entry"]),
        _task(3, "clip-art image -> its caption", i2t, pool["caption"]),
    ]
    return DatasetSpec(DATASET, DATASET_ID, candidates, tasks)


def _task(task_id: int, title: str, queries: list[QuerySpec], pool: list[str]) -> TaskSpec:
    return TaskSpec(DATASET, DATASET_ID, Task.from_id(task_id), title, "", PROMPTS[task_id], queries, pool)


def package_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def build(out: Path, *, svg_root: Path = SVG_ROOT, max_images: int = 2500, seed: int = 0,
          render_svg: Callable[[Path], bytes | None] = render) -> dict:
    """Build the set into ``out`` (replaced as a whole); ``render_svg`` draws one SVG as PNG bytes."""
    if not svg_root.is_dir():
        raise MissingDependencyError(f"no clip-art SVGs at {svg_root}; install them with: "
                                     f"apt-get install {PACKAGE}")
    if render_svg is render and shutil.which("rsvg-convert") is None:
        raise MissingDependencyError("rendering the SVGs needs rsvg-convert; install it with: "
                                     "apt-get install librsvg2-bin")
    counts: Counter = Counter()
    cliparts = read_metadata(svg_root)
    counts["distinct SVG files"] = len(cliparts)
    kept = select(cliparts, counts)
    chosen, images = render_sample(kept, svg_root, max_images, seed, counts, render_svg)
    spec = build_tasks(chosen, seed)
    facts = {"source": f"Debian {PACKAGE} {package_version(PACKAGE)}", "seed": seed, "max_images": max_images,
             "size": SIZE, "selection": dict(sorted(counts.items())),
             "roles": {role: len(items) for role, items in sorted(assign_roles(chosen, seed).items())}}
    log.info("openclipart selection: %s", src_json(facts["selection"]))
    return write_build(out, images, [spec], facts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced as a whole)")
    parser.add_argument("--svg-root", type=Path, default=SVG_ROOT)
    parser.add_argument("--max-images", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = build(args.out, svg_root=args.svg_root, max_images=args.max_images, seed=args.seed)
    print(src_json(summary["queries"]))


if __name__ == "__main__":
    main()

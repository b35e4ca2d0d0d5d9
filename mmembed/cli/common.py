"""Pieces shared by the subcommands: configuration and reranking arguments, encoder loading."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmembed.rerank import RerankConfig


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="configuration file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one configuration key (repeatable), e.g. --set seed=3")


ENCODER_SET_HELP = ("an encoder loading option (repeatable), e.g. --encoder-set device=cuda --encoder-set "
                    "dtype=bfloat16, or for the released MM-Embed --encoder-set nvembed_config=PATH / "
                    "instruction_mask=prefix")


def parse_encoder_settings(settings: list[str] | None) -> dict:
    """``--encoder-set KEY=VALUE`` items as a dict (values read as YAML)."""
    from mmembed.config import parse_override
    from mmembed.errors import ConfigError

    overrides = {}
    for item in settings or []:
        keys, value = parse_override(item)
        if len(keys) != 1:
            raise ConfigError(f"--encoder-set {item!r}: expected KEY=VALUE with a plain key")
        overrides[keys[0]] = value
    return overrides


def load_encoder_arg(spec: str, settings: list[str] | None = None):
    """An encoder from a built-in name or any model folder, with ``KEY=VALUE`` loading options."""
    from mmembed.encoders.registry import load_encoder
    from mmembed.errors import ConfigError

    try:
        return load_encoder(spec, **parse_encoder_settings(settings))
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(f"--encoder-set: {spec} does not take that option ({e})") from None


def load_encoder_from_args(args: argparse.Namespace):
    """``args.encoder`` with its ``--encoder-set`` options (the plain one-argument call when there are none)."""
    if args.encoder_set:
        return load_encoder_arg(args.encoder, args.encoder_set)
    return load_encoder_arg(args.encoder)


def add_rerank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rerank", metavar="YAML",
                        help="rerank the top candidates with the reranker this RerankConfig YAML describes "
                             "(keys: model, kind, mode, top_k, alpha, ...; see docs/reranking.md)")
    parser.add_argument("--rerank-set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one reranking key (repeatable), e.g. --rerank-set mode=p_true; without "
                             "--rerank it reranks with the default configuration (the bundled SmolLM2) plus these")


def rerank_config_from_args(args: argparse.Namespace, show_progress: bool = False) -> RerankConfig | None:
    """The reranking configuration the arguments ask for, or ``None`` when they ask for none."""
    if not args.rerank and not args.rerank_set:
        return None
    from mmembed.config import load_config
    from mmembed.rerank import RerankConfig

    return load_config(RerankConfig, args.rerank, args.rerank_set, base={"show_progress": show_progress})

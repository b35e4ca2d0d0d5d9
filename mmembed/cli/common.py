"""Pieces shared by the subcommands: configuration arguments and encoder loading."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="configuration file")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override one configuration key (repeatable), e.g. --set seed=3")


def load_encoder_arg(spec: str):
    """An encoder from a directory written by ``save_pretrained`` or a built-in name."""
    from mmembed.encoders.registry import load_encoder

    return load_encoder(spec)

"""The ``mmembed`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``.

User mistakes (any :class:`~mmembed.errors.MMEmbedError`) are reported as one clear line on
stderr with exit code 2, never as a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mmembed.errors import MMEmbedError
from mmembed.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmembed", description="Universal multimodal retrieval with multimodal LLMs.")
    parser.add_argument("--version", action="version", version=f"mmembed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from mmembed.cli import data, encode, evaluate, index, mine, recipe, search, serve, train

    for module in (data, encode, index, search, evaluate, train, mine, recipe, serve):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except MMEmbedError as e:
        if args.debug:
            raise
        print(f"mmembed {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

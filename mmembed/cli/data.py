"""``mmembed data``: validate, build and describe M-BEIR-format datasets."""

from __future__ import annotations

import argparse
import sys

DEFAULT_BUNDLED_DIR = "data/bundled"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="validate, build and describe datasets",
                            description="Validate, build and describe M-BEIR-format datasets.")
    data_sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True

    p = data_sub.add_parser("validate", help="report every problem of an M-BEIR directory",
                            description="Check every query file, pool, qrels file and the instructions of an "
                                        "M-BEIR-layout directory; list every problem; exit 1 when there are any.")
    p.add_argument("directory", help="M-BEIR-layout dataset directory")
    p.add_argument("--no-images", action="store_true", help="do not check that image files exist")
    p.add_argument("--decode-images", action="store_true", help="also decode every image (slow)")
    p.add_argument("--image-root", help="where the images' relative paths start, when they live outside DIRECTORY")
    p.set_defaults(func=run_validate)

    p = data_sub.add_parser("build", help="build the bundled emoji/WordNet benchmark",
                            description="Build the bundled benchmark (emoji images, CLDR names, WordNet senses) "
                                        "in M-BEIR layout from installed registry packages. An existing valid "
                                        "build is reused.")
    p.add_argument("directory", nargs="?", default=DEFAULT_BUNDLED_DIR, help=f"output (default {DEFAULT_BUNDLED_DIR})")
    p.add_argument("--subset", action="store_true", help="a small version for quick tests")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid build exists")
    p.set_defaults(func=run_build)

    p = data_sub.add_parser("stats", help="print the task table of a dataset directory")
    p.add_argument("directory", help="M-BEIR-layout dataset directory")
    p.set_defaults(func=run_stats)


def run_validate(args: argparse.Namespace) -> int:
    from mmembed.data.validate import validate_directory

    report = validate_directory(args.directory, check_images=not args.no_images, decode_images=args.decode_images,
                                show_progress=sys.stderr.isatty(), image_root=args.image_root)
    for line in report.lines():
        print(line)
    total = len(report.problems) + sum(report.suppressed.values())
    summary = (f"{report.checked_files} files, {report.checked_records} records checked: "
               f"{'no problems' if report.ok else f'{total} problem(s)'}")
    print(summary)
    return 0 if report.ok else 1


def run_build(args: argparse.Namespace) -> int:
    from mmembed.data.bundled import build

    result = build(args.directory, subset=args.subset, force=args.force)
    print(f"{'reused' if getattr(result, 'reused', False) else 'built'} {args.directory}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from mmembed.data.bundled import stats_table

    print(stats_table(args.directory))
    return 0

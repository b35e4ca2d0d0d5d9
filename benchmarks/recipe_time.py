"""Wall-clock, CPU time and peak memory of ``mmembed recipe run --data DIR``, end to end.

The recipe runs in a child process from nothing: a fresh output directory and a fresh mmembed
cache (``MMEMBED_CACHE``), so the frozen image tower's features are computed in the run, once per
image, as a new user's first run computes them. Printed: wall-clock and CPU seconds (user + system
of the child and its threads), the child's peak resident memory, each against the issue's target
(15 minutes, 4 GB, for up to 10,000 training queries), the machine's load average before and
after (a busy machine inflates wall-clock, not CPU), and the report's per-step table.

    .venv/bin/python benchmarks/recipe_time.py data/realdata/bundled10k [--out runs/bench-recipe] \
        [--keep-cache] [-- --max-steps 40]

Arguments after ``--`` go to ``mmembed recipe run``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_WALL_S = 15 * 60
TARGET_RSS_MB = 4096


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="an M-BEIR-layout directory with a train split")
    parser.add_argument("--out", default=None, help="output directory (default: a temporary one, removed after)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the user's mmembed cache instead of a fresh one (a warm, unfair run)")
    parser.add_argument("recipe_args", nargs="*", help="after --: arguments of mmembed recipe run")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="mmembed-recipe-bench-"))
    out = Path(args.out) if args.out else scratch / "out"
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    if not args.keep_cache:
        env["MMEMBED_CACHE"] = str(scratch / "cache")
    command = [sys.executable, "-m", "mmembed.cli.main", "recipe", "run", "--data", args.data, "--out", str(out),
               *args.recipe_args]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    code = subprocess.call(command, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss_mb = after.ru_maxrss / 1024  # Linux: KiB
    print(f"\nmmembed recipe run --data {args.data}: exit {code}")
    print("| measure | value | target | ratio to target |")
    print("|---|---:|---:|---:|")
    print(f"| wall-clock | {wall:,.0f} s ({wall / 60:.1f} min) | {TARGET_WALL_S / 60:.0f} min | "
          f"{wall / TARGET_WALL_S:.2f} |")
    print(f"| CPU (user + system) | {cpu:,.0f} s ({cpu / wall:.2f} cores busy on average) | | |")
    print(f"| peak RSS | {rss_mb:,.0f} MB | {TARGET_RSS_MB:,} MB | {rss_mb / TARGET_RSS_MB:.2f} |")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    report = out / "report.md"
    if report.is_file():
        text = report.read_text(encoding="utf-8")
        if "## Time and memory" in text:
            print("\n" + text.split("## Time and memory")[1].split("\n## ")[0].strip())
    if not args.out:
        shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

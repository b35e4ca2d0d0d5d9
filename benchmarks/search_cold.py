"""Cold start of ``mmembed search``: a new process, from launch to printed results.

Usage::

    python benchmarks/search_cold.py --index runs/demo/index
    python benchmarks/search_cold.py --index runs/demo/index --baseline-rev f5ab6a7~3 --runs 5

Each round launches, one after another (the order rotating from round to round, so that
background load drifting over the run favours none):

- ``mmembed search INDEX --text ...`` of this tree;
- the same command of ``--baseline-rev`` (that revision's ``mmembed`` package, exported with
  ``git archive`` to a temporary folder and put first on ``PYTHONPATH``), when given;
- a bare ``python -c "import torch"``: the floor any search that embeds with torch pays.

It prints every time, the median of each command over ``--runs`` rounds, their ratios, and
whether this tree's median meets the target (2 s). On a shared machine the absolute times move
with the load; the ratios to the peers measured in the same run are what compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0
ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run. ``cwd`` is a neutral folder: ``python -m``
    puts the working directory first on ``sys.path``, where it would shadow ``PYTHONPATH``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def export_revision(rev: str, into: Path) -> Path:
    """The ``mmembed`` package of ``rev`` under ``into`` (for PYTHONPATH)."""
    into.mkdir()
    archive = into / "rev.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "archive", rev, "mmembed"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="runs/demo/index", help="retrieval directory (mmembed demo builds one)")
    parser.add_argument("--text", default="red heart", help="query text")
    parser.add_argument("--runs", type=int, default=5, help="rounds (the median is reported)")
    parser.add_argument("--baseline-rev", help="a git revision whose mmembed search is timed alongside")
    args = parser.parse_args()
    if not (Path(args.index) / "retrieval.json").is_file():
        print(f"no retrieval directory at {args.index}: run 'mmembed demo' (or mmembed index build) first",
              file=sys.stderr)
        return 2
    search = [sys.executable, "-m", "mmembed.cli.main", "-q", "search", str(Path(args.index).resolve()),
              "--text", args.text, "-k", "5"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env_here = {**env, "PYTHONPATH": str(ROOT)}
    commands: dict[str, tuple[list[str], dict[str, str]]] = {"this tree": (search, env_here)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline_rev:
            old = export_revision(args.baseline_rev, Path(tmp) / "baseline")
            commands[f"baseline {args.baseline_rev}"] = (search, {**env, "PYTHONPATH": str(old)})
        commands["bare import torch"] = ([sys.executable, "-c", "import torch"], env)
        names = list(commands)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for turn in range(args.runs):
            order = names[turn % len(names):] + names[:turn % len(names)]
            for name in order:
                times[name].append(timed(*commands[name], cwd=Path(tmp)))
            print(f"round {turn + 1}: " + ", ".join(f"{n} {times[n][-1][0]:.2f} s (CPU {times[n][-1][1]:.2f} s)"
                                                    for n in names), flush=True)
    wall = {name: statistics.median(w for w, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in times.items()}
    print(f"\nmedian of {args.runs} cold runs (machine load average at the end: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} cores, possibly shared):")
    for name in names:
        print(f"  {name:<28} wall {wall[name]:6.2f} s   CPU {cpu[name]:6.2f} s")
    for name in names[1:]:
        print(f"  this tree / {name}: wall {wall['this tree'] / wall[name]:.2f}x, "
              f"CPU {cpu['this tree'] / cpu[name]:.2f}x")
    this = wall["this tree"]
    print(f"target: wall < {TARGET_S:g} s -> {'met' if this < TARGET_S else 'missed'} ({this:.2f} s; CPU "
          f"{cpu['this tree']:.2f} s: a wall time far above the CPU time means the process waited for a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

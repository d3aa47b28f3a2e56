"""One command under each memory allocator, in turns: its wall time and resident memory.

slimrank's entry points run on tcmalloc where it is installed (``ranking.allocator``); this
measures what that buys against the system's malloc on a real workload. The command runs with
``SLIMRANK_ALLOCATOR`` set to each setting in turn (``system``, ``auto``; or library paths),
round after round; its resident memory is sampled every ``--every`` seconds and its own output
passes through (a benchmark's table under each allocator). Prints a table beside the machine's
flags and writes JSON.

    python benchmarks/allocator.py --json artifacts/bench/allocator.json -- \\
        .venv/bin/python -m compression teacher --data artifacts/movielens/data \\
        --out /tmp/alloc-teacher --preset movielens --steps 150
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from ranking.allocator import choose, environment
from ranking.atomic import atomic_write_text
from ranking.precision import machine


def run_once(command: list[str], setting: str, every: float, clean: list[Path]) -> dict:
    """Runs ``command`` with ``SLIMRANK_ALLOCATOR=setting``; wall seconds, peak and last
    resident GB (the process and its children), and the exit status."""
    for path in clean:  # outputs a command would reuse (a finished training run)
        shutil.rmtree(path, ignore_errors=True)
    env = environment(setting)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env)  # its output shows, e.g. a speed table
    ps = psutil.Process(proc.pid)
    peak = last = 0.0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree) / 1e9
        except psutil.Error:  # exiting
            rss = 0.0
        if rss > 0:  # an exited process reads 0
            last, peak = rss, max(peak, rss)
        time.sleep(every)
    return {
        "allocator": setting,
        "library": choose(setting) or "system malloc",
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gb": round(peak, 2),
        "last_rss_gb": round(last, 2),
        "returncode": proc.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="system,auto", help="SLIMRANK_ALLOCATOR values, in turn")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    ap.add_argument("--clean", action="append", default=[], type=Path,
                    help="a folder to delete before each run (the command's output)")  # fmt: skip
    ap.add_argument("--json", type=Path)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        choose(s)  # a bad setting fails before any run
    rows = []
    for r in range(args.rounds):
        for s in settings:
            row = run_once(command, s, args.every, args.clean)
            row["round"] = r + 1
            rows.append(row)
            print(f"round {r + 1} {s}: {row['seconds']} s, peak {row['peak_rss_gb']} GB, "
                  f"rc {row['returncode']}", flush=True)  # fmt: skip
    hw = machine()
    print(f"\nmachine: {hw['cpu']}, {hw['cores']} cores, flags {' '.join(hw['flags']) or '-'}")
    print(f"command: {' '.join(command)}")
    print("| round | allocator | library | seconds | peak resident GB | last resident GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['round']} | {row['allocator']} | {row['library']} | {row['seconds']} | "
              f"{row['peak_rss_gb']} | {row['last_rss_gb']} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": hw, "command": command, "rows": rows}
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    if any(row["returncode"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

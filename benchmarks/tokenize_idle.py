"""What a new request's tokenization costs in each state the CPU can be in when it arrives.

A server at concurrency 1 tokenizes each new request after a pause (the response travels, the
client sends the next one), and often right after a forward. This scores the standard workload's
tokenization (a ~250-token query and 50 items, ``RankingTask.encode_query`` and
``encode_items``, as the server calls them) over 64 distinct requests in four states, in turn,
round after round:

- ``back to back``: one request's tokenization right after the previous one (a warm CPU);
- ``after a product``: right after a bf16 matrix product on every thread (torch's OpenMP
  threads still spinning, as after a forward);
- ``after 50 ms idle``: after a sleep (the caches and clocks of an idle core);
- ``after a product and 50 ms idle``.

Prints a table beside the machine's flags and writes JSON.

    python benchmarks/tokenize_idle.py --model artifacts/demo/compressed/redistilled \\
        --json artifacts/bench/tokenize_idle.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from loadtest.workload import RequestPool, Workload
from ranking.atomic import atomic_write_text
from ranking.checkpoint import load_tokenizer_and_task
from ranking.precision import compute_dtype, machine

STATES = ("back to back", "after a product", "after 50 ms idle", "after a product and 50 ms idle")
IDLE_S = 0.05


def measure(model: str, rounds: int) -> dict[str, float]:
    """Median ms of one request's tokenization in each of ``STATES``."""
    tok, task = load_tokenizer_and_task(model)
    pairs = RequestPool(Workload(tokenizer=model, distinct=64)).pairs
    a = torch.randn(1024, 1024, dtype=compute_dtype())

    def tokenize(q: str, items: list[str]) -> float:
        t = time.perf_counter()
        task.encode_query(tok, q)
        task.encode_items(tok, items)
        return (time.perf_counter() - t) * 1000

    ms: dict[str, list[float]] = {s: [] for s in STATES}
    for _ in tqdm(range(rounds), desc="tokenize", unit="round"):
        for state in STATES:
            for q, items in pairs:
                if "product" in state:
                    a @ a
                if "idle" in state:
                    time.sleep(IDLE_S)
                ms[state].append(tokenize(q, items))
    return {s: statistics.median(v) for s, v in ms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/demo/compressed/redistilled")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    res = measure(args.model, args.rounds)
    base = res[STATES[0]]
    print(f"{'state':<34} {'ms per request':>14} {'x back to back':>15}")
    for s, v in res.items():
        print(f"{s:<34} {v:>14.2f} {v / base:>14.2f}x")
    hw = machine()
    print(f"machine: {hw['cpu']}, {hw['cores']} cores, flags {' '.join(hw['flags'])}")
    if args.json:
        out = {"model": args.model, "ms": res, "machine": hw}
        atomic_write_text(Path(args.json), json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

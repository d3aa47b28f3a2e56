"""Both server engines side by side over real HTTP, on the standard workload.

One request = a ~250-token query and 50 items of ~30 tokens (the demo teacher by default).
For each engine: start ``python -m server``, warm up, send ``--requests`` requests one at a
time (latency) and then ``--requests`` with ``--concurrency`` in flight (throughput). Engines run
one after the other in this one process, on the same machine. Prints a table, writes JSON.

    python benchmarks/server_engines.py --model artifacts/demo/teacher --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest.client import closed_loop  # noqa: E402
from loadtest.workload import standard_request  # noqa: E402
from server.process import ServerProcess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="artifacts/demo/teacher")
    ap.add_argument("--engines", default="torch,vllm")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--query-tokens", type=int, default=250)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    body = standard_request(args.model, args.query_tokens, args.items)
    results = []
    for engine in args.engines.split(","):
        with ServerProcess(Path(args.model), engine, Path("/tmp")) as srv:
            for _ in range(3):  # warm-up
                httpx.post(srv.url + "/v1/rank", json=body, timeout=300).raise_for_status()
            for conc in (1, args.concurrency):
                r = asyncio.run(closed_loop(srv.url, body, args.requests, conc))
                results.append({"engine": engine, **r})
    print(f"\nworkload: {args.items} items, query ~{args.query_tokens} tokens; model {args.model}")
    print(f"{'engine':<8}{'conc':>6}{'items/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for r in results:
        print(
            f"{r['engine']:<8}{r['concurrency']:>6}{r['items_per_s']:>10.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
        )
    base = {r["concurrency"]: r for r in results if r["engine"] == "torch"}
    for r in results:
        if r["engine"] != "torch" and r["concurrency"] in base:
            ratio = base[r["concurrency"]]["items_per_s"] / r["items_per_s"]
            print(f"torch / {r['engine']} items/s at concurrency {r['concurrency']}: {ratio:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "workload": {"items": args.items, "query_tokens": args.query_tokens},
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

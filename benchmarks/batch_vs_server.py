"""Batch scoring against the server on the same model and pairs, side by side in one run.

For each model and engine: ``python -m server.batch`` over a data split (pairs/s while scoring,
model load excluded, and its peak memory), then the server (``python -m server``, same engine)
sent the same split's queries as ``/v1/rank`` requests, closed loop at several concurrencies,
each on its own share of the queries (no pair is sent twice: vLLM's prefix cache would flatter
a repeat), after a warm-up on validation queries; its best items/s is the peer figure. Every pair's batch score is compared with the server's
(max |difference|). Prints a table with the machine's CPU flags and matrix-product peak, and
writes JSON.

    .venv/bin/python benchmarks/batch_vs_server.py --json artifacts/bench/batch-vs-server.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest.chaos.shadow import kernel_option  # noqa: E402
from loadtest.stats import write_json  # noqa: E402
from ranking.datafolder import read_split  # noqa: E402
from ranking.dataset import group_by_query  # noqa: E402
from ranking.precision import machine  # noqa: E402
from server.process import ServerProcess  # noqa: E402


def batch_run(model: str, engine: str, data: str, split: str, out: Path) -> tuple[dict, np.ndarray]:
    """The batch scorer's totals and its scores in input order."""
    import pyarrow.dataset as ds

    summary = out.parent / "summary.json"
    r = subprocess.run(
        [sys.executable, "-m", "server.batch", "--model", model, "--engine", engine, "--data",
         data, "--split", split, "--output", str(out), "--restart", "--no-progress",
         "--json", str(summary)],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"batch run failed:\n{r.stderr[-3000:]}")
    totals = json.loads(summary.read_text())
    t = ds.dataset(out, format="parquet").to_table().sort_by("row")
    return totals, t["score"].to_numpy(zero_copy_only=False)


async def server_pass(url: str, groups: list[list[dict]], concurrency: int) -> tuple[float, list]:
    """(items/s, per-group scores in item order) for ``groups`` sent with ``concurrency``
    requests in flight."""
    out: list = [None] * len(groups)
    todo = iter(range(len(groups)))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:
            g = groups[i]
            r = await client.post(
                "/v1/rank", json={"query": g[0]["query"], "items": [x["item"] for x in g]}
            )
            r.raise_for_status()
            s = np.zeros(len(g))
            for x in r.json()["results"]:
                s[x["index"]] = x["score"]
            out[i] = s

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return sum(len(g) for g in groups) / seconds, out


def measure(model: str, engine: str, data: str, split: str, conc: list[int], logs: Path) -> dict:
    rows = read_split(data, split)
    groups = [g for _, g in group_by_query(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        totals, batch_scores = batch_run(model, engine, data, split, Path(tmp) / "out")
    rates = {}
    # the kernel the batch run chose at load: a torch load picks its INT8 kernel by a timing,
    # and two loads can pick differently (fbgemm's 7-bit activations vs dequantized weights)
    kernel = kernel_option(totals["kernel"]) if engine == "torch" else "auto"
    # each concurrency gets its own queries (every k-th): a pair sent twice would find its
    # prompt in vLLM's prefix cache and flatter the server
    subsets = [list(range(k, len(groups), len(conc))) for k in range(len(conc))]
    served: list = [None] * len(groups)
    warmup = [g for _, g in group_by_query(read_split(data, "validation"))][:8]
    with ServerProcess(Path(model), engine, logs, max_expected_latency_ms=600_000,
                       request_timeout_s=600, torch_kernel=kernel) as srv:  # fmt: skip
        asyncio.run(server_pass(srv.url, warmup, 2))
        for c, idx in zip(conc, subsets, strict=True):
            rates[c], got = asyncio.run(server_pass(srv.url, [groups[i] for i in idx], c))
            for i, s in zip(idx, got, strict=True):
                served[i] = s
    server_scores = np.concatenate(served)
    return {
        "model": model,
        "engine": engine,
        "pairs": len(rows),
        "batch_pairs_per_s": totals["pairs_per_s"],
        "batch_peak_rss_mb": totals["peak_rss_mb"],
        "kernel": totals["kernel"],
        "server_items_per_s": rates,
        "server_best_items_per_s": max(rates.values()),
        "ratio": totals["pairs_per_s"] / max(rates.values()),
        "max_abs_diff": float(np.abs(batch_scores - server_scores).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="artifacts/demo/teacher,artifacts/demo/compressed/int8")
    ap.add_argument("--engines", default="torch,vllm")
    ap.add_argument("--data", default="artifacts/demo/data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--concurrency", default="1,4,16", help="server closed-loop concurrencies")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    from ranking.flops import matmul_peak_gflops
    from ranking.precision import compute_dtype

    peak = matmul_peak_gflops((512, 768, 3072), compute_dtype("cpu"), "cpu")
    conc = [int(x) for x in args.concurrency.split(",")]
    logs = Path(tempfile.mkdtemp(prefix="batch-vs-server-"))
    rows = []
    for model in args.models.split(","):
        for engine in args.engines.split(","):
            print(f"[bench] {model} on {engine}", flush=True)
            try:
                rows.append(measure(model, engine, args.data, args.split, conc, logs))
            except Exception as exc:  # noqa: BLE001 - an engine that cannot run: say why
                rows.append({"model": model, "engine": engine, "error": str(exc)[-500:]})
    m = machine()
    result = {"machine": m, "matmul_peak_gflops": peak, "concurrency": conc, "rows": rows}
    print(f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '-'}; "
          f"matmul peak {peak['wall']:.0f} GFLOP/s at {peak['shape']} ({peak['dtype']})")  # fmt: skip
    print(f"{'model':<34}{'engine':<7}{'pairs':>7}{'batch p/s':>11}{'server best':>13}"
          f"{'ratio':>7}{'max|diff|':>11}{'peak MB':>9}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<34}{r['engine']:<7}  failed: {r['error'][-200:]}")
            continue
        print(f"{r['model']:<34}{r['engine']:<7}{r['pairs']:>7}{r['batch_pairs_per_s']:>11.0f}"
              f"{r['server_best_items_per_s']:>13.0f}{r['ratio']:>7.2f}{r['max_abs_diff']:>11.2e}"
              f"{r['batch_peak_rss_mb']:>9.0f}")  # fmt: skip
    if args.json:
        print(f"wrote {write_json(result, args.json)}")


if __name__ == "__main__":
    main()

"""Torch scorer (shared prefix, label rows) vs a naive batched transformers forward.

Same model, same dtype, same workload (one request: a ~250-token query and 50 items of ~30
tokens), measured alternately in one run. Prints a table and writes JSON.

    python benchmarks/scorer_vs_naive.py --model artifacts/demo/teacher --json out.json
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

from ranking.checkpoint import DTYPES, load_checkpoint
from ranking.scorer import TorchScorer, label_logits, naive_label_logits, yes_probability
from ranking.synthetic import BenchmarkConfig, standard_workload


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--query-tokens", type=int, default=250)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-batch", type=int, default=25)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    model, tok, task, info = load_checkpoint(args.model, dtype=DTYPES[args.dtype])
    scorer = TorchScorer(model, tok, task)
    query, items = standard_workload(BenchmarkConfig(), tok, task, args.query_tokens, args.items)
    request = scorer.encode(query, items)
    batch = [request]
    label_ids, pad = scorer.label_ids, scorer.pad_id

    def run_shared():
        return yes_probability(label_logits(model, batch, label_ids, pad))

    def run_naive():
        return yes_probability(naive_label_logits(model, batch, label_ids, pad, args.naive_batch))

    runs = {"naive": run_naive, "shared_prefix": run_shared}
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs = {}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():  # alternate so drift hits both alike
                t = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - t)

    n = len(items)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": str(info.path),
        "params": info.params,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "workload": {
            "query_tokens": len(request.query_ids),
            "items": n,
            "mean_item_tokens": (request.computed_tokens - len(request.query_ids)) / n,
            "prompt_tokens_naive": request.prompt_tokens,
            "tokens_computed_shared": request.computed_tokens,
        },
        "results": [
            {"engine": k, "median_s": med[k], "items_per_s": n / med[k], "runs_s": times[k]}
            for k in runs
        ],
        "speedup": med["naive"] / med["shared_prefix"],
        "max_abs_score_diff": float((outputs["naive"] - outputs["shared_prefix"]).abs().max()),
    }
    print(
        f"\nworkload: query {len(request.query_ids)} tokens, {n} items of ~{result['workload']['mean_item_tokens']:.1f} "
        f"tokens; {args.dtype}, {torch.get_num_threads()} threads, {args.repeats} runs each"
    )
    print(f"{'engine':<16}{'median ms':>12}{'items/s':>12}")
    for r in result["results"]:
        print(f"{r['engine']:<16}{r['median_s'] * 1000:>12.1f}{r['items_per_s']:>12.1f}")
    print(
        f"speedup (shared_prefix / naive): {result['speedup']:.2f}x; "
        f"max |score diff| {result['max_abs_score_diff']:.4f}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The torch engine's scorer with and without ``--torch-compile`` (``ranking.compiled``).

Each model is loaded twice, once compiled; both score the standard workload
(``ranking.synthetic.standard_workload``: a ~250-token query and 50 items) alternately, so
drift and other processes hit both alike. Prints a table beside the machine's flags and its
fp32 matrix-product peak, and writes JSON.

    python benchmarks/torch_compile.py --model artifacts/demo/compressed/redistilled \\
        --model artifacts/demo/teacher --json artifacts/bench/torch_compile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ranking.compiled import compile_scoring
from ranking.flops import matmul_peak_gflops
from ranking.precision import machine
from ranking.quant_kernels import load_for_scoring
from ranking.scorer import TorchScorer
from ranking.synthetic import BenchmarkConfig, standard_workload


def _scorer(path: str) -> TorchScorer:
    loaded = load_for_scoring(path, None, "cpu", "auto")
    return TorchScorer(loaded.model, loaded.tokenizer, loaded.task)


def measure(path: str, rounds: int) -> dict:
    eager, compiled = _scorer(path), _scorer(path)
    t0 = time.perf_counter()
    did = compile_scoring(compiled.model)
    query, items = standard_workload(BenchmarkConfig(), eager.tokenizer, eager.task)
    request = [eager.encode(query, items)]
    compiled.score_ids(request)  # compiles
    compile_s = time.perf_counter() - t0
    want, got = eager.score_ids(request)[0], compiled.score_ids(request)[0]
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):  # alternate, so both see the same machine
        for name, scorer in (("eager", eager), ("compiled", compiled)):
            t = time.perf_counter()
            scorer.score_ids(request)
            times[name].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {
        "model": path,
        "compiled": did,
        "compile_seconds": round(compile_s, 1),
        "eager_ms": round(ms["eager"], 2),
        "compiled_ms": round(ms["compiled"], 2),
        "eager_items_per_s": round(len(items) / ms["eager"] * 1e3, 1),
        "compiled_items_per_s": round(len(items) / ms["compiled"] * 1e3, 1),
        "speedup": round(ms["eager"] / ms["compiled"], 3),
        "max_abs_diff": float(np.abs(want - got).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="a checkpoint (repeatable)")
    ap.add_argument("--rounds", type=int, default=30, help="timed requests per variant")
    ap.add_argument("--json", default="artifacts/bench/torch_compile.json")
    args = ap.parse_args()
    peak = matmul_peak_gflops((512, 768, 3072), torch.float32)
    rows = [measure(m, args.rounds) for m in args.model]
    info = machine()
    print(f"machine: {info}; fp32 peak {peak['wall']:.1f} GFLOP/s at 512x768x3072")
    print(
        "| model | compiled | eager items/s | compiled items/s | speedup | max |diff| | compile s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['compiled']} | {r['eager_items_per_s']} | "
              f"{r['compiled_items_per_s']} | {r['speedup']}x | {r['max_abs_diff']:.1e} | "
              f"{r['compile_seconds']} |")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "peak": peak, "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

"""Checkpoints scored side by side in one process: the torch engine's items/s of each, and its
ratio to the first (the teacher) and to a reference (the bf16 student).

``loadtest compare`` measures its rows one after another, minutes apart; on a shared 2-core
machine speed drifts by more than the ratios the serving targets ask about (INT8 at 1.2x the
bf16 student, students at 4x the teacher). Here every model is loaded once (on the kernel the
torch engine picks, ``ranking.quant_kernels.load_for_scoring``) and the models score the
standard workload (a ~250-token query and 50 items, tokenized once) in turn, round after round,
so drift and other processes hit all alike. Prints a table beside the machine's flags and its
matrix-product peak in the compute dtype, and writes JSON.

    python benchmarks/side_by_side.py --model artifacts/demo/teacher \\
        --model artifacts/demo/compressed/redistilled --model artifacts/demo/compressed/int8 \\
        --model artifacts/demo/compressed/int4 --reference redistilled --torch-compile both \\
        --json artifacts/bench/side_by_side.json
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

from ranking.atomic import atomic_write_text
from ranking.compiled import compile_scoring
from ranking.flops import matmul_peak_gflops
from ranking.precision import compute_dtype, machine
from ranking.quant_kernels import load_for_scoring
from ranking.scorer import TorchScorer
from ranking.synthetic import BenchmarkConfig, standard_workload

PEAK_SHAPE = (1750, 384, 4096)  # the demo teacher's up projection on the standard request


def measure(paths: list[str], rounds: int, variants: tuple[bool, ...] = (False,)) -> list[dict]:
    """Median ms per request of each model, eager and/or compiled (``variants``: whether
    ``ranking.compiled`` compiles it), scored in turn for ``rounds`` rounds."""
    models = []
    for path in paths:
        for compiled in variants:
            loaded = load_for_scoring(path)
            kernel = loaded.kernel
            if compiled and compile_scoring(loaded.model):
                kernel += " + torch.compile"
            scorer = TorchScorer(loaded.model, loaded.tokenizer, loaded.task)
            query, items = standard_workload(BenchmarkConfig(), loaded.tokenizer, loaded.task)
            request = [scorer.encode(query, items)]
            models.append((path, compiled, scorer, request, len(items), kernel))
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for _, _, scorer, request, *_ in models:
            scorer.score_ids(request)  # warm-up (and compilation)
        for _ in tqdm(range(rounds), desc="side by side", unit="round"):
            for i, (_, _, scorer, request, *_) in enumerate(models):
                t = time.perf_counter()
                scorer.score_ids(request)
                times[i].append(time.perf_counter() - t)
    rows = []
    for (path, compiled, _, _, n_items, kernel), ts in zip(models, times, strict=True):
        ms = statistics.median(ts) * 1e3
        rows.append(
            {
                "model": path,
                "compiled": compiled,
                "kernel": kernel,
                "ms_per_request": round(ms, 2),
                "items_per_s": round(n_items / ms * 1e3, 1),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="a checkpoint (repeatable)")
    ap.add_argument(
        "--reference",
        default=None,
        help="the model (folder name) every row is also compared with, e.g. the bf16 student",
    )
    ap.add_argument("--rounds", type=int, default=40, help="timed requests per model")
    ap.add_argument(
        "--torch-compile",
        choices=("off", "on", "both"),
        default="off",
        help="score each model compiled (ranking.compiled, the server's --torch-compile), "
        "eager, or both side by side; ratios compare rows of the same kind",
    )
    ap.add_argument("--json", default="artifacts/bench/side_by_side.json")
    args = ap.parse_args()
    dtype = compute_dtype()
    peak = matmul_peak_gflops(PEAK_SHAPE, dtype)
    variants = {"off": (False,), "on": (True,), "both": (False, True)}[args.torch_compile]
    rows = measure(args.model, args.rounds, variants)
    if args.reference and not any(Path(r["model"]).name == args.reference for r in rows):
        ap.error(f"--reference {args.reference}: no --model folder has that name")
    for r in rows:
        same = [x for x in rows if x["compiled"] == r["compiled"]]
        r["vs_first"] = round(r["items_per_s"] / same[0]["items_per_s"], 3)
        ref = next((x for x in same if Path(x["model"]).name == args.reference), None)
        if ref is not None:
            r["vs_reference"] = round(r["items_per_s"] / ref["items_per_s"], 3)
        eager = next((x for x in rows if x["model"] == r["model"] and not x["compiled"]), None)
        if r["compiled"] and eager is not None:
            r["vs_eager"] = round(r["items_per_s"] / eager["items_per_s"], 3)
    info = machine()
    dt = str(dtype).removeprefix("torch.")
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags'])}, "
          f"torch {info['torch_cpu_capability']}, compute dtype {dt}, allocator "
          f"{info['allocator']}; {dt} matrix-product peak "
          f"{peak['wall']:.0f} GFLOP/s at {'x'.join(map(str, PEAK_SHAPE))}; "
          f"{args.rounds} rounds")  # fmt: skip
    ref_col = f" | x {args.reference}" if args.reference else ""
    both = args.torch_compile == "both"
    print(f"| model | kernel | ms/request | items/s | x {Path(rows[0]['model']).name}"
          f"{ref_col}{' | x eager' if both else ''} |")  # fmt: skip
    print("| --- | --- | --- | --- | ---" + " | ---" * (bool(args.reference) + both) + " |")
    for r in rows:
        extra = (
            f" | {r['vs_reference']:.2f}x"
            if "vs_reference" in r
            else (" |" if args.reference else "")
        )
        extra += (f" | {r['vs_eager']:.2f}x" if "vs_eager" in r else " |") if both else ""
        print(f"| {r['model']} | {r['kernel']} | {r['ms_per_request']} | {r['items_per_s']} | {r['vs_first']:.2f}x{extra} |")  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "peak": peak,
        "rounds": args.rounds,
        "torch_compile": args.torch_compile,
        "rows": rows,
    }
    out = atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

"""The GPU check: items/s at p99 under the SLO on a Qwen3-0.6B-shaped model, bf16 and FP8.

Built to run on a machine with an NVIDIA GPU and nothing to download: the checkpoint is made
here from numbers (Qwen3-0.6B's shape: hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim
128, intermediate 3072, vocab 151936, tied embeddings; random weights, which time the same)
with a tokenizer trained here on the benchmark's text. The workload: a query and 10 or 50 items
per request, prompts of ~``--prompt-tokens`` tokens (query + one item).

Rows:
- ``in-process``: ``TorchScorer`` directly; requests grouped ``k`` per call (k = 1, 2, 4, ...):
  the best items/s whose p99 call latency holds the SLO;
- ``server-torch``: our server with the torch engine (on CUDA when present), one short
  open-loop sweep (``loadtest compare``): the best items/s that holds p99 <= SLO;
- ``server-vllm`` and ``vllm-serve`` (vLLM's own server): the same, where vLLM is installed
  (bf16 only).
FP8 is real FP8 products (``ranking.fp8_linear``, ``torch._scaled_mm``), not dequantized.
Each row also shows its useful GFLOP/s against the bf16 matmul peak at the model's shapes.

``--dry-run``: a tiny model of the same family on whatever device there is (a CPU), a few
seconds per row: it checks the script end to end, its figures mean nothing (the vLLM rows
only with ``--vllm on``: vLLM takes minutes to start on a CPU). The published
anchor: SGLang with multi-item scoring, 1,200 items/s per H100 at p99 <= 500 ms (Qwen3-0.6B,
300-token prompts; sgl-project/sglang PR 10979).

    bash benchmarks/gpu.sh                  # on the GPU machine
    bash benchmarks/gpu.sh --dry-run        # anywhere
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

QWEN3_06B = dict(
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)
TINY = dict(
    QWEN3_06B,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=2048,
)
ANCHOR = "SGLang multi-item scoring: 1,200 items/s per H100 at p99 <= 500 ms (PR 10979)"


def build_checkpoint(path: Path, shape: dict, vocab: int) -> Path:
    """A Qwen3 model of ``shape`` with random bf16 weights and a locally trained tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ranking.checkpoint import save_checkpoint
    from ranking.synthetic import BenchmarkConfig, corpus, generate
    from ranking.task import RankingTask
    from ranking.tokenizer import train_tokenizer

    if (path / "config.json").is_file():
        return path
    rows = generate(BenchmarkConfig(train_queries=1500, val_queries=1, test_queries=1))["train"]
    task = RankingTask()
    tok = train_tokenizer(corpus(rows), vocab, must_have=[task.yes, task.no, task.question])
    cfg = Qwen3Config(
        **shape,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    return save_checkpoint(model, tok, task, path)


def _workload(tok, task, prompt_tokens: int, n_items: int, distinct: int = 4):
    from ranking.request import EncodedRequest
    from ranking.synthetic import BenchmarkConfig, standard_workload

    out = []
    for k in range(distinct):
        query, items = standard_workload(
            BenchmarkConfig(), tok, task, max(prompt_tokens - 30, 8), n_items, seed=k
        )
        out.append(EncodedRequest(task.encode_query(tok, query), task.encode_items(tok, items)))
    return out


def in_process(path: Path, fmt: str, device: str, n_items: int, args) -> dict:
    """Best items/s over group sizes k whose p99 call latency holds the SLO."""
    from ranking.checkpoint import load_checkpoint
    from ranking.scorer import TorchScorer

    model, tok, task, _ = load_checkpoint(path, dtype=torch.bfloat16, device=device)
    if fmt == "fp8":
        from ranking.fp8_linear import convert_to_fp8

        convert_to_fp8(model, allow_non_cuda=args.dry_run)
    scorer = TorchScorer(model, tok, task)
    reqs = _workload(tok, task, args.prompt_tokens, n_items)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best, tried, k = None, [], 1
    while k <= args.max_group:
        group = [reqs[i % len(reqs)] for i in range(k)]
        scorer.score_ids(group)  # warm-up (and allocator growth) at this size
        sync()
        lat = []
        for _ in range(args.calls):
            t = time.perf_counter()
            scorer.score_ids(group)
            sync()
            lat.append(time.perf_counter() - t)
        p99 = float(np.percentile(np.array(lat) * 1000, 99))
        ips = k * n_items / statistics.median(lat)
        tried.append({"group": k, "p99_ms": p99, "items_per_s": ips})
        if p99 > args.slo_ms:
            break
        if best is None or ips > best["items_per_s"]:
            best = tried[-1]
        k *= 2
    del model, scorer
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "items_per_s_at_slo": best and best["items_per_s"],
        "p99_ms": best and best["p99_ms"],
        "group": best and best["group"],
        "conc1_items_per_s": tried[0]["items_per_s"],
        "tried": tried,
    }


def served(
    path: Path, fmt: str, engines: list[str], n_items: int, args, logs: Path
) -> tuple[list[dict], dict]:
    """``loadtest compare`` rows (closed loop at concurrency 1, then a sweep) for ``engines``."""
    from loadtest.compare import SweepSpec, compare
    from loadtest.workload import RequestPool, Workload

    pool = RequestPool(
        Workload(tokenizer=str(path), query_tokens=max(args.prompt_tokens - 30, 8), items=n_items)
    )
    spec = SweepSpec(args.slo_ms, tuple(args.sweep_factors), args.duration)
    os.environ["SLIMRANK_TORCH_FP8"] = "true" if fmt == "fp8" else "false"
    try:
        rep = compare([str(path)], engines, pool, args.requests, 1, 3, logs, False, spec)
    finally:
        os.environ.pop("SLIMRANK_TORCH_FP8", None)
    rows = []
    for r in rep["results"]:
        sw = r.get("sweep") or {}
        rows.append(
            {
                "path": r["engine"],
                "items_per_s_at_slo": sw.get("items_per_s_meeting_slo"),
                "max_rate_at_slo": sw.get("max_rate_meeting_slo"),
                "conc1_items_per_s": r.get("items_per_s"),
                "p99_ms_conc1": r.get("p99_ms"),
                "useful_gflops_conc1": r.get("useful_gflops"),
                "max_abs_score_diff": r.get("max_abs_score_diff"),
                "flags": r.get("flags"),
                "error": r.get("error"),
            }
        )
    return rows, rep["useful_work"][str(path)]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true", help="tiny model, any device")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "gpu")
    ap.add_argument("--slo-ms", type=float, default=500.0)
    ap.add_argument("--items", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--formats", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    ap.add_argument("--prompt-tokens", type=int, default=300, help="query + one item")
    ap.add_argument("--calls", type=int, default=20, help="in-process calls per group size")
    ap.add_argument("--max-group", type=int, default=64, help="in-process: requests per call")
    ap.add_argument("--requests", type=int, default=20, help="server: closed-loop requests")
    ap.add_argument("--duration", type=float, default=8.0, help="server: seconds per rate")
    ap.add_argument("--sweep-factors", type=float, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--no-server", action="store_true", help="in-process rows only")
    ap.add_argument(
        "--vllm",
        choices=["auto", "on", "off"],
        default="auto",
        help="vLLM rows: auto = where vLLM is installed, except in a dry run (minutes on a CPU)",
    )
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: no CUDA device here; --dry-run checks the script on a CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    if args.dry_run:
        args.prompt_tokens = min(args.prompt_tokens, 60)
        args.calls, args.max_group, args.requests = 3, 2, 3
        args.duration, args.sweep_factors = 2.0, [1, 2]
    shape = TINY if args.dry_run else QWEN3_06B
    path = args.out / ("tiny-qwen3" if args.dry_run else "qwen3-0.6b-shape")
    t0 = time.time()
    build_checkpoint(path, shape, 1024 if args.dry_run else 8192)
    print(f"checkpoint {path} ({time.time() - t0:.0f} s)", flush=True)
    vllm = importlib.util.find_spec("vllm") is not None
    if args.vllm == "off" or (args.vllm == "auto" and args.dry_run):
        vllm = False
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "shape": shape,
        "slo_ms": args.slo_ms,
        "prompt_tokens": args.prompt_tokens,
        "vllm_installed": vllm,
        "anchor": ANCHOR,
        "rows": [],
    }
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for fmt in args.formats:
        for n in args.items:
            row = {"path": "in-process", "format": fmt, "items": n}
            try:
                row |= in_process(path, fmt, device, n, args)
            except Exception as exc:  # noqa: BLE001 - report the row, keep the others
                row["error"] = f"{type(exc).__name__}: {exc}"
            result["rows"].append(row)
            _print_row(row)
            if args.no_server:
                continue
            if fmt == "fp8" and not cuda:
                skipped = {"path": "server-torch", "format": fmt, "items": n}
                skipped["error"] = "skipped: FP8 matmuls need CUDA"
                result["rows"].append(skipped)
                _print_row(skipped)
                continue
            engines = ["server-torch"] + (
                ["server-vllm", "vllm-serve"] if vllm and fmt == "bf16" else []
            )
            rows, work = served(path, fmt, engines, n, args, logs)
            result["useful_work"] = work
            for r in rows:
                r |= {"format": fmt, "items": n}
                result["rows"].append(r)
                _print_row(r)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / ("gpu-dry-run.json" if args.dry_run else "gpu.json")
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n{ANCHOR}\nwrote {out}")
    return 0


def _print_row(r: dict) -> None:
    if r.get("error"):
        print(
            f"{r['path']:<13}{r['format']:<6}{r['items']:>4} items: {r['error'][:300]}", flush=True
        )
        return
    best = r.get("items_per_s_at_slo")
    print(
        f"{r['path']:<13}{r['format']:<6}{r['items']:>4} items: "
        f"{'-' if best is None else f'{best:.0f}'} items/s at p99 <= SLO, "
        f"{r.get('conc1_items_per_s') or 0:.0f} items/s one at a time",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Per-module prefill profile: the share of scoring time spent in each module type.

Pruning pays where the time goes: if the MLP dominates, pruning its channels buys speed; if
attention does, heads or layers. This runs the standard workload (one ~250-token query and 50
items) through the served scoring path (``TorchScorer``) and times modules with forward hooks:

- embeddings, mlp, norms (every RMSNorm/LayerNorm, Qwen3's per-head q/k norms included), head:
  the time inside those modules;
- attention: everything else of the forward: the q/k/v/o projections (also reported alone as
  ``attention_projections``), the attention itself, the rotary embedding and the scorer's
  cache handling.

The scorer multiplies the final hidden states by the two label rows of the head directly, so
the head module is never called and its share is ~0: that is where its time goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ranking.checkpoint import DTYPES

MODULE_TYPES = ("attention", "mlp", "norms", "embeddings", "head")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _hooked_modules(model) -> dict[str, list[torch.nn.Module]]:
    """The modules timed directly, by type (none nested in another of the lists)."""
    groups: dict[str, list[torch.nn.Module]] = {
        "embeddings": [model.get_input_embeddings()],
        "head": [model.get_output_embeddings()],
        "mlp": [],
        "norms": [],
        "attention_projections": [],
    }
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "mlp":
            groups["mlp"].append(module)
        elif type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
            groups["norms"].append(module)
        elif leaf in PROJECTIONS:
            groups["attention_projections"].append(module)
    return groups


def module_seconds(model, run: Callable[[], object], repeats: int = 3) -> dict[str, float]:
    """Seconds per call of ``run`` in total (``total``) and inside each module type."""
    spent = {k: 0.0 for k in (*MODULE_TYPES, "attention_projections")}
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    handles = []

    def timed(kind: str):
        starts: list[float] = []

        def pre(module, args):
            sync()
            starts.append(time.perf_counter())

        def post(module, args, output):
            sync()
            spent[kind] += time.perf_counter() - starts.pop()

        return pre, post

    run()  # warm-up, untimed
    for kind, modules in _hooked_modules(model).items():
        pre, post = timed(kind)
        for m in modules:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    try:
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        sync()
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    direct = sum(spent[k] for k in MODULE_TYPES if k != "attention")
    spent["attention"] = max(total - direct, 0.0)
    return {"total": total / repeats, **{k: v / repeats for k, v in spent.items()}}


def operator_seconds(run: Callable[[], object], repeats: int, top: int) -> list[dict]:
    """The ``top`` torch operators by self CPU time per call of ``run`` (``torch.profiler``):
    where the time goes below the modules, and how many operator launches a request costs."""
    from torch.profiler import ProfilerActivity, profile

    run()  # warm-up, unprofiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return [
        {
            "operator": e.key,
            "ms_per_request": e.self_cpu_time_total / 1e3 / repeats,
            "calls_per_request": e.count / repeats,
            "share": e.self_cpu_time_total / total if total else 0.0,
        }
        for e in rows
    ] + [{"operator": "(all)", "ms_per_request": total / 1e3 / repeats,
          "calls_per_request": sum(e.count for e in events) / repeats, "share": 1.0}]  # fmt: skip


def profile_checkpoint(
    path: str | Path,
    dtype: torch.dtype | None = None,
    query_tokens: int = 250,
    n_items: int = 50,
    repeats: int = 3,
    operators: int = 0,
) -> dict:
    """Shares of scoring time per module type for one checkpoint on the standard workload."""
    from ranking.quant_kernels import load_for_scoring
    from ranking.scorer import TorchScorer
    from ranking.synthetic import BenchmarkConfig, standard_workload

    loaded = load_for_scoring(path, dtype)
    model, tok, task, info = loaded.model, loaded.tokenizer, loaded.task, loaded.info
    scorer = TorchScorer(model, tok, task)
    query, items = standard_workload(BenchmarkConfig(), tok, task, query_tokens, n_items)
    request = scorer.encode(query, items)
    seconds = module_seconds(model, lambda: scorer.score_ids([request]), repeats)
    total = seconds["total"]
    run = lambda: scorer.score_ids([request])  # noqa: E731
    return {
        "operators": operator_seconds(run, repeats, operators) if operators else [],
        "model": str(info.path),
        "format": info.format,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "kernel": loaded.kernel,
        "threads": torch.get_num_threads(),
        "workload": {"query_tokens": len(task.encode_query(tok, query)), "items": len(items)},
        "seconds_per_request": total,
        "shares": {k: seconds[k] / total for k in MODULE_TYPES},
        "attention_projections_share": seconds["attention_projections"] / total,
    }


def profile_stages(rows: list[dict], repeats: int = 2) -> None:
    """Adds ``profile`` (ms per request and the share per module type) to each report row,
    each checkpoint in its saved dtype as ``items_per_second`` runs it, so a reader sees where
    pruning bought time (the compression report's hook)."""
    from tqdm import tqdm

    for r in tqdm(rows, desc="report: profile", unit="stage"):
        res = profile_checkpoint(r["path"], dtype=None, repeats=repeats)
        r["profile"] = {
            "ms_per_request": res["seconds_per_request"] * 1e3,
            "shares": res["shares"],
            "attention_projections_share": res["attention_projections_share"],
        }


def profile_markdown(rows: list[dict]) -> list[str]:
    """The report's table of ``profile_stages``: one line per profiled stage (none: no lines)."""
    done = [r for r in rows if r.get("profile")]
    if not done:
        return []
    lines = [
        "",
        "## Where scoring time goes (share per module type, standard workload, torch engine)",
        "",
        "| stage | ms/request | " + " | ".join(MODULE_TYPES) + " | of which q/k/v/o |",
        "| --- | --- | " + " | ".join("---" for _ in MODULE_TYPES) + " | --- |",
    ]
    for r in done:
        p = r["profile"]
        shares = " | ".join(f"{p['shares'][k]:.1%}" for k in MODULE_TYPES)
        lines.append(
            f"| {r['name']} | {p['ms_per_request']:.1f} | {shares} | "
            f"{p['attention_projections_share']:.1%} |"
        )
    return lines


def format_profile(result: dict) -> str:
    lines = [
        f"[profile] {result['model']} ({result['format']} checkpoint, run in {result['dtype']}, "
        f"{result['threads']} threads): {result['workload']['query_tokens']}-token query + "
        f"{result['workload']['items']} items, {result['seconds_per_request'] * 1e3:.1f} ms/request"
    ]
    for kind, share in result["shares"].items():
        extra = ""
        if kind == "attention":
            extra = f"  (q/k/v/o projections {result['attention_projections_share']:.1%})"
        lines.append(f"  {kind:<11}{share:>7.1%}{extra}")
    if result.get("operators"):
        lines.append(
            f"  {'operator (self CPU time)':<44}{'ms/request':>11}{'calls':>8}{'share':>8}"
        )
        for o in result["operators"]:
            lines.append(
                f"  {o['operator'][:43]:<44}{o['ms_per_request']:>11.2f}"
                f"{o['calls_per_request']:>8.0f}{o['share']:>8.1%}"
            )
    return "\n".join(lines)


def cmd_profile(args: argparse.Namespace) -> int:
    from ranking.checkpoint import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    try:
        result = profile_checkpoint(
            args.model, dtype, args.query_tokens, args.items, args.repeats, args.operators
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_profile(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_profile_parser(sub) -> argparse.ArgumentParser:
    """``profile``: the subcommand of ``python -m compression``."""
    p = sub.add_parser("profile", help="share of scoring time per module type")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--query-tokens", type=int, default=250)
    p.add_argument("--items", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--operators", type=int, default=0, help="also list the top N torch operators")
    p.set_defaults(fn=cmd_profile)
    return p

"""Multi-item scoring in one pass vs today's KV-copy scorer vs the naive forward.

Same model, same workload (``ranking.synthetic.standard_workload``: a ~250-token query and 50
items of ~30 tokens), bf16 and fp32, every path measured alternately in one run together with
a matrix product at the model's shapes (the machine's peak for this model), so drift and other
processes hit all rows alike. Reports items/s (wall clock and per CPU-second: on a shared
machine the CPU time is the steadier ratio) and the useful GFLOP/s: the FLOPs of a request
computed with its query once, divided by its time.

Without ``--model`` a randomly initialised model of the demo teacher's shape is built once
(random weights time the same). ``--flex`` adds a row with ``torch.nn.attention.flex_attention``
(compiled, block mask) on the packed sequence. ``--sweep`` times the KV-copy and the one-pass
paths over request shapes, the data behind ``ranking.multi_item.prefer_multi_item``.

    python benchmarks/multi_item.py --json artifacts/bench/multi_item.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import ranking.multi_item as mi
from ranking.checkpoint import load_checkpoint
from ranking.flops import matmul_runner, matmul_shape, request_flops
from ranking.precision import machine
from ranking.request import EncodedRequest
from ranking.scorer import TorchScorer, answer_hidden, naive_label_logits
from ranking.synthetic import BenchmarkConfig, standard_workload

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_MODEL = Path("artifacts/bench/random-demo-teacher")


@dataclass(frozen=True)
class Request:
    query_ids: list[int]
    item_ids: list[list[int]]


def build_random_teacher(path: Path) -> Path:
    """The demo teacher's shape and tokenizer size, random weights (speed does not depend on
    them); the tokenizer is trained on the benchmark's text so token counts match the demo."""
    from compression.teacher import DemoConfig, make_teacher_model
    from ranking.checkpoint import save_checkpoint
    from ranking.synthetic import corpus, generate
    from ranking.task import RankingTask
    from ranking.tokenizer import train_tokenizer

    cfg = DemoConfig()
    rows = generate(BenchmarkConfig(train_queries=3000, val_queries=1, test_queries=1))["train"]
    task = RankingTask()
    tok = train_tokenizer(
        corpus(rows), cfg.vocab_size, must_have=[task.yes, task.no, task.question]
    )
    return save_checkpoint(make_teacher_model(cfg.model, tok), tok, task, path)


def flex_answer_hidden(model, requests) -> torch.Tensor:
    """The packed sequence through every layer with compiled flex attention and a block mask
    (each item sees its query and itself, causally); answer rows read at the end."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    lay = mi._layout(requests, model.device)
    n = len(lay.ids)
    request_of = torch.empty(n, dtype=torch.long)
    item_of = torch.full((n,), -1, dtype=torch.long)
    for r, ((q0, q1), (i0, i1)) in enumerate(zip(lay.query_spans, lay.item_spans, strict=True)):
        request_of[q0:q1] = r
        request_of[i0:i1] = r
    for i, row in enumerate(lay.pad_index):
        item_of[row[lay.pad_valid[i]]] = i

    def visible(b, h, q_idx, kv_idx):
        same_request = request_of[q_idx] == request_of[kv_idx]
        own = (item_of[kv_idx] < 0) | (item_of[kv_idx] == item_of[q_idx])
        return same_request & own & (kv_idx <= q_idx)

    block_mask = create_block_mask(visible, None, None, n, n, device=str(model.device))
    flex = _compiled_flex(flex_attention)
    base = model.get_decoder()
    x = base.embed_tokens(lay.ids)
    cos, sin = (t[0] for t in base.rotary_emb(x[None], lay.positions[None]))
    for layer in base.layers:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = mi._project_heads(attn, h, attn.q_proj, "q_norm", cos, sin)
        k = mi._project_heads(attn, h, attn.k_proj, "k_norm", cos, sin)
        v = attn.v_proj(h).view(n, -1, attn.head_dim)
        out = flex(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=block_mask,
            scale=attn.scaling,
            enable_gqa=True,
        )
        x = x + attn.o_proj(out[0].transpose(0, 1).reshape(n, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return base.norm(x[lay.answer_index])


_FLEX: list[Callable] = []


def _compiled_flex(flex_attention) -> Callable:
    if not _FLEX:
        _FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _FLEX[0]


def head_logits(model, hidden: torch.Tensor, label_ids: tuple[int, int]) -> torch.Tensor:
    weight = model.get_output_embeddings().weight[list(label_ids)]
    return hidden.to(weight.dtype) @ weight.T


def time_alternately(runs: dict[str, Callable], repeats: int) -> dict[str, dict[str, list]]:
    """Wall and CPU seconds of each run, interleaved: one of each per round."""
    times = {k: {"wall": [], "cpu": []} for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - c)
            times[name]["wall"].append(time.perf_counter() - w)
    return times


def bench_dtype(args, dtype_name: str) -> dict:
    model, tok, task, info = load_checkpoint(args.model, dtype=DTYPES[dtype_name])
    scorer = TorchScorer(model, tok, task)
    query, items = standard_workload(BenchmarkConfig(), tok, task, args.query_tokens, args.items)
    encoded = scorer.encode(query, items)
    q_ids, i_ids = encoded.query_ids, encoded.item_ids
    batch = [encoded]
    requests = [Request(q_ids, i_ids)]
    labels, pad = scorer.label_ids, scorer.pad_id
    cfg = model.config
    tokens = batch[0].computed_tokens
    matmul, matmul_flops = matmul_runner(matmul_shape(cfg, tokens), DTYPES[dtype_name])
    runs: dict[str, Callable] = {
        "kv_copy": lambda: head_logits(model, answer_hidden(model, batch, pad), labels),
        "multi_item": lambda: head_logits(
            model, mi.multi_item_answer_hidden(model, requests), labels
        ),
        "naive": lambda: naive_label_logits(model, batch, labels, pad, args.naive_batch),
        "matmul": matmul,
    }
    notes = {}
    with torch.inference_mode():
        if args.flex:
            fn = lambda: head_logits(model, flex_answer_hidden(model, requests), labels)  # noqa: E731
            try:
                t = time.perf_counter()
                fn()
                notes["flex_compile_s"] = round(time.perf_counter() - t, 1)
                runs["flex"] = fn
            except Exception as exc:  # noqa: BLE001 - report whatever stops flex on this build
                notes["flex_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        outputs = {k: fn() for k, fn in runs.items()}  # warm-up
        times = time_alternately(runs, args.repeats)
    flops = request_flops(cfg, len(q_ids), [len(x) for x in i_ids])
    med = {k: {c: statistics.median(v[c]) for c in ("wall", "cpu")} for k, v in times.items()}
    peak = {c: matmul_flops / med["matmul"][c] / 1e9 for c in ("wall", "cpu")}
    naive = outputs["naive"].float()
    rows = []
    for name in runs:
        if name == "matmul":
            continue
        row = {"path": name, "median_wall_s": med[name]["wall"], "median_cpu_s": med[name]["cpu"]}
        for c in ("wall", "cpu"):
            row[f"items_per_{c}_s"] = len(i_ids) / med[name][c]
            row[f"gflops_{c}"] = flops / med[name][c] / 1e9
            row[f"share_of_peak_{c}"] = row[f"gflops_{c}"] / peak[c]
        row["max_abs_logit_diff_vs_naive"] = float((outputs[name].float() - naive).abs().max())
        row["runs"] = times[name]
        rows.append(row)
    return {
        "dtype": dtype_name,
        "model": str(info.path),
        "params": info.params,
        "request_gflop": flops / 1e9,
        "matmul_shape": list(matmul_shape(cfg, tokens)),
        "matmul_peak_gflops": peak,
        "workload": {"query_tokens": len(q_ids), "items": len(i_ids), "tokens": tokens},
        "results": rows,
        **notes,
    }


def random_request(gen: torch.Generator, vocab: int, query: int, items: list[int]) -> Request:
    def ids(n: int) -> list[int]:
        return torch.randint(10, vocab, (n,), generator=gen).tolist()

    return Request(ids(query), [ids(n) for n in items])


def sweep(args, shapes: list[tuple[int, int, int]]) -> list[dict]:
    """KV-copy vs one pass over (n_items, query_tokens, item_tokens), random ids."""
    out = []
    for dtype_name in args.dtypes:
        model, tok, _, _ = load_checkpoint(args.model, dtype=DTYPES[dtype_name])
        g = torch.Generator().manual_seed(0)
        for n_items, lq, li in shapes:
            req = random_request(g, len(tok), lq, [li] * n_items)
            batch = [EncodedRequest(req.query_ids, req.item_ids)]
            runs = {
                "kv_copy": partial(answer_hidden, model, batch),
                "multi_item": partial(mi.multi_item_answer_hidden, model, [req]),
            }
            with torch.inference_mode():
                for fn in runs.values():
                    fn()
                times = time_alternately(runs, args.sweep_repeats)
            cpu = {k: statistics.median(v["cpu"]) for k, v in times.items()}
            row = {
                "dtype": dtype_name,
                "n_items": n_items,
                "query_tokens": lq,
                "item_tokens": li,
                "kv_copy_cpu_s": cpu["kv_copy"],
                "multi_item_cpu_s": cpu["multi_item"],
                "speedup": cpu["kv_copy"] / cpu["multi_item"],
                "rule_picks_multi_item": mi.prefer_multi_item(model, [req]),
            }
            print(
                f"{dtype_name:<5}{n_items:>6}{lq:>6}{li:>6}{row['kv_copy_cpu_s'] * 1e3:>10.1f}"
                f"{row['multi_item_cpu_s'] * 1e3:>10.1f}{row['speedup']:>9.2f}x"
                f"  rule: {'multi_item' if row['rule_picks_multi_item'] else 'kv_copy'}",
                flush=True,
            )
            out.append(row)
    return out


SWEEP_SHAPES = [
    (1, 16, 8),
    (1, 250, 30),
    (4, 16, 8),
    (4, 250, 30),
    (10, 64, 30),
    (10, 250, 30),
    (10, 1000, 30),
    (50, 32, 30),
    (50, 32, 100),
    (20, 16, 200),
    (10, 250, 300),
    (100, 250, 10),
    (50, 250, 30),
    (50, 250, 100),
    (50, 1000, 30),
    (200, 250, 30),
]


def print_table(result: dict) -> None:
    w = result["workload"]
    peak = result["matmul_peak_gflops"]
    print(
        f"\n{result['dtype']}: query {w['query_tokens']} tokens, {w['items']} items, "
        f"{w['tokens']} tokens, {result['request_gflop']:.1f} GFLOP/request; matmul "
        f"{'x'.join(map(str, result['matmul_shape']))}: {peak['wall']:.0f} GFLOP/s wall, "
        f"{peak['cpu']:.0f} per CPU-second"
    )
    print(
        f"{'path':<12}{'ms wall':>9}{'items/s':>9}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'ms cpu':>9}{'items/cpu-s':>12}{'of peak':>9}{'|dlogit|':>10}"
    )
    for r in result["results"]:
        print(
            f"{r['path']:<12}{r['median_wall_s'] * 1e3:>9.1f}{r['items_per_wall_s']:>9.1f}"
            f"{r['gflops_wall']:>9.1f}{r['share_of_peak_wall']:>9.0%}"
            f"{r['median_cpu_s'] * 1e3:>9.1f}{r['items_per_cpu_s']:>12.1f}"
            f"{r['share_of_peak_cpu']:>9.0%}{r['max_abs_logit_diff_vs_naive']:>10.4f}"
        )
    if "flex_error" in result:
        print(f"flex_attention did not run: {result['flex_error']}")
    elif "flex_compile_s" in result:
        print(f"flex: first call (compile) {result['flex_compile_s']} s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=None, help=f"default: {DEFAULT_MODEL}")
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--query-tokens", type=int, default=250)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--flex", action="store_true", help="add the compiled flex_attention row")
    ap.add_argument("--sweep", action="store_true", help="time both paths over request shapes")
    ap.add_argument("--sweep-repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        args.model = DEFAULT_MODEL
        if not (DEFAULT_MODEL / "config.json").is_file():
            build_random_teacher(DEFAULT_MODEL)
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, **machine()}
    print(f"machine: {json.dumps(machine())}")
    if args.sweep:
        print(
            f"{'dtype':<5}{'items':>6}{'Lq':>6}{'Li':>6}{'kv ms':>10}{'one ms':>10}{'speedup':>10}"
        )
        out["sweep"] = sweep(args, SWEEP_SHAPES)
    else:
        out["runs"] = []
        for dtype_name in args.dtypes:
            result = bench_dtype(args, dtype_name)
            print_table(result)
            out["runs"].append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The useful work of a compare workload on one model, and the machine's peak for it.

A row's useful GFLOP/s is its items/s times the FLOPs of an item with its query computed once
(``ranking.flops.request_flops``, averaged over the workload's requests); the peak is a matrix
product in the machine's compute dtype (``ranking.precision``) at the model's shapes for one
request's tokens, measured here, in this process, with the thread count the rows were given
(``OMP_NUM_THREADS``).
"""

from __future__ import annotations

from pathlib import Path


def useful_work(model: str | Path, pairs: list[tuple[str, list[str]]]) -> dict:
    import torch
    from transformers import AutoConfig

    from ranking.checkpoint import load_tokenizer_and_task
    from ranking.flops import matmul_peak_gflops, matmul_shape, request_flops
    from ranking.precision import compute_dtype

    cfg = AutoConfig.from_pretrained(model)
    tok, task = load_tokenizer_and_task(model)
    flops, items, tokens = 0.0, 0, 0
    for q, its in pairs:
        q_len = len(task.encode_query(tok, q))
        i_lens = [len(x) for x in task.encode_items(tok, its)]
        flops += request_flops(cfg, q_len, i_lens)
        items += len(i_lens)
        tokens += q_len + sum(i_lens)
    shape = matmul_shape(cfg, round(tokens / len(pairs)))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the engines run
    peak = matmul_peak_gflops(shape, compute_dtype(device), device)
    return {
        "gflop_per_request": flops / len(pairs) / 1e9,
        "flops_per_item": flops / items,
        "peak_gflops": peak["wall"],
        "peak_gflops_per_cpu_s": peak["cpu"],
        "peak_shape": peak["shape"],
        "threads": peak["threads"],
    }

"""Useful work of a scoring request and the machine's matrix-product peak, defined once.

"Useful" FLOPs count a request the cheapest correct way: its query computed once, every item
on top of it, and only the two label rows of the head. Dividing them by a measured time gives
the GFLOP/s an engine turned into scores; the peak is a plain matrix product at the model's own
shapes (tokens of one request x hidden x intermediate) in the same dtype and thread count, so
the ratio says how far an engine is from what the hardware does with that model.
Used by ``benchmarks/multi_item.py``, ``loadtest compare`` and ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ranking.model_shape import head_dim


def request_flops(config, query_tokens: int, item_tokens: list[int]) -> float:
    """FLOPs of one request with its query computed once: every linear layer on every token,
    attention over the keys each token sees, and the two label rows of the head."""
    d_model, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    hd = head_dim(config)
    linear = 2 * d_model * (2 * heads * hd + 2 * kv_heads * hd + 3 * inter)
    tokens = query_tokens + sum(item_tokens)
    keys = query_tokens * (query_tokens + 1) // 2  # query token i sees i + 1 keys
    keys += sum(n * query_tokens + n * (n + 1) // 2 for n in item_tokens)
    per_layer = linear * tokens + 4 * heads * hd * keys
    return config.num_hidden_layers * per_layer + 2 * 2 * d_model * len(item_tokens)


def matmul_shape(config, tokens: int) -> tuple[int, int, int]:
    """(tokens, hidden, intermediate): the MLP's up projection, the model's largest product."""
    return tokens, config.hidden_size, config.intermediate_size


def matmul_runner(shape: tuple[int, int, int], dtype: torch.dtype, device: str = "cpu"):
    """A zero-argument function running one product of ``shape``, and its FLOPs."""
    m, k, n = shape
    a = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    return (lambda: F.linear(a, w)), 2.0 * m * k * n


def matmul_peak_gflops(
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    repeats: int = 7,
) -> dict[str, float]:
    """Median GFLOP/s of a plain product of ``shape`` (wall clock and per CPU-second: on a
    shared machine the CPU time is the steadier of the two)."""
    run, flops = matmul_runner(shape, dtype, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        run()
        sync()
        wall, cpu = [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            run()
            sync()
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
    return {
        "wall": flops / statistics.median(wall) / 1e9,
        "cpu": flops / max(statistics.median(cpu), 1e-9) / 1e9,
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }

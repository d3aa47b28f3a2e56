"""The low-precision matrix-product kernels this machine offers, side by side at the demo models'
shapes: the measurement that picks the torch engine's INT8 / INT4 path (issue: serving fast).

Rows, each at one linear layer's shape (tokens x in x out) of the standard request (a 250-token
query and 50 items of ~30 tokens: ~1,750 tokens):
- ``fp32`` / ``bf16``: ``F.linear`` (bf16 is emulated where oneDNN has no bf16 kernel);
- ``int8 torch._int_mm``: int8 x int8 -> int32 (activation quantization not included);
- the torch engine's integer kernels (``ranking.quant_kernels``, the modules it serves with):
  ``int8 fbgemm per-token`` (fbgemm's int8 product, activations scaled per token, 7-bit on
  CPUs without VNNI), ``int8 vLLM oneDNN W8A8`` (the kernel vLLM-CPU runs for compressed-
  tensors W8A8, per-token int8 activations), ``int4 torch int4pack`` (W4A16, groups of 64);
  each includes its activation quantization and takes activations in the machine's compute
  dtype (bf16 where it is native: torch's int4pack kernel is vectorized only for bf16 ones).
Each row: GFLOP/s (2 m k n / time, median of repeats), its ratio to fp32, and its error against
the exact product of the same quantized operands (max and mean |diff| relative to the mean
|output|): a fast kernel that saturates (AVX2's 16-bit int8 multiply-add) shows here.

    python benchmarks/kernels.py --json artifacts/bench/kernels.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ranking.precision import compute_dtype, machine
from ranking.quant_kernels import KERNELS, median_seconds

# (tokens, in, out) of the demo teacher's and the bf16 student's largest products
SHAPES = {
    "teacher up (1750x384x4096)": (1750, 384, 4096),
    "teacher down (1750x4096x384)": (1750, 4096, 384),
    "student up (1750x192x768)": (1750, 192, 768),
    "student down (1750x768x192)": (1750, 768, 192),
}


def _time(run: Callable[[], torch.Tensor], repeats: int) -> float:
    with torch.inference_mode():
        return median_seconds(run, repeats)


def _error(got: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    diff, scale = (got.double() - exact.double()).abs(), exact.double().abs().mean()
    return {"max_rel_err": float(diff.max() / scale), "mean_rel_err": float(diff.mean() / scale)}


def _per_token_int8(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = a.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
    return (a / scale).round().clamp(-127, 127), scale


def kernels(m: int, k: int, n: int) -> dict[str, tuple[Callable, Callable | None]]:
    """name -> (run, check): ``check()`` returns the row's error fields (or raises)."""
    torch.manual_seed(0)
    a, w = torch.randn(m, k), torch.randn(n, k) * k**-0.5
    w_scale = w.abs().amax(dim=1, keepdim=True) / 127
    w_q = (w / w_scale).round().clamp(-127, 127)
    out: dict[str, tuple[Callable, Callable | None]] = {}
    out["fp32"] = (lambda: F.linear(a, w), None)
    a16, w16 = a.bfloat16(), w.bfloat16()
    out["bf16"] = (lambda: F.linear(a16, w16), lambda: _error(F.linear(a16, w16), F.linear(a, w)))

    a_q, a_scale = _per_token_int8(a)
    exact_w8a8 = (a_q * a_scale) @ (w_q * w_scale).t()  # what a W8A8 kernel should return
    ai8, wi8 = a_q.to(torch.int8), w_q.to(torch.int8).t().contiguous()
    out["int8 torch._int_mm"] = (
        lambda: torch._int_mm(ai8, wi8),
        lambda: _error(torch._int_mm(ai8, wi8).double(), a_q.double() @ w_q.double().t()),
    )

    # the torch engine's own kernel modules (ranking.quant_kernels), built from the same ints,
    # fed activations in the dtype the engine computes in here
    act = a.to(compute_dtype())
    engine_rows = {
        "int8 fbgemm per-token": ("fbgemm", w_q.to(torch.int8), w_scale, exact_w8a8),
        "int8 vLLM oneDNN W8A8": ("onednn", w_q.to(torch.int8), w_scale, exact_w8a8),
    }
    group = 64
    w4_scale = w.view(n, k // group, group).abs().amax(dim=2, keepdim=True) / 7
    w4 = (w.view(n, k // group, group) / w4_scale).round().clamp(-8, 7)
    exact_w4 = a @ (w4 * w4_scale).view(n, k).t()
    engine_rows["int4 torch int4pack"] = (
        "int4pack",
        w4.view(n, k).to(torch.int8),
        w4_scale.view(n, -1),
        exact_w4,
    )
    for row, (kernel, q, scale, exact) in engine_rows.items():
        try:
            layer = KERNELS[kernel](q, scale, None)
        except Exception as exc:  # noqa: BLE001 - a row that says why it is missing
            out[row] = (None, lambda exc=exc: {"error": repr(exc)[:160]})
            continue
        out[row] = (
            lambda layer=layer: layer(act),
            lambda layer=layer, exact=exact: _error(layer(act), exact),
        )
    return out


def run(repeats: int) -> dict:
    rows = []
    for label, (m, k, n) in SHAPES.items():
        flops, base = 2.0 * m * k * n, None
        for name, (fn, check) in kernels(m, k, n).items():
            row: dict = {"shape": label, "kernel": name}
            if fn is not None:
                seconds = _time(fn, repeats)
                row["gflops"] = flops / seconds / 1e9
                base = row["gflops"] if name == "fp32" else base
                row["vs_fp32"] = row["gflops"] / base
            if check is not None:
                row.update(check())
            rows.append(row)
    return {"machine": machine(), "threads": torch.get_num_threads(), "rows": rows}


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '-'}, "
          f"torch {m['torch_cpu_capability']}, {result['threads']} threads")  # fmt: skip
    print(f"{'shape':<30}{'kernel':<24}{'GFLOP/s':>9}{'x fp32':>8}{'max err':>9}{'mean err':>10}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['shape']:<30}{r['kernel']:<24}  not available: {r['error']}")
            continue
        print(
            f"{r['shape']:<30}{r['kernel']:<24}{r['gflops']:>9.1f}{r['vs_fp32']:>8.2f}"
            f"{r.get('max_rel_err', float('nan')):>9.4f}{r.get('mean_rel_err', float('nan')):>10.5f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.repeats)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

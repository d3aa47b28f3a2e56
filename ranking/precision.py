"""The floating-point dtype this machine computes fast, decided once for every stage.

bf16 halves memory traffic and, where the hardware has native bf16 matrix units (CUDA GPUs from
Ampere on; CPUs with AVX-512 BF16 or AMX, which oneDNN uses), doubles or better the arithmetic
rate. Where it has none (an AVX2-only CPU), oneDNN has no bf16 kernel and torch falls back to
reference loops: measured on one such machine, a bf16 matrix product ran at 0.8 GFLOP/s
against fp32's 49 on one thread, and a linear layer under bf16 autocast at 9.5 against 75.
So bf16 is the compute dtype only where it is native; elsewhere everything computes in fp32
(checkpoints are still written in bf16: that is a storage format).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def bf16_is_native(device: str = "cpu") -> bool:
    """Whether bf16 matrix products run on native kernels on ``device`` ("cpu", "cuda", ...)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_dtype(device: str = "cpu") -> torch.dtype:
    """bf16 where it is native on ``device``, else fp32."""
    return torch.bfloat16 if bf16_is_native(device) else torch.float32


def describe(device: str = "cpu") -> str:
    """One line for logs and benchmark headers: the compute dtype and why."""
    if device.startswith("cuda"):
        return f"compute dtype {compute_dtype(device)} (CUDA)"
    cap = torch.backends.cpu.get_cpu_capability()
    why = "native bf16 (oneDNN)" if bf16_is_native(device) else "no native bf16 kernels"
    return f"compute dtype {str(compute_dtype(device)).removeprefix('torch.')} ({cap}: {why})"

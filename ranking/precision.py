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
import os
import platform

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


# the CPU flags that decide which kernels exist: vector width, int8 dot products, bf16, AMX
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16", "amx_int8")  # fmt: skip


def machine() -> dict:
    """The facts a speed table must carry (machines of one kind differ by several times): CPU
    model, the kernel-deciding flags it has, torch's CPU capability, the compute dtype, the memory
    allocator (``ranking.allocator``)."""
    from ranking.allocator import loaded

    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "flags": [f for f in KERNEL_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": bf16_is_native("cpu"),
        "compute_dtype": str(compute_dtype("cpu")).removeprefix("torch."),
        "allocator": loaded(),
    }

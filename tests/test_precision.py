"""The compute dtype follows the hardware (ranking/precision.py), and only where a model scores:
a checkpoint loaded to be written again keeps its saved dtype."""

from __future__ import annotations

import torch

from ranking.checkpoint import load_checkpoint
from ranking.precision import bf16_is_native, compute_dtype, machine


def test_bf16_is_the_compute_dtype_exactly_where_onednn_has_bf16_kernels():
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_is_native("cpu") == native
    assert compute_dtype("cpu") == (torch.bfloat16 if native else torch.float32)


def test_machine_facts_name_the_flags_and_the_dtype():
    m = machine()
    assert m["cores"] >= 1 and m["cpu"] and m["torch_cpu_capability"]
    assert m["compute_dtype"] == str(compute_dtype()).removeprefix("torch.")
    assert set(m["flags"]) <= {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                               "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}  # fmt: skip


def test_a_bf16_checkpoint_scores_in_the_compute_dtype_and_keeps_bf16_otherwise(tiny_demo):
    stored, *_ = load_checkpoint(tiny_demo / "teacher")
    scoring, *_ = load_checkpoint(tiny_demo / "teacher", compute=True)
    assert stored.dtype == torch.bfloat16  # what quantization and re-saving read
    assert scoring.dtype == compute_dtype()
    asked, *_ = load_checkpoint(tiny_demo / "teacher", dtype=torch.bfloat16, compute=True)
    assert asked.dtype == torch.bfloat16  # an explicit dtype always wins

"""Shared, expensive fixtures: built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Servers under test start eager: compiling costs seconds per start, and tests/test_compiled.py
# checks the compiled steps (and the engine that compiles them) against the eager ones.
os.environ.setdefault("SLIMRANK_TORCH_COMPILE", "false")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The demo pipeline with the test-sized config: data, tokenizer and a trained teacher."""
    from compression.teacher import DemoConfig, build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out, DemoConfig.tiny())
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tiny_demo):
    from ranking.checkpoint import load_checkpoint

    return load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_quantized(tiny_demo) -> dict[str, Path]:
    """The tiny teacher quantized by llmcompressor: fp8, int8 (W8A8), int4 (W4A16)."""
    from compression.quantize import QuantizeConfig, quantize_checkpoint
    from ranking.datafolder import read_split

    rows = read_split(tiny_demo / "data", "train")
    out = {}
    for scheme in ("fp8", "int8", "int4"):
        dst = tiny_demo / f"teacher-{scheme}"
        # hidden size 64: int4 groups of 32 (the real pipeline uses 128)
        cfg = QuantizeConfig(scheme, num_samples=16, group_size=32)
        quantize_checkpoint(tiny_demo / "teacher", dst, cfg, rows)
        out[scheme] = dst
    return out

"""Tiny random causal LMs of each supported family, for parity tests that need no training."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SMALL = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def random_model(kind: str, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """``kind``: llama; qwen2 (q/k/v biases, tied head); qwen3 (per-head q/k norms, a head_dim
    that is not hidden/heads); mistral. ``overrides`` change the config."""
    torch.manual_seed(0)
    cfg = {**SMALL, **overrides}
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(**cfg))
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**cfg, tie_word_embeddings=True))
    elif kind == "qwen3":
        m = Qwen3ForCausalLM(Qwen3Config(**{"head_dim": 24, **cfg}))
    elif kind == "mistral":
        m = MistralForCausalLM(MistralConfig(**cfg))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return m.to(dtype).eval()

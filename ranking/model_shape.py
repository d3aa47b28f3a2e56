"""Widths of a Hugging Face decoder read from its config, where the config may leave them
implicit."""

from __future__ import annotations

from typing import Any


def head_dim(config: Any) -> int:
    """Per-head width: ``config.head_dim`` where set (pruned models), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

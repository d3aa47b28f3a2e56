"""torch.compile for the scoring forward's per-layer elementwise work.

A small student spends a good part of its time outside matrix products: RMSNorm is six
operators, SwiGLU three, each a separate pass over the activations and a separate launch.
Compiling each layer's norms and MLP in place (inductor, dynamic shapes, so one graph serves
every request size without bucketing) fuses them; attention and the packed layout stay eager.
Opt-in (``--torch-compile``): on an AVX2-only CPU it measured 0.98-1.00x the eager scorer on
the demo's student and teacher, side by side in one process (``benchmarks/torch_compile.py``,
docs/results.md), with scores within 2e-7. Quantized linears (fbgemm, int4pack) are left
eager: ``compile_scoring`` does not touch a model that has them.
"""

from __future__ import annotations

import torch


def compilable(model) -> bool:
    """Whether every linear layer of the decoder is a plain ``nn.Linear`` (float weights)."""
    layers = model.get_decoder().layers
    return all(
        type(m) is torch.nn.Linear
        for layer in layers
        for m in layer.modules()
        if "Linear" in type(m).__name__
    )


def compile_scoring(model) -> bool:
    """Compiles in place each decoder layer's two norms and MLP and the final norm; returns
    False (and changes nothing) for a model with quantized linear layers."""
    if not compilable(model):
        return False
    base = model.get_decoder()
    for layer in base.layers:
        for module in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
            module.compile(dynamic=True)
    base.norm.compile(dynamic=True)
    return True

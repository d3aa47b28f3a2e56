"""torch.compile for the scoring forward's per-layer tensor work.

A small student spends a good part of its time outside matrix products: RMSNorm is six
operators, rotary five, SwiGLU two, the merge of two attention blocks eight, each a separate
pass over the activations. On the one-pass multi-item path (``ranking.multi_item``) the
layer's work around its per-request attention loop is three functions of tensors
(``LayerSteps``); compiling each once (inductor, dynamic shapes, so one graph serves every layer
and request size without bucketing) fuses that work, and the integer kernels of INT8 / INT4
checkpoints enter the graphs as one opaque operator each
(``ranking.quant_kernels.integer_linear``). Measured side by side in one process
(``benchmarks/side_by_side.py --torch-compile``, docs/results.md). Layers that emulate
activation quantization in Python are left eager.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from ranking.multi_item import EAGER_STEPS, LayerSteps
from ranking.quant_kernels import IntegerLinear
from ranking.support import MULTI_ITEM_MODEL_TYPES

# The steps' compiled graphs live on their functions' code objects, shared by every model
# compiled in the process (a server's model set): each model adds its own entries (parameter
# shapes are static) and each step has up to two variants per model. Past dynamo's default of 8
# entries a step would silently run eager.
RECOMPILE_LIMIT = 128


def _plain(linear: torch.nn.Module) -> bool:
    """A float ``nn.Linear`` computing as its class does (not behind a per-instance forward,
    such as compressed-tensors' wrapper that emulates activation quantization)."""
    return type(linear) is torch.nn.Linear and "forward" not in linear.__dict__


def compilable(model) -> bool:
    """Whether every linear layer of the decoder is a plain ``nn.Linear`` (float weights) or
    runs an integer kernel (``ranking.quant_kernels.IntegerLinear``: one opaque operator)."""
    linears = [
        m
        for layer in model.get_decoder().layers
        for m in layer.modules()
        if "Linear" in type(m).__name__
    ]
    return all(isinstance(m, IntegerLinear) or _plain(m) for m in linears)


def compile_scoring(model) -> bool:
    """Compiles the scoring forward's per-layer tensor work; returns False (and changes
    nothing) for a model whose linear layers emulate activation quantization.

    On the one-pass multi-item path (``ranking.multi_item``) each of its ``LayerSteps`` (norm,
    projections and rotary; the items' own-key attention and its merge; the output projection,
    residuals and MLP) is compiled once, into ``model.scoring_steps``; only the per-request
    loop of fused attention calls stays eager. Elsewhere each layer's norms and MLP and the
    final norm are compiled in place."""
    if not compilable(model):
        return False
    if model.config.model_type in MULTI_ITEM_MODEL_TYPES:
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        model.scoring_steps = LayerSteps(
            **{
                f.name: torch.compile(getattr(EAGER_STEPS, f.name), dynamic=True)
                for f in fields(LayerSteps)
            }
        )
        return True
    base = model.get_decoder()
    for layer in base.layers:
        for module in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
            module.compile(dynamic=True)
    base.norm.compile(dynamic=True)
    return True


def uncompile_scoring(model) -> None:
    """Undoes ``compile_scoring``: the model scores eagerly again (for a machine where
    compiling fails, e.g. one without a C++ compiler for inductor's CPU code)."""
    model.__dict__.pop("scoring_steps", None)
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None

"""``--torch-compile``: the layers' norms and MLP compiled in place score as the eager model
does, across request sizes (dynamic shapes), and a quantized model is left as it is."""

from __future__ import annotations

import numpy as np
import torch

from ranking.checkpoint import load_checkpoint
from ranking.compiled import compilable, compile_scoring
from ranking.scorer import TorchScorer


def test_compiled_scoring_matches_eager(tiny_demo):
    eager_model, tok, task, _ = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)
    eager = TorchScorer(eager_model, tok, task)
    model = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)[0]
    assert compile_scoring(model)
    compiled = TorchScorer(model, tok, task)
    for n_items in (1, 7, 23):  # one symbolic graph serves every size
        items = [f"item {i} about topic {i % 5}" for i in range(n_items)]
        req = [eager.encode("member likes things", items)]
        want, got = eager.score_ids(req)[0], compiled.score_ids(req)[0]
        assert np.abs(want - got).max() < 1e-5
    layer = model.get_decoder().layers[0]
    assert hasattr(layer.mlp, "_compiled_call_impl") and layer.mlp._compiled_call_impl


def test_a_quantized_model_is_left_eager(tiny_demo):
    from ranking.quant_kernels import Int8FbgemmLinear

    model = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)[0]
    mlp = model.get_decoder().layers[0].mlp
    lin = mlp.down_proj
    mlp.down_proj = Int8FbgemmLinear.__new__(Int8FbgemmLinear)
    torch.nn.Module.__init__(mlp.down_proj)
    assert not compilable(model) and not compile_scoring(model)
    assert not getattr(mlp, "_compiled_call_impl", None)
    mlp.down_proj = lin
    assert compilable(model)


def test_the_engine_compiles_at_load_and_says_so(tiny_demo):
    import asyncio

    from server.engines.base import ModelSpec, TorchOptions
    from server.engines.torch_engine import TorchEngine
    from server.settings import ServerSettings

    assert (
        ServerSettings(model=str(tiny_demo / "teacher"), torch_compile=True)
        .model_spec()
        .torch.compile
    )
    spec = ModelSpec(path=str(tiny_demo / "teacher"), name="t", torch=TorchOptions(compile=True))
    engine = TorchEngine(spec)
    loaded = asyncio.run(engine.start())
    try:
        assert (
            loaded.kernel.endswith("+ torch.compile") and "--torch-compile" in loaded.kernel_reason
        )
        assert engine.scorer.model.get_decoder().layers[0].mlp._compiled_call_impl
    finally:
        asyncio.run(engine.stop())

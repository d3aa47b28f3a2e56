"""``--torch-compile``: the compiled layer steps score as the eager model does, across request
sizes (dynamic shapes), on float and integer-kernel models; a layer that emulates activation
quantization in Python keeps the model eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking.checkpoint import load_checkpoint
from ranking.compiled import compilable, compile_scoring
from ranking.multi_item import EAGER_STEPS, LayerSteps
from ranking.quant_kernels import load_for_scoring
from ranking.scorer import TorchScorer


def _requests(scorer) -> list:
    """Batches of one and of three requests, items of ragged lengths (one of a single token)."""
    one = [scorer.encode("member likes things", ["item 1 about topic 1"])]
    many = [
        scorer.encode(
            f"member {j} likes topic {j}",
            [f"item {i} about topic {i % 5}" * (1 + i % 3) for i in range(n)],
        )
        for j, n in enumerate((7, 2, 23))
    ]
    return [one, many]


def test_compiled_scoring_matches_eager(tiny_demo):
    """The compiled layer steps score as the eager ones across batch and item sizes, with one
    graph per step and layer kind (no graph breaks, no recompiles past the specializations)."""
    from torch._dynamo.utils import counters

    eager_model, tok, task, _ = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)
    eager = TorchScorer(eager_model, tok, task)
    model = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)[0]
    assert compile_scoring(model)
    assert isinstance(model.scoring_steps, LayerSteps) and model.scoring_steps != EAGER_STEPS
    compiled = TorchScorer(model, tok, task)
    counters.clear()
    for _ in range(2):
        for req in _requests(eager):
            want, got = eager.score_ids(req), compiled.score_ids(req)
            for a, b in zip(want, got, strict=True):
                assert np.abs(a - b).max() < 1e-5
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["frames"]["ok"] == counters["frames"]["total"]


@pytest.mark.slow
def test_many_models_compile_in_one_process(monkeypatch):
    """A model set: models of every family and of several sizes compiled in one process share
    the steps' code objects; each still scores as its eager self, none runs eager because a
    step ran out of cache entries."""
    from tests.random_models import random_model
    from tests.test_multi_item import multi_item, ragged_requests

    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    kinds = ["llama", "qwen2", "qwen3", "mistral"] + ["llama"] * 5
    models = [
        random_model(kind, num_hidden_layers=2 + i % 3, intermediate_size=64 + 16 * i)
        for i, kind in enumerate(kinds)
    ]
    requests = ragged_requests()
    with torch.inference_mode():
        want = [multi_item(m, requests) for m in models]
        for m in models:
            assert compile_scoring(m)
        for _ in range(2):  # the second round runs what the first compiled
            for m, w in zip(models, want, strict=True):
                torch.testing.assert_close(multi_item(m, requests), w, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, kernel",
    [("int8", "fbgemm"), ("int8", "onednn"), ("int4", "int4pack"), ("int4", "dequantized")],
)
def test_a_quantized_model_compiles_around_its_integer_kernels(tiny_quantized, fmt, kernel):
    """INT8 / INT4 checkpoints on an integer kernel or dequantized: compressed-tensors' hooks
    are gone at load, the integer kernels enter the graph as one operator, and the compiled
    model scores as the eager one."""
    from torch._dynamo.utils import counters

    eager = load_for_scoring(tiny_quantized[fmt], dtype=torch.float32, kernel=kernel)
    loaded = load_for_scoring(tiny_quantized[fmt], dtype=torch.float32, kernel=kernel)
    assert compile_scoring(loaded.model)
    a = TorchScorer(eager.model, eager.tokenizer, eager.task)
    b = TorchScorer(loaded.model, loaded.tokenizer, loaded.task)
    counters.clear()
    for req in _requests(a):
        for x, y in zip(a.score_ids(req), b.score_ids(req), strict=True):
            assert np.abs(x - y).max() < 1e-5
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_a_layer_that_emulates_activation_quantization_is_left_eager(tiny_demo):
    model = load_checkpoint(tiny_demo / "teacher", dtype=torch.float32)[0]
    lin = model.get_decoder().layers[0].mlp.down_proj
    lin.forward = lambda x: torch.nn.Linear.forward(lin, x)  # as compressed-tensors' wrapper
    assert not compilable(model) and not compile_scoring(model)
    assert not hasattr(model, "scoring_steps")
    del lin.forward
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
        assert engine.scorer.model.scoring_steps != EAGER_STEPS
    finally:
        asyncio.run(engine.stop())


def test_the_engine_serves_eager_where_compiling_fails(tiny_demo, monkeypatch):
    """A machine where inductor cannot build its code (no C++ compiler, say): the engine
    scores eagerly and its kernel reason says why."""
    import asyncio
    import dataclasses

    import ranking.compiled as compiled
    from server.engines.base import ModelSpec, TorchOptions
    from server.engines.torch_engine import TorchEngine

    def broken(model) -> bool:
        def fail(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        model.scoring_steps = dataclasses.replace(EAGER_STEPS, qkv=fail)
        return True

    monkeypatch.setattr(compiled, "compile_scoring", broken)
    spec = ModelSpec(path=str(tiny_demo / "teacher"), name="t", torch=TorchOptions(compile=True))
    engine = TorchEngine(spec)
    loaded = asyncio.run(engine.start())
    try:
        assert not loaded.kernel.endswith("torch.compile")
        assert "--torch-compile failed (RuntimeError: InvalidCxxCompiler" in loaded.kernel_reason
        assert not hasattr(engine.scorer.model, "scoring_steps")
        req = [engine.scorer.encode("member likes things", ["item 1", "item 2"])]
        assert np.isfinite(asyncio.run(engine.score(req))[0]).all()
    finally:
        asyncio.run(engine.stop())

"""Multi-item scoring in one pass equals the naive full forward of each prompt."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

import ranking.multi_item as mi
from ranking.request import EncodedRequest
from ranking.scorer import naive_label_logits
from tests.random_models import random_model as shared_random_model

LABELS = (5, 6)


@dataclass(frozen=True)
class Req:
    query_ids: list[int]
    item_ids: list[list[int]]


def random_model(kind: str, **overrides):
    return shared_random_model(kind, **{"num_hidden_layers": 3, **overrides})


def ragged_requests() -> list[Req]:
    """Three requests with ragged items (a one-token item, a one-token query) and one without
    items in between."""
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    return [
        Req(ids(23), [ids(5), ids(1), ids(17), ids(9), ids(2)]),
        Req(ids(7), []),
        Req([1], [ids(4), ids(11)]),
        Req(ids(40), [ids(3), ids(30)]),
    ]


def oracle(model, requests: list[Req]) -> torch.Tensor:
    batch = [EncodedRequest(r.query_ids, r.item_ids) for r in requests]
    return naive_label_logits(model, batch, LABELS)


def multi_item(model, requests: list[Req]) -> torch.Tensor:
    hidden = mi.multi_item_answer_hidden(model, requests)
    return model.get_output_embeddings()(hidden)[:, list(LABELS)]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral"])
def test_parity_fp32(kind):
    model, requests = random_model(kind), ragged_requests()
    with torch.inference_mode():
        want, got = oracle(model, requests), multi_item(model, requests)
    assert got.shape == want.shape == (9, 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_parity_without_the_fused_kernel(kind, monkeypatch):
    """The explicit-matmul attention (what runs off CPU) gives the same logits."""
    monkeypatch.setattr(mi, "_CPU_FLASH", None)
    model, requests = random_model(kind), ragged_requests()
    with torch.inference_mode():
        torch.testing.assert_close(
            multi_item(model, requests), oracle(model, requests), atol=1e-4, rtol=0
        )


def test_parity_long_items_fused_kernel():
    """Items of at least ``FUSED_MIN_ITEM_TOKENS`` take the fused kernel for their own block."""
    g = torch.Generator().manual_seed(2)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    requests = [Req(ids(9), [ids(mi.FUSED_MIN_ITEM_TOKENS + 6), ids(3)]), Req(ids(4), [ids(70)])]
    model = random_model("qwen3")
    with torch.inference_mode():
        torch.testing.assert_close(
            multi_item(model, requests), oracle(model, requests), atol=1e-4, rtol=0
        )


def test_parity_bf16_within_tolerance():
    model, requests = random_model("llama").to(torch.bfloat16), ragged_requests()
    with torch.inference_mode():
        want = torch.softmax(oracle(model, requests).float(), -1)
        got = torch.softmax(multi_item(model, requests).float(), -1)
    assert (got - want).abs().max() < 0.02


def test_no_items_and_unsupported_models():
    model = random_model("llama")
    assert mi.multi_item_answer_hidden(model, [Req([3, 4], [])]).shape == (0, 64)
    with pytest.raises(ValueError, match="gpt2"):
        mi.check_multi_item_supported(SimpleNamespace(config=SimpleNamespace(model_type="gpt2")))
    with pytest.raises(ValueError, match="non-empty items"):
        mi.multi_item_answer_hidden(model, [Req([3, 4], [[5], []])])
    windowed = random_model("mistral", sliding_window=16)
    with pytest.raises(ValueError, match="sliding window"):
        mi.multi_item_answer_hidden(windowed, [Req(list(range(3, 20)), [[5, 6]])])


def test_prefer_multi_item():
    requests = ragged_requests()
    assert mi.prefer_multi_item(random_model("qwen3"), requests)
    assert not mi.prefer_multi_item(random_model("llama"), [Req([], [[4]])])
    windowed = random_model("mistral", sliding_window=16)
    assert not mi.prefer_multi_item(windowed, [Req(list(range(3, 20)), [[5, 6]])])
    assert mi.prefer_multi_item(windowed, [Req([3, 4], [[5, 6]])])
    gpt2_like = SimpleNamespace(
        device=torch.device("cpu"), config=SimpleNamespace(model_type="gpt2")
    )
    assert not mi.prefer_multi_item(gpt2_like, requests)

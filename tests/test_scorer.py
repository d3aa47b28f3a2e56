"""The shared-prefix scorer equals a naive full forward of each prompt."""

import pytest
import torch

from ranking.request import EncodedRequest
from ranking.scorer import TorchScorer, label_logits, naive_label_logits, yes_probability
from tests.random_models import random_model


def ragged_batch():
    """Two requests; items of different lengths, a one-token item, a one-token query."""
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, 97, (n,), generator=g).tolist()  # noqa: E731
    return [
        EncodedRequest(ids(23), [ids(5), ids(1), ids(17), ids(9), ids(2)]),
        EncodedRequest([1], [ids(4), ids(11)]),
    ]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_parity_fp32_tight(kind):
    model = random_model(kind)
    batch = ragged_batch()
    with torch.no_grad():
        shared = label_logits(model, batch, (5, 6))
        naive = naive_label_logits(model, batch, (5, 6))
    assert shared.shape == (7, 2)
    torch.testing.assert_close(shared, naive, atol=2e-5, rtol=1e-5)


def test_parity_with_chunking_and_pad_id():
    """A tiny item-token budget forces many chunks; a real token as pad must not leak in."""
    model = random_model("llama")
    batch = ragged_batch()
    with torch.no_grad():
        chunked = label_logits(model, batch, (5, 6), pad_id=7, max_chunk_tokens=12)
        naive = naive_label_logits(model, batch, (5, 6), pad_id=0, batch_size=1)
    torch.testing.assert_close(chunked, naive, atol=2e-5, rtol=1e-5)


def test_parity_bf16_within_tolerance():
    model = random_model("llama", torch.bfloat16)
    batch = ragged_batch()
    with torch.no_grad():
        s = yes_probability(label_logits(model, batch, (5, 6)))
        n = yes_probability(naive_label_logits(model, batch, (5, 6)))
    assert (s - n).abs().max().item() < 0.02


def test_never_computes_full_vocabulary_logits():
    model = random_model("llama")
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        label_logits(model, ragged_batch(), (5, 6))
    assert calls == []


def test_scorer_text_api_and_empty(tiny_teacher):
    model, tok, task, _ = tiny_teacher
    scorer = TorchScorer(model, tok, task)
    items = ["item: jazz guitar tips. good expert video about music.", "item: x."]
    s = scorer.score("member profile: nurse.", items)
    assert s.shape == (2,) and ((s > 0) & (s < 1)).all()
    # same scores whether items come alone or together (no cross-item leakage)
    alone = [scorer.score("member profile: nurse.", [it])[0] for it in items]
    assert s == pytest.approx(alone, abs=1e-5)
    assert scorer.score("member profile: nurse.", []).shape == (0,)


def test_tokens_accounting():
    r = EncodedRequest([1, 2, 3], [[4], [5, 6]])
    assert r.n_items == 2
    assert r.prompt_tokens == 3 + 1 + 3 + 2
    assert r.computed_tokens == 3 + 1 + 2

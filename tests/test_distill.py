"""KD losses against hand-computed values; the ranking and generative objectives on a tiny
model; make_student's config handling."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from compression.distill import make_student
from compression.generative import OffPolicyObjective, sample_targets, validation_losses
from compression.generative import Sequence_ as Seq
from compression.losses import answer_kd_loss, label_loss, lm_loss, token_kd_loss
from compression.train import RankingObjective
from ranking.datafolder import read_split
from ranking.dataset import encode_groups
from ranking.scorer import answer_hidden


def test_answer_kd_hand_computed():
    # teacher 50/50; student logits (ln 3, 0) -> p_s = (3/4, 1/4)
    # KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 (ln 2 - ln 1.5) + 0.5 ln 2
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[math.log(3.0), 0.0]])
    assert answer_kd_loss(s, t).item() == pytest.approx(expected, abs=1e-6)
    # temperature 2: student logits halve -> p_s = (sqrt3, 1)/(1+sqrt3); loss scaled by T^2 = 4
    p = math.sqrt(3) / (1 + math.sqrt(3))
    expected_t2 = 4 * (0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p)))
    assert answer_kd_loss(s, t, temperature=2.0).item() == pytest.approx(expected_t2, abs=1e-6)


def test_kd_is_forward_kl_and_zero_at_match():
    t = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    assert answer_kd_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    # forward KL(p_t || p_s) is not symmetric: swapping roles changes the value
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert answer_kd_loss(s, t).item() != pytest.approx(answer_kd_loss(t, s).item(), abs=1e-4)


def test_token_kd_over_vocabulary_hand_computed():
    # one token, vocab 3: p_t = (0.5, 0.25, 0.25); student uniform
    t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    s = torch.zeros((1, 3))
    expected = 0.5 * math.log(0.5 * 3) + 2 * 0.25 * math.log(0.25 * 3)
    assert token_kd_loss(s, t).item() == pytest.approx(expected, abs=1e-6)
    # mean over tokens: a second, matching token halves it
    both = token_kd_loss(torch.cat([s, t]), torch.cat([t, t]))
    assert both.item() == pytest.approx(expected / 2, abs=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_demo, tiny_teacher):
    model, tok, task, _ = tiny_teacher
    groups = encode_groups(read_split(tiny_demo / "data", "validation"), tok, task)[:4]
    return model, tok, task, groups


def test_ranking_objective_hard_only_equals_label_loss(tiny):
    model, tok, task, groups = tiny
    ids = task.label_token_ids(tok)
    with torch.no_grad():
        got = RankingObjective(ids, tok.pad_token_id, lm_weight=0.3)(model, groups)
        taps: list = []
        hidden = answer_hidden(model, groups, tok.pad_token_id, taps=taps)
        labels = torch.as_tensor(np.concatenate([g.labels for g in groups]))
        want = label_loss(model, hidden, labels, ids) + 0.3 * lm_loss(model, taps)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_label_loss_is_hard_cross_entropy_on_0_1_and_weighs_soft_labels(tiny):
    model, tok, task, groups = tiny
    yes, no = task.label_token_ids(tok)
    with torch.no_grad():
        hidden = answer_hidden(model, groups, tok.pad_token_id)
        logits = model.get_output_embeddings()(hidden).float()
        logp = torch.log_softmax(logits, dim=-1)
        hard = torch.as_tensor(np.concatenate([g.labels for g in groups]))
        want = torch.nn.functional.cross_entropy(logits, torch.where(hard > 0.5, yes, no))
        assert label_loss(model, hidden, hard, (yes, no)).item() == pytest.approx(want.item())
        # a soft label is trained as given, not rounded to 0/1
        soft = torch.full_like(hard, 0.3)
        want = -(0.3 * logp[:, yes] + 0.7 * logp[:, no]).mean()
        got = label_loss(model, hidden, soft, (yes, no))
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        assert got.item() != pytest.approx(
            label_loss(model, hidden, soft.round(), (yes, no)).item()
        )


def test_ranking_objective_kd_is_zero_for_an_identical_student(tiny):
    model, tok, task, groups = tiny
    ids = task.label_token_ids(tok)
    obj = RankingObjective(ids, tok.pad_token_id, teacher=model, alpha=1.0, token_kd_weight=1.0)
    with torch.no_grad():
        assert obj(copy.deepcopy(model), groups).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        RankingObjective(ids, alpha=0.5)


def test_ranking_objective_kd_gradient_moves_student_towards_teacher(tiny):
    model, tok, task, groups = tiny
    ids = task.label_token_ids(tok)
    student = make_student(model.config, {"intermediate_size": 64}, seed=1)
    obj = RankingObjective(ids, tok.pad_token_id, teacher=model, alpha=1.0, temperature=2.0)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = obj(student, groups)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_make_student_overrides_and_rejects_unknown_fields(tiny):
    model = tiny[0]
    s = make_student(model.config, {"hidden_size": 32, "num_hidden_layers": 1})
    assert s.config.hidden_size == 32 and s.config.num_hidden_layers == 1
    assert s.config.head_dim == 32 // s.config.num_attention_heads
    assert s.config.vocab_size == model.config.vocab_size
    with pytest.raises(ValueError, match="not_a_field"):
        make_student(model.config, {"not_a_field": 3})


def test_generative_offpolicy_and_sampling(tiny):
    model, tok, task, groups = tiny
    pad = tok.pad_token_id
    ex = [Seq(g.query_ids, g.item_ids[0][:8]) for g in groups]
    student = copy.deepcopy(model)
    with torch.no_grad():
        assert OffPolicyObjective(model, pad)(student, ex).item() == pytest.approx(0, abs=1e-5)
    samples = sample_targets(student, [e.prompt for e in ex], 5, 0.85, pad)
    assert len(samples) == len(ex) and all(1 <= len(s) <= 5 for s in samples)
    # cut right after the stop token (the separator that ends an item): the same seeded draw
    # with and without a stop token, so the cut rows must be the free rows up to their first stop
    prompts = [ex[0].prompt] * 4
    torch.manual_seed(0)
    free = sample_targets(student, prompts, 5, 0.85, pad)
    stop = free[0][1]  # row 0 is cut at position 1 at the latest
    torch.manual_seed(0)
    cut = sample_targets(student, prompts, 5, 0.85, pad, stop_id=stop)
    want = [s[: s.index(stop) + 1] if stop in s else s for s in free]
    assert cut == want, (stop, free, cut)
    assert len(cut[0]) <= 2 < len(free[0])
    with torch.no_grad():
        v = validation_losses(student, model, ex, pad)
    assert v["kl"] == pytest.approx(0.0, abs=1e-5) and v["ce"] > 0
    assert v["tokens"] == sum(len(e.target) for e in ex)


def test_generative_examples_put_the_separator_in_the_prompt(tiny_demo, tiny_teacher):
    from compression.generative import generative_examples, separator_ids

    _, tok, task, _ = tiny_teacher
    rows = read_split(tiny_demo / "data", "validation")
    ex = generative_examples(rows, tok, task, limit=5)
    sep = separator_ids(tok, task)
    assert len(ex) == 5
    for e in ex:
        assert e.prompt[-len(sep) :] == sep and e.target[-len(sep) :] == sep
        assert tok.decode(e.target[: -len(sep)]) in {r["item"] for r in rows if r["label"]}

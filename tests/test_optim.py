"""The optimisers of the training loop: which parameters Muon takes, and that it trains and
resumes like AdamW does."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compression.optim import MuonWithAdamW, build_optimizer
from compression.train import TrainConfig, train


def tiny_llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)  # fmt: skip
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tied):
    model = tiny_llama(tied)
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05, muon_lr_ratio=2.5)
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert not muon & adamw and muon | adamw == set(names.values())
    assert all(n.startswith("model.layers.") and n.endswith("proj.weight") for n in muon)
    assert len(muon) == 2 * 7  # q, k, v, o, gate, up, down in each layer
    assert "model.embed_tokens.weight" in adamw and ("lm_head.weight" in adamw) != tied
    assert all(g["lr_scale"] == 2.5 for g in opt.muon.param_groups)
    assert [g["weight_decay"] for g in opt.adamw.param_groups] == [0.05, 0.0]


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd': choose one of adamw, muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="choose one of adamw, muon"):
        build_optimizer(torch.nn.Linear(2, 2), "lion", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="muon_lr_ratio must be > 0"):
        TrainConfig(optimizer="muon", muon_lr_ratio=0)
    with pytest.raises(ValueError, match=r"muon_ns_steps must be in \[1, 100\), got 0"):
        TrainConfig(optimizer="muon", muon_ns_steps=0)


class Regression:
    """A toy objective: fit a fixed random linear map through an embedding and a matrix."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.target = torch.randn(8, 16, generator=g)

    def __call__(self, model, batch):
        ids = torch.as_tensor(batch)
        return ((model(ids) - self.target[ids]) ** 2).mean()


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(8, 16), torch.nn.Linear(16, 16))


def test_muon_trains_through_the_loop():
    model, objective = toy_model(), Regression()
    before = objective(model, list(range(8))).item()
    cfg = TrainConfig(steps=60, batch_queries=8, lr=1e-2, warmup_steps=1, eval_every=0,
                      bf16_autocast=False, optimizer="muon", muon_lr_ratio=2.0)  # fmt: skip
    train(model, list(range(8)), cfg, objective)
    assert objective(model, list(range(8))).item() < 0.5 * before


def test_muon_state_round_trips():
    """A resumed run continues exactly: the saved state holds both optimisers' moments."""
    objective = Regression()
    a = toy_model()
    opt_a = build_optimizer(a, "muon", lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        opt_a.zero_grad()
        objective(a, list(range(8))).backward()
        opt_a.step()
    b = toy_model()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, "muon", lr=1e-2, weight_decay=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as saved to disk: no sharing
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        objective(model, list(range(8))).backward()
        opt.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_training_runs_eager_attention_on_cpu_and_restores_the_models_own():
    """The loop trains with eager attention (faster backwards on CPU, same math) and hands the
    model back with the attention implementation it came with."""
    model = tiny_llama(tied=True)
    model.set_attn_implementation("sdpa")
    seen = []

    def next_token_loss(m, batch):
        seen.append(m.config._attn_implementation)
        ids = torch.as_tensor(batch).view(1, -1)
        return m(input_ids=ids, labels=ids).loss

    cfg = TrainConfig(steps=3, batch_queries=4, warmup_steps=1, eval_every=0)
    train(model, list(range(8)), cfg, next_token_loss)
    assert seen == ["eager"] * 3
    assert model.config._attn_implementation == "sdpa"
    ids = torch.arange(8).view(1, -1)
    with torch.no_grad():
        sdpa = model(ids).logits
        model.set_attn_implementation("eager")
        eager = model(ids).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_newton_schulz_matches_torch_in_bf16_and_is_close_in_fp32():
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

    from compression.optim import newton_schulz

    coeffs, g = (DEFAULT_A, DEFAULT_B, DEFAULT_C), torch.randn(96, 40)
    ref = _zeropower_via_newtonschulz(g, coeffs, 5, 1e-7)
    assert torch.equal(newton_schulz(g, coeffs, 5, 1e-7, torch.bfloat16), ref)
    fp32 = newton_schulz(g, coeffs, 5, 1e-7, torch.float32)
    assert fp32.dtype == torch.float32 and (fp32 - ref.float()).abs().max() < 0.05


def test_compute_dtype_muon_steps_like_torch_muon(monkeypatch):
    """Forced to fp32 (a CPU without native bf16), one step lands where torch's bf16 step does,
    up to bf16 rounding; the momentum state has torch's key, so checkpoints resume either way."""
    import compression.optim as optim

    monkeypatch.setattr(optim, "compute_dtype", lambda: torch.float32)
    torch.manual_seed(0)
    ours, theirs = torch.nn.Parameter(torch.randn(32, 48)), torch.nn.Parameter(torch.randn(32, 48))
    theirs.data.copy_(ours.data)
    kw = dict(lr=0.02, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    opt_a, opt_b = optim.ComputeDtypeMuon([ours], **kw), torch.optim.Muon([theirs], **kw)
    before = ours.detach().clone()
    for _ in range(2):
        grad = torch.randn(32, 48)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    moved = (theirs - before).abs().mean()
    assert moved > 1e-3 and (ours - theirs).abs().max() < 0.05 * (theirs - before).abs().max()
    assert set(opt_a.state[ours]) == set(opt_b.state[theirs]) == {"momentum_buffer"}

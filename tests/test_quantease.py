"""QuantEase: the coordinate update by hand, the error ordering QuantEase <= GPTQ <= RTN on
planted ill-conditioned layers, and an end-to-end oneshot run on the tiny teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs

from compression.quantease import (
    QuantEaseModifier,
    quantease_weight,
    reconstruction_error,
    rtn_weight,
    weight_qparams,
)

SETTINGS = {
    "int4-channel": dict(num_bits=4, type="int", symmetric=True, strategy="channel"),
    "int4-group32": dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32),
    "int8-channel": dict(num_bits=8, type="int", symmetric=True, strategy="channel"),
}


def planted_layer(rows=64, cols=256, rank=16, n=2048, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and inputs ``X = A Z + noise`` with uneven feature scales: ``X X^T`` is
    low-rank plus a small ridge, so badly conditioned, as activations of real layers are."""
    g = torch.Generator().manual_seed(seed)
    W = 0.05 * torch.randn(rows, cols, generator=g)
    X = torch.randn(cols, rank, generator=g) @ torch.randn(rank, n, generator=g)
    X = (X + 0.05 * torch.randn(cols, n, generator=g)) * torch.randn(cols, 1, generator=g).exp()
    return W, X


def unit_grid(rows: int) -> tuple[torch.Tensor, torch.Tensor, QuantizationArgs]:
    """int4 per channel with scale 1: the grid is the integers -8..7."""
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="channel")
    return torch.ones(1, rows, 1), torch.zeros(1, rows, 1, dtype=torch.int8), args


def test_update_rule_on_a_2x2_case_by_hand():
    # f(q) = (w - q) H (w - q)^T; column j's update: q_j = round(w_j + sum_k!=j d_k H_kj / H_jj)
    W = torch.tensor([[[0.2, 0.6]]])
    H = torch.tensor([[[4.0, -1.8], [-1.8, 1.0]]])
    scale, zp, args = unit_grid(1)
    # start from round-to-nearest: q = (0, 1), residual d = (0.2, -0.4)
    # column 0: 0.2 + (-0.4)(-1.8)/4 = 0.38 -> 0   (without the /H_00 it would be 0.92 -> 1)
    # column 1: 0.6 + (0.2)(-1.8)/1 = 0.24 -> 0
    Q, loss, _ = quantease_weight(W, H, scale, zp, None, args, iterations=1, init="rtn", percdamp=0)
    assert Q.tolist() == [[[0.0, 0.0]]]
    # f(0, 0) = 4(.04) + .36 + 2(.2)(.6)(-1.8) = 0.088, below RTN's f(0, 1) = 0.608
    assert loss.item() == pytest.approx(0.088, abs=1e-6)
    assert reconstruction_error(W, torch.tensor([[[0.0, 1.0]]]), H).item() == pytest.approx(0.608)
    # a fixed point: a second pass changes nothing
    Q2, _, _ = quantease_weight(W, H, scale, zp, None, args, iterations=2, init="rtn", percdamp=0)
    assert torch.equal(Q2, Q)


def test_converged_weights_are_coordinatewise_optimal():
    """After enough passes no single weight can move to another grid point and lower f."""
    W, X = planted_layer(rows=4, cols=16, rank=3, n=64, seed=3)
    H = X @ X.T
    scale, zp, args = unit_grid(4)
    W = W * 60  # spread the weights over the integer grid
    Q, loss, _ = quantease_weight(
        W[None], H[None], scale, zp, None, args, iterations=30, init="rtn", percdamp=0
    )
    Q = Q[0]
    assert reconstruction_error(W, Q, H).item() == pytest.approx(loss.item(), rel=1e-5)
    for i in range(Q.shape[0]):
        for j in range(Q.shape[1]):
            for level in range(-8, 8):
                trial = Q.clone()
                trial[i, j] = level
                assert reconstruction_error(W, trial, H) >= loss * (1 - 1e-5), (i, j, level)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_layer_error_quantease_le_gptq_le_rtn(setting, seed):
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    W, X = planted_layer(seed=seed)
    H = X @ X.T
    args = QuantizationArgs(**SETTINGS[setting], actorder="static")  # GPTQModifier's default
    qp = weight_qparams(W, args)
    scale, zp = qp["scale"][None], qp["zero_point"][None]

    rtn = rtn_weight(W, qp, args)
    gptq, _, fallback = quantize_weight(W[None].clone(), H[None].clone(), scale, zp, None, args)
    qe, _, _ = quantease_weight(W[None].clone(), H[None].clone(), scale, zp, None, args)
    assert not fallback.any()
    # every solver stays on the observer's grid
    for Q in (rtn, gptq[0], qe[0]):
        assert torch.allclose(rtn_weight(Q, qp, args), Q, atol=1e-6)

    err = {
        n: ((W - Q) @ X).norm().item() for n, Q in (("rtn", rtn), ("gptq", gptq[0]), ("qe", qe[0]))
    }
    assert err["qe"] <= err["gptq"] <= err["rtn"], err
    assert reconstruction_error(W, qe[0], H).sqrt().item() == pytest.approx(err["qe"], rel=1e-3)


def test_modifier_is_a_gptq_modifier_with_its_own_options():
    from llmcompressor.modifiers.gptq import GPTQModifier

    m = QuantEaseModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], iterations=2)
    assert isinstance(m, GPTQModifier)
    assert (m.iterations, m.init) == (2, "gptq")
    with pytest.raises(ValueError):
        QuantEaseModifier(targets="Linear", scheme="W4A16", init="nearest")


@pytest.mark.slow
def test_tiny_teacher_int4_checkpoint_loads_and_scores_close(tiny_demo):
    from compression.quantize import QuantizeConfig, quantize_checkpoint
    from ranking.checkpoint import inspect_checkpoint, load_checkpoint
    from ranking.datafolder import read_split
    from ranking.dataset import encode_groups
    from ranking.evaluation import score_groups
    from ranking.scorer import TorchScorer

    rows = read_split(tiny_demo / "data", "train")
    model, tok, task, _ = load_checkpoint(tiny_demo / "teacher")
    groups = encode_groups(read_split(tiny_demo / "data", "test"), tok, task)[:20]
    ref = score_groups(TorchScorer(model, tok, task), groups)

    mad, configs = {}, {}
    for name, scheme in (("rtn", "int4-rtn"), ("gptq", "int4"), ("quantease", "int4-quantease")):
        dst = tiny_demo / f"teacher-int4-{name}"
        if not dst.exists():
            # hidden size 64: groups of 32
            cfg = QuantizeConfig(scheme, num_samples=16, group_size=32)
            quantize_checkpoint(tiny_demo / "teacher", dst, cfg, rows)
        assert inspect_checkpoint(dst).format == "int4"
        configs[name] = json.loads((dst / "config.json").read_text())["quantization_config"]
        m, t, k, _ = load_checkpoint(dst)
        mad[name] = float(np.abs(score_groups(TorchScorer(m, t, k), groups) - ref).mean())
    print("mean |delta score| vs bf16:", mad)

    # the same compressed-tensors config as GPTQ's, so vLLM loads it the same way
    assert configs["quantease"] == configs["gptq"]
    assert configs["quantease"]["format"] == "pack-quantized"
    assert mad["quantease"] < 0.02, mad
    assert mad["quantease"] <= mad["rtn"], mad

"""FP8 linear layers: the ``torch._scaled_mm`` product against the dequantized reference, the
rounding error of the scheme, and a whole decoder converted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranking.fp8_linear import (
    Fp8Linear,
    convert_to_fp8,
    dequantized_matmul,
    fp8_matmul,
    quantize_rowwise,
)


def scaled_mm_available() -> bool:
    try:
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        one = torch.ones(16, 1)
        torch._scaled_mm(a, a.T, scale_a=one, scale_b=one.T, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


needs_scaled_mm = pytest.mark.skipif(
    not scaled_mm_available(),
    reason="torch._scaled_mm with row-wise scales is not available on this device/build",
)


def test_quantize_rowwise_round_trip():
    x = torch.randn(8, 64) * torch.logspace(-2, 2, 8)[:, None]  # rows of very different size
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (8, 1)
    rel = ((q.float() * s - x).abs() / x.abs().amax(dim=1, keepdim=True)).max()
    assert rel < 2**-4  # e4m3: 3 mantissa bits


@needs_scaled_mm
def test_scaled_mm_matches_the_dequantized_product():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(37, 128, generator=g), torch.randn(48, 128, generator=g)
    xq, xs = quantize_rowwise(x)
    wq, ws = quantize_rowwise(w)
    got = fp8_matmul(xq, xs, wq, ws, torch.float32)
    ref = dequantized_matmul(xq, xs, wq, ws)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-3)
    # and the scheme itself stays close to the full-precision product
    assert (ref - x @ w.T).abs().max() / (x @ w.T).abs().max() < 0.05


@needs_scaled_mm
def test_fp8_linear_matches_reference_with_bias_and_leading_dims():
    lin = nn.Linear(64, 32, bias=True)
    f = Fp8Linear(lin, out_dtype=torch.float32)
    x = torch.randn(2, 5, 64)
    xq, xs = quantize_rowwise(x.reshape(-1, 64))
    ref = dequantized_matmul(xq, xs, f.weight, f.weight_scale) + lin.bias.detach()
    assert torch.allclose(f(x), ref.reshape(2, 5, 32), rtol=1e-4, atol=1e-3)


def test_unaligned_layer_is_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear(nn.Linear(24, 32))


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).eval()


def test_convert_refuses_a_cpu_model():
    with pytest.raises(ValueError, match="CUDA"):
        convert_to_fp8(tiny_qwen3())


@needs_scaled_mm
def test_converted_decoder_stays_close_to_bf16():
    model = tiny_qwen3().to(torch.bfloat16)
    ids = torch.randint(0, 128, (1, 20))
    with torch.inference_mode():
        ref = model(ids).logits.float()
        assert convert_to_fp8(model, allow_non_cuda=True) == 2 * 7  # q k v o, gate up down
        got = model(ids).logits.float()
    assert isinstance(model.model.layers[0].mlp.up_proj, Fp8Linear)
    assert model.lm_head.weight.dtype == torch.bfloat16  # the head stays
    assert (got - ref).abs().max() / ref.abs().max() < 0.1

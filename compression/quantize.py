"""Quantize a checkpoint with llmcompressor ``oneshot`` into the compressed-tensors format.

Schemes (``lm_head`` always stays unquantized: scoring reads two of its rows):
  fp8             FP8_DYNAMIC: fp8 weights (per channel), dynamic per-token fp8 activations
  int8            W8A8: SmoothQuant (activation outliers into weights) then GPTQ, int8
                  activations
  int8-quantease  int8, with QuantEase refining GPTQ's weights (``compression.quantease``)
  int4            W4A16: GPTQ, int4 weights in groups (or per channel), 16-bit activations
  int4-quantease  int4, with QuantEase refining GPTQ's weights
  int4-rtn        W4A16 by round-to-nearest (no GPTQ), the ablation baseline for int4

INT4 ``group_size``: weights share a scale in groups of that many inputs; ``0`` (or ``null``)
means one scale per output channel (``strategy: channel``), the setting where INT4 error is
largest and GPTQ / QuantEase matter most. Every scheme writes a compressed-tensors checkpoint
that vLLM loads; the QuantEase schemes write the same format as their GPTQ counterparts.

Calibration data comes from the task itself: real ranking prompts (query + item + question).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from compression.calibration import task_prompts

SCHEMES = ("fp8", "int8", "int8-quantease", "int4", "int4-quantease", "int4-rtn")


@dataclass
class QuantizeConfig:
    """The quantize stage of a recipe."""

    scheme: str = "int8"
    num_samples: int = 128  # calibration prompts from the train split
    group_size: int | None = 128  # int4 weight groups; 0 or null: per output channel
    smoothing_strength: float = 0.8  # SmoothQuant, int8 schemes only
    quantease_iterations: int = 3  # QuantEase passes over each layer's columns

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.group_size is not None and (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 0
        ):
            raise ValueError(
                f"group_size must be an integer >= 1, or 0 / null for per-channel scales; "
                f"got {self.group_size!r}"
            )
        if self.quantease_iterations < 0:
            raise ValueError(f"quantease_iterations must be >= 0, got {self.quantease_iterations}")

    @property
    def per_channel(self) -> bool:
        """INT4 with one scale per output channel (no groups)."""
        return not self.group_size


def _int4_config(group_size: int | None) -> dict:
    """W4A16 weights: symmetric int4 in groups of ``group_size`` inputs, or per channel when
    ``group_size`` is 0 / None."""
    weights: dict = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "channel"}
    if group_size:
        weights.update(strategy="group", group_size=group_size)
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def build_recipe(
    scheme: str,
    group_size: int | None = 128,
    smoothing_strength: float = 0.8,
    quantease_iterations: int = 3,
) -> list:
    """The llmcompressor modifiers for one scheme."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    ignore = ["lm_head"]
    if scheme.endswith("-quantease"):
        # imported here: it pulls llmcompressor's GPTQ internals, only needed for these schemes
        from compression.quantease import QuantEaseModifier

        solver, extra = QuantEaseModifier, {"iterations": quantease_iterations}
    else:
        solver, extra = GPTQModifier, {}
    if scheme == "fp8":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if scheme in ("int8", "int8-quantease"):
        return [
            SmoothQuantModifier(smoothing_strength=smoothing_strength),
            solver(targets="Linear", scheme="W8A8", ignore=ignore, **extra),
        ]
    if scheme in ("int4", "int4-quantease"):
        return [solver(config_groups=_int4_config(group_size), ignore=ignore, **extra)]
    if scheme == "int4-rtn":
        return [QuantizationModifier(config_groups=_int4_config(group_size), ignore=ignore)]
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def calibration_dataset(prompts: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": prompts, "attention_mask": [[1] * len(p) for p in prompts]}
    )


def quantize_checkpoint(
    src: str | Path, dst: str | Path, cfg: QuantizeConfig, calibration_rows: list[dict]
) -> dict:
    """Reads ``src`` (bf16), writes the compressed-tensors checkpoint ``dst``; returns a summary.
    ``cfg.num_samples`` calibration prompts are drawn from ``calibration_rows``."""
    from llmcompressor import oneshot

    from ranking.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint

    cfg.validate()  # fail on bad settings before loading anything
    recipe = build_recipe(
        cfg.scheme, cfg.group_size, cfg.smoothing_strength, cfg.quantease_iterations
    )
    t0 = time.time()
    model, tokenizer, task, _ = load_checkpoint(src)
    prompts = task_prompts(calibration_rows, tokenizer, task, cfg.num_samples)
    max_len = max(len(p) for p in prompts)
    quantized = oneshot(
        model=model,
        dataset=calibration_dataset(prompts),
        recipe=recipe,
        max_seq_length=max_len,
        num_calibration_samples=len(prompts),
    )
    save_checkpoint(quantized, tokenizer, task, dst, dtype=None, save_compressed=True)
    return {
        "scheme": cfg.scheme,
        "group_size": (cfg.group_size or "channel") if cfg.scheme.startswith("int4") else None,
        "seconds": round(time.time() - t0, 1),
        "bytes": checkpoint_bytes(dst),
        "calibration_samples": len(prompts),
    }

"""Quantize a checkpoint with llmcompressor ``oneshot`` into the compressed-tensors format.

Schemes (``lm_head`` always stays unquantized: scoring reads two of its rows):
  fp8       FP8_DYNAMIC: fp8 weights (per channel) and dynamic per-token fp8 activations
  int8      W8A8: SmoothQuant (activation outliers into weights) then GPTQ, int8 activations
  int4      W4A16: GPTQ, int4 weights in groups, 16-bit activations
  int4-rtn  W4A16 by round-to-nearest (no GPTQ), the ablation baseline for int4

Calibration data comes from the task itself: real ranking prompts (query + item + question).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from ranking.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from ranking.task import RankingTask

SCHEMES = ("fp8", "int8", "int4", "int4-rtn")


@dataclass
class QuantizeConfig:
    """The quantize stage of a recipe."""

    scheme: str = "int8"
    num_samples: int = 128  # calibration prompts from the train split
    group_size: int = 128  # int4 weight groups
    smoothing_strength: float = 0.8  # SmoothQuant, int8 only

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.num_samples < 1 or self.group_size < 1:
            raise ValueError("num_samples and group_size must be >= 1")


def _int4_config(group_size: int) -> dict:
    return {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": group_size,
            },
        }
    }


def build_recipe(scheme: str, group_size: int = 128, smoothing_strength: float = 0.8) -> list:
    """The llmcompressor modifiers for one scheme."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    ignore = ["lm_head"]
    if scheme == "fp8":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if scheme == "int8":
        return [
            SmoothQuantModifier(smoothing_strength=smoothing_strength),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore),
        ]
    if scheme == "int4":
        return [GPTQModifier(config_groups=_int4_config(group_size), ignore=ignore)]
    if scheme == "int4-rtn":
        return [QuantizationModifier(config_groups=_int4_config(group_size), ignore=ignore)]
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def calibration_dataset(prompts: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": prompts, "attention_mask": [[1] * len(p) for p in prompts]}
    )


def task_prompts(
    rows: list[dict], tokenizer, task: RankingTask, n: int, seed: int = 0
) -> list[list[int]]:
    """``n`` full ranking prompts drawn from benchmark rows (the calibration set)."""
    rng = random.Random(seed)
    picked = rng.sample(rows, min(n, len(rows)))
    return [
        task.encode_query(tokenizer, r["query"]) + task.encode_item(tokenizer, r["item"])
        for r in picked
    ]


def quantize_checkpoint(
    src: str | Path, dst: str | Path, cfg: QuantizeConfig, calibration_rows: list[dict]
) -> dict:
    """Reads ``src`` (bf16), writes the compressed-tensors checkpoint ``dst``; returns a summary.
    ``cfg.num_samples`` calibration prompts are drawn from ``calibration_rows``."""
    from llmcompressor import oneshot

    cfg.validate()  # fail on bad settings before loading anything
    recipe = build_recipe(cfg.scheme, cfg.group_size, cfg.smoothing_strength)
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
        "seconds": round(time.time() - t0, 1),
        "bytes": checkpoint_bytes(dst),
        "calibration_samples": len(prompts),
    }

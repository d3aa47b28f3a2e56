"""The ``quantize`` stage: llmcompressor ``oneshot`` into compressed-tensors
(``compression.quantize``), calibrated on train-split prompts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from compression.quantize import QuantizeConfig, quantize_checkpoint
from compression.stages.base import StageContext, StageType
from ranking.model_shape import head_dim


def check_group_size(config: Any, group_size: int | None) -> None:
    """INT4 weight groups run along each linear layer's input: every input width must be a
    multiple of the group size (compressed-tensors and vLLM require it). ``0`` / ``None``
    (per-channel scales) fits any width."""
    if not group_size:
        return
    widths = {
        "hidden_size (q/k/v/gate/up inputs)": config.hidden_size,
        "intermediate_size (down_proj input)": config.intermediate_size,
        "heads x head_dim (o_proj input)": config.num_attention_heads * head_dim(config),
    }
    bad = [f"{k} = {v}" for k, v in widths.items() if v % group_size]
    if bad:
        raise ValueError(
            f"group_size {group_size} does not divide {'; '.join(bad)}: choose a group size "
            "that divides every input width, or group_size: 0 for per-channel scales"
        )


class QuantizeStage(StageType):
    Config = QuantizeConfig
    data_splits = ("train",)  # calibration prompts

    def check(self, cfg: QuantizeConfig, config: Any) -> Any:
        if cfg.scheme.startswith("int4"):
            check_group_size(config, cfg.group_size)
        out = copy.deepcopy(config)
        # marks the output as quantized: a later prune stage is refused by the check
        out.quantization_config = {"quant_method": "compressed-tensors", "scheme": cfg.scheme}
        return out

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        from ranking.datafolder import sample_rows

        # the calibration rows, sampled from train in one streaming pass
        rows = sample_rows(ctx.data, "train", ctx.config.num_samples)
        return quantize_checkpoint(src, dst, ctx.config, rows)

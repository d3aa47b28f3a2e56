"""The ``distill-generative`` stage: KD on the generative variant of the task
(``compression.generative``). Its output writes items rather than scoring them, so the report
shows its validation losses instead of ranking metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.generative import GenerativeDistillConfig, distill_generative
from compression.stages.base import StageContext, StageType
from compression.stages.distill import student_output_config


class GenerativeDistillStage(StageType):
    Config = GenerativeDistillConfig

    def check(self, cfg: GenerativeDistillConfig, config: Any) -> Any:
        return student_output_config(cfg.student, config)

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        return distill_generative(ctx.teacher, src, ctx.data, dst, ctx.config, ctx.name)

    def report_metrics(self, summary: dict) -> dict:
        return {
            "mode": summary["mode"],
            "val_kl": summary["val_kl"],
            "val_ce": summary["val_ce"],
            "val_kl_before": summary["val_kl_before"],
            "val_kl_onpolicy": summary.get("val_kl_onpolicy"),
        }

"""The ``distill`` stage: white-box KD of the ranking task into a student (``compression.distill``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.distill import DistillConfig, distill, student_config
from compression.stages.base import StageContext, StageType


def student_output_config(student: dict | str | None, config: Any) -> Any:
    """The student's config: ``config`` with overrides, a checkpoint folder's, or (``None``,
    re-distillation of the input) ``config`` itself."""
    if isinstance(student, dict):
        return student_config(config, student)
    if isinstance(student, str):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(student)
    return config


class DistillStage(StageType):
    Config = DistillConfig
    data_parallel = True
    resumable = True

    def reads(self, cfg: DistillConfig) -> dict[str, str]:
        return {cfg.teacher_outputs: "teacher-outputs"} if cfg.teacher_outputs else {}

    def check(self, cfg: DistillConfig, config: Any) -> Any:
        return student_output_config(cfg.student, config)

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        stored = ctx.inputs[ctx.config.teacher_outputs] if ctx.config.teacher_outputs else None
        return distill(ctx.teacher, src, ctx.data, dst, ctx.config, desc=ctx.name,
                       resume=ctx.work, stored_dir=stored)  # fmt: skip

"""The ``teacher-outputs`` stage: the teacher's answers (and top-k next-token log-probs) on the
training split, computed once by vLLM or the torch engine and stored
(``compression.teacher_outputs``); a ``distill`` stage naming it in ``teacher_outputs:`` then
trains without the teacher in its process."""

from __future__ import annotations

from pathlib import Path

from compression.stages.base import StageContext, StageType
from compression.teacher_outputs import TeacherOutputsConfig, compute_teacher_outputs


class TeacherOutputsStage(StageType):
    Config = TeacherOutputsConfig
    data_splits = ("train",)
    scored = False

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        return compute_teacher_outputs(src, ctx.data, dst, ctx.config, desc=ctx.name)

    def report_metrics(self, summary: dict) -> dict:
        keys = ("engine", "top_k", "queries", "prompt_tokens", "bytes",
                "bytes_per_million_prompt_tokens", "engine_seconds", "seconds")  # fmt: skip
        return {k: summary[k] for k in keys}

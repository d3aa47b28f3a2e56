"""The stage types a recipe can use, by the name its ``type:`` key gives.

A new stage type is one module (a ``StageType`` subclass: its ``Config``, ``check`` and
``run``) and one line here.
"""

from __future__ import annotations

from compression.stages.base import StageContext, StageType
from compression.stages.calibrate import CalibrateStage
from compression.stages.distill import DistillStage
from compression.stages.finetune import FinetuneStage
from compression.stages.generative import GenerativeDistillStage
from compression.stages.prune import PruneStage
from compression.stages.quantize import QuantizeStage
from compression.stages.teacher_outputs import TeacherOutputsStage

STAGES: dict[str, StageType] = {
    "calibrate": CalibrateStage(),
    "distill": DistillStage(),
    "distill-generative": GenerativeDistillStage(),
    "finetune": FinetuneStage(),
    "prune": PruneStage(),
    "quantize": QuantizeStage(),
    "teacher-outputs": TeacherOutputsStage(),
}

__all__ = ["STAGES", "StageContext", "StageType"]

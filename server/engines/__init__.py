"""Scoring engines behind one interface (``base.Engine``); ``create_engine`` picks one and
``check_supported`` says, before loading weights, whether it can run a checkpoint here."""

from __future__ import annotations

from pathlib import Path

import torch

from ranking.checkpoint import CheckpointInfo, inspect_checkpoint
from ranking.support import unsupported_reason
from server.engines.base import Engine, EngineUnavailable


def check_supported(model: str | Path, engine: str) -> CheckpointInfo:
    """The checkpoint's info, or ``EngineUnavailable`` naming why ``engine`` cannot run it on
    this machine and what to do instead (``ranking.support`` holds the table)."""
    info = inspect_checkpoint(model)
    reason = unsupported_reason(
        engine, info.format, info.architecture, cuda=torch.cuda.is_available()
    )
    if reason:
        raise EngineUnavailable(f"{info.path}: {reason}")
    return info


def create_engine(settings) -> Engine:
    if settings.engine == "torch":
        from server.engines.torch_engine import TorchEngine

        return TorchEngine(settings)
    if settings.engine == "vllm":
        from server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")


__all__ = ["Engine", "EngineUnavailable", "check_supported", "create_engine"]

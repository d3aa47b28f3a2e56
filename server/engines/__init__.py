"""Scoring engines behind one interface (``base.Engine``); ``create_engine`` makes one for a
``ModelSpec`` and ``check_supported`` says, before loading weights, whether it can run a
checkpoint here."""

from __future__ import annotations

from pathlib import Path

from ranking.checkpoint import CheckpointInfo, inspect_checkpoint
from ranking.support import Machine, unsupported_reason
from server.engines.base import (
    Engine,
    EngineUnavailable,
    LoadedModel,
    ModelSpec,
    TorchOptions,
    VllmOptions,
)


def check_supported(model: str | Path, engine: str) -> CheckpointInfo:
    """The checkpoint's info, or ``EngineUnavailable`` naming why ``engine`` cannot run it on
    this machine and what to do instead (``ranking.support`` holds the table)."""
    info = inspect_checkpoint(model)
    reason = unsupported_reason(engine, info.format, info.architecture, Machine.here())
    if reason:
        raise EngineUnavailable(f"{info.path}: {reason}")
    return info


def create_engine(spec: ModelSpec, fault_batches: tuple[int, ...] = ()) -> Engine:
    """The engine ``spec`` names; with ``fault_batches`` (chaos runs, tests) wrapped so that
    those batches fail (``server.engines.faults``)."""
    if spec.engine == "torch":
        from server.engines.torch_engine import TorchEngine

        engine: Engine = TorchEngine(spec)
    elif spec.engine == "vllm":
        from server.engines.vllm_engine import VllmEngine

        engine = VllmEngine(spec)
    else:
        raise ValueError(f"unknown engine {spec.engine!r} (known: torch, vllm)")
    if fault_batches:
        from server.engines.faults import FaultyEngine

        engine = FaultyEngine(engine, tuple(fault_batches))
    return engine


__all__ = [
    "Engine",
    "EngineUnavailable",
    "LoadedModel",
    "ModelSpec",
    "TorchOptions",
    "VllmOptions",
    "check_supported",
    "create_engine",
]

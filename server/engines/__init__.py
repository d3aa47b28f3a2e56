"""Scoring engines behind one interface (``base.Engine``); ``create_engine`` picks one."""

from __future__ import annotations

from server.engines.base import Engine, EngineUnavailable


def create_engine(settings) -> Engine:
    if settings.engine == "torch":
        from server.engines.torch_engine import TorchEngine

        return TorchEngine(settings)
    if settings.engine == "vllm":
        from server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    raise ValueError(f"unknown engine {settings.engine!r}")


__all__ = ["Engine", "EngineUnavailable", "create_engine"]

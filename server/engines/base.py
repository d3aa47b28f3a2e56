"""The engine interface: load one model, warm up, score batches of tokenized requests.

An engine is built from a ``ModelSpec`` (the one model it serves and its engine options), not
from the server's settings, so that a server can hold several engines side by side. ``start()``
returns the loaded model's facts (``LoadedModel``); nothing about the model is known before.

Tokenization and the ranking contract (prompt layout, label tokens) are shared: every engine
scores exactly the prompts ``ranking.task.RankingTask`` builds.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ranking.checkpoint import CheckpointInfo
from ranking.request import EncodedRequest
from ranking.task import WARMUP_ITEM, WARMUP_QUERY


class EngineUnavailable(RuntimeError):
    """The engine cannot run this checkpoint on this hardware; the message names the way out."""


@dataclass(frozen=True)
class TorchOptions:
    """The torch engine's options (``server.engines.torch_engine``)."""

    # FP8/INT8 checkpoints: emulate the per-token activation quantization, or skip it
    activation_quant: Literal["emulate", "skip"] = "emulate"
    fp8: bool = False  # CUDA only: decoder linear layers as FP8 matmuls
    # padded item tokens per forward chunk of the scorer (bounds one chunk's activations)
    chunk_tokens: int = 8192
    # INT8/INT4 checkpoints on CPU: the integer kernel (ranking.quant_kernels); auto: the
    # fastest measured at load that passes the accuracy gate
    kernel: Literal["auto", "dequantized", "fbgemm", "onednn", "int4pack"] = "auto"
    # torch.compile the scoring forward's per-layer steps at load (ranking.compiled)
    compile: bool = True


@dataclass(frozen=True)
class VllmOptions:
    """The vLLM engine's options (``server.engines.vllm_engine``)."""

    kv_cache_gb: float = 2.0  # VLLM_CPU_KVCACHE_SPACE on CPU
    block_size: int | None = None  # None: 32 on CPU, vLLM's own on GPU
    scoring: Literal["logprobs", "classifier"] = "logprobs"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.5


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: its checkpoint, the name it answers to, and how to run it."""

    path: str
    name: str
    engine: Literal["torch", "vllm"] = "torch"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    torch: TorchOptions = field(default_factory=TorchOptions)
    vllm: VllmOptions = field(default_factory=VllmOptions)


@dataclass(frozen=True)
class LoadedModel:
    """What a started engine knows of its model: everything the service needs to tokenize,
    check and answer requests for it."""

    info: CheckpointInfo
    tokenizer: Any
    task: Any  # ranking.task.RankingTask (or a test double with its encode methods)
    label_ids: tuple[int, int]  # (yes, no)
    vocab_size: int | None  # rows of the LM head: valid token ids are below it
    any_label_ids: bool = True  # whether a request may ask for other label ids than the task's
    # what the linear layers compute on ("fp32", "int8 fbgemm", "int4 dequantized to fp32",
    # "vllm") and why: the server logs it and /v1/models shows it
    kernel: str = ""
    kernel_reason: str = ""


class Engine(abc.ABC):
    """Lifecycle: ``start()`` (load, may take a while) -> ``warmup()`` -> ``score()`` ... ->
    ``stop()``."""

    name: str = "?"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    @abc.abstractmethod
    async def start(self) -> LoadedModel:
        """Load the model; raise ``EngineUnavailable`` or ``CheckpointError`` with a clear message."""

    @abc.abstractmethod
    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        """Per request of the batch: P(yes)/(P(yes)+P(no)) per item, shape (n_items,); for a
        request that carries ``label_ids``, shape (n_items, len(label_ids)): the probability of
        each label id, normalised over those ids, or over the whole vocabulary where the
        request says ``full_vocab``."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def is_alive(self) -> bool:
        """False once the engine can no longer score (a dead worker process): /health and
        /ready turn 503 so that an orchestrator restarts the server."""
        return True

    async def warmup(self, model: LoadedModel) -> None:
        """One real request through the whole path (first-call costs: allocation, kernels)."""
        q = model.task.encode_query(model.tokenizer, WARMUP_QUERY)
        items = model.task.encode_items(model.tokenizer, [WARMUP_ITEM] * 4)
        await self.score([EncodedRequest(q, items)])

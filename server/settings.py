"""Server settings: one pydantic-settings class, from CLI flags and ``SLIMRANK_*`` env vars."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Every field is also an env var: ``model`` -> ``SLIMRANK_MODEL`` and so on."""

    model_config = SettingsConfigDict(env_prefix="SLIMRANK_", extra="ignore")

    model: str = Field(default="artifacts/demo/teacher", description="checkpoint folder")
    engine: Literal["vllm", "torch"] = Field(default="torch", description="scoring engine")
    served_model_name: str | None = Field(
        default=None, description="name in responses (default: folder name)"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    torch_activation_quant: Literal["emulate", "skip"] = Field(
        default="emulate",
        description="torch engine, FP8/INT8 checkpoints: emulate the per-token activation "
        "quantization (scores as with real kernels) or skip it (faster on CPU)",
    )
    torch_fp8: bool = Field(
        default=False,
        description="torch engine on CUDA: decoder linear layers as FP8 matmuls (_scaled_mm)",
    )

    # request limits (over a limit -> 422 naming it; nothing is truncated silently)
    max_items: int = Field(default=256, ge=1, description="items per request")
    max_query_tokens: int = Field(default=1024, ge=1)
    max_item_tokens: int = Field(default=256, ge=1, description="per item, question included")
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    # scheduling
    max_batch_tokens: int = Field(
        default=8192, ge=64, description="computed tokens per engine batch"
    )
    max_wait_ms: float = Field(default=2.0, ge=0, description="wait for more requests to batch")
    max_queue_items: int = Field(default=2048, ge=1, description="items waiting; beyond -> 429")
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request deadline -> 504")

    # vLLM engine
    vllm_kv_cache_gb: float = Field(default=2.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    vllm_block_size: int | None = Field(
        default=None,
        ge=1,
        description="KV block = prefix-cache granularity (CPU: a multiple of 32; default 32 on "
        "CPU, vLLM's own on GPU)",
    )
    vllm_scoring: Literal["logprobs", "classifier"] = Field(
        default="logprobs", description="label log-probs from generation, or a 2-way pooling head"
    )
    vllm_max_model_len: int | None = Field(default=None, ge=64, description="default: the model's")
    vllm_gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)

    log_level: str = "info"

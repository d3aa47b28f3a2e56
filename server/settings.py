"""Server settings: one pydantic-settings class, from CLI flags and ``SLIMRANK_*`` env vars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.engines.base import ModelSpec, TorchOptions, VllmOptions
from server.engines.choice import EngineChoice, choose_engine
from server.models_file import ModelEntry, ModelsFile, load_models_file, single_model


class ServerSettings(BaseSettings):
    """Every field is also an env var: ``model`` -> ``SLIMRANK_MODEL`` and so on."""

    model_config = SettingsConfigDict(env_prefix="SLIMRANK_", extra="ignore")

    model: str = Field(
        default="artifacts/demo/teacher",
        description="checkpoint folder (one model; --models serves several)",
    )
    models: str | None = Field(
        default=None,
        description="models file (YAML): several versions, labels, A/B splits, shadows "
        "(server/models_file.py); replaces --model",
    )
    engine: Literal["auto", "torch", "vllm"] = Field(
        default="auto",
        description="scoring engine; auto: the one measured fastest for the checkpoint's format "
        "on this kind of machine (server/engines/engine_table.json; torch where none is)",
    )
    served_model_name: str | None = Field(
        default=None, description="name in responses (default: folder name)"
    )
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="compute dtype; auto: the checkpoint's own, but fp32 for bf16 on a CPU "
        "without native bf16 kernels (ranking.precision)",
    )
    torch_activation_quant: Literal["emulate", "skip"] = Field(
        default="emulate",
        description="torch engine, FP8/INT8 checkpoints: emulate the per-token activation "
        "quantization (scores as with real kernels) or skip it (faster on CPU)",
    )
    torch_kernel: Literal["auto", "dequantized", "fbgemm", "onednn", "int4pack"] = Field(
        default="auto",
        description="torch engine, INT8/INT4 checkpoints on CPU: the integer kernel; auto: the "
        "fastest measured at load within the accuracy gate (ranking.quant_kernels)",
    )
    torch_fp8: bool = Field(
        default=False,
        description="torch engine on CUDA: decoder linear layers as FP8 matmuls (_scaled_mm)",
    )
    torch_compile: bool = Field(
        default=True,
        description="torch engine: torch.compile the scoring forward's per-layer steps at load "
        "(fused elementwise work, 1.1-1.3x measured; 5-20 s more to start; ranking.compiled); "
        "--no-torch-compile starts at once, eager",
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
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="wait for more requests to batch after the first arrives (0, as Triton's "
        "max_queue_delay: requests that arrive while a batch runs are batched together anyway)",
    )
    max_queue_items: int = Field(
        default=2048, ge=1, description="hard cap on items waiting (alone until a rate is measured)"
    )
    max_expected_latency_ms: float = Field(
        default=400.0,
        gt=0,
        description="admit a request only if its scores are expected within this of its "
        "arrival (the running batch's rest, the batches planned ahead and its own, at the "
        "measured token rate); beyond -> 429. Default: a 500 ms p99 SLO less 100 ms for the "
        "client and the response",
    )
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

    # security (see docs/serving.md, "Security and reliability")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted Bearer keys (repeat --api-key; env: comma-separated); none = open",
    )
    api_key_file: str | None = Field(
        default=None, description="file with one accepted key per line (a mounted secret)"
    )
    metrics_public: bool = Field(default=False, description="/metrics without a key")
    admin_api_key: str | None = Field(
        default=None,
        description="turns the admin API on (/admin: load, unload, move labels); its Bearer "
        "key, separate from the client keys. Unset: no admin API",
    )
    log_request_text: bool = Field(
        default=False, description="debug only: log request bodies (member data!) at DEBUG"
    )
    verify_checkpoint: bool = Field(
        default=True, description="check the checkpoint's manifest (sha256 per file) at start"
    )

    # connections and lifecycle
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's headers must arrive within this -> else 408"
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's body must arrive within this -> else 408"
    )
    max_header_bytes: int = Field(default=65536, ge=1024, description="beyond -> 431")
    drain_window_s: float = Field(
        default=5.0,
        ge=0,
        description="after SIGTERM: /ready 503 and new requests 503 for this long, then shutdown",
    )
    graceful_shutdown_s: float = Field(
        default=30.0, gt=0, description="after the drain window: admitted requests may finish"
    )
    exit_on_load_error: bool = Field(
        default=True,
        description="end the process when the model fails to load (an orchestrator restarts "
        "it and shows the error); off: stay up, /ready answers 503 with the error",
    )
    fault_batches: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="chaos runs and tests only: these engine batches (1 = first after warm-up) "
        "raise, through a fault-injecting wrapper engine",
    )

    # model set (see docs/serving.md, "Rolling out a model")
    max_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="memory the models may take; a models file estimated over it is refused "
        "at start (default: the memory available to the process)",
    )
    routing_key_header: str = Field(
        default="x-routing-key",
        description="header whose value picks a request's A/B arm (sticky); the body's `user` "
        "field when absent",
    )
    score_monitoring: bool = Field(
        default=True,
        description="count every version's returned scores (the slimrank_score histogram) and "
        "export their drift from the checkpoint's reference (slimrank_score_psi)",
    )
    drift_window_s: float = Field(
        default=300.0,
        gt=0,
        description="sliding window of the score drift PSI, in seconds",
    )
    drift_min_scores: int = Field(
        default=1000,
        ge=1,
        description="scores the drift window must hold before its PSI is exported (fewer: NaN)",
    )
    shadow_queue: int = Field(
        default=64,
        ge=1,
        description="requests waiting for their shadow copy; beyond, copies are dropped (and "
        "counted), never queued behind live traffic",
    )

    log_level: str = "info"

    @field_validator("api_keys", "fault_batches", mode="before")
    @classmethod
    def _comma_list(cls, value):
        """Env vars and single flags give a string: ``a,b`` -> ``[a, b]``."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, int):
            return [value]
        return value

    def models_file(self) -> ModelsFile:
        """The versions to serve: the models file, or ``--model`` as its one entry."""
        if self.models:
            return load_models_file(self.models)
        name = self.served_model_name or Path(self.model).resolve().name
        return single_model(self.model, name, self.engine)

    @staticmethod
    def resolved_engine(entry: ModelEntry) -> EngineChoice:
        """The engine that serves ``entry``, and why (``auto`` reads the measured table)."""
        if entry.engine != "auto":
            return EngineChoice(entry.engine, "engine " + entry.engine)
        return choose_engine(entry.path)

    def model_spec(self) -> ModelSpec:
        """The first (with ``--model``: the only) version's spec."""
        return self.spec_for(self.models_file().models[0])

    def spec_for(self, entry: ModelEntry) -> ModelSpec:
        """How ``entry`` is run: its own engine, dtype and kernel, the server's other options.
        The torch scorer's forward chunk is the scheduler's batch budget: a batch is one
        forward."""
        return ModelSpec(
            path=entry.path,
            name=entry.name,
            engine=self.resolved_engine(entry).engine,
            dtype=entry.dtype or self.dtype,
            torch=TorchOptions(
                activation_quant=self.torch_activation_quant,
                fp8=self.torch_fp8,
                kernel=entry.torch_kernel or self.torch_kernel,
                chunk_tokens=self.max_batch_tokens,
                compile=self.torch_compile,
            ),
            vllm=VllmOptions(
                kv_cache_gb=self.vllm_kv_cache_gb,
                block_size=self.vllm_block_size,
                scoring=self.vllm_scoring,
                max_model_len=self.vllm_max_model_len,
                gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            ),
        )

    def accepted_keys(self) -> list[str]:
        """``api_keys`` plus the key file's lines (blank lines and ``#`` comments skipped)."""
        keys = list(self.api_keys)
        if self.api_key_file:
            for line in Path(self.api_key_file).read_text().splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    keys.append(line.strip())
        return keys

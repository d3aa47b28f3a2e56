"""The vLLM engine: vLLM's async engine in this process, asked only for the label log-probs.

What makes scoring cheap in vLLM: one prefill per item, no decode, and only the label rows.
Two ways, chosen by ``--vllm-scoring``:
- ``logprobs`` (default): generation with ``max_tokens=1`` and
  ``logprob_token_ids=[yes, no]``, so vLLM returns exactly the two label log-probabilities;
  score = softmax over the two;
- ``classifier``: the causal LM loaded as a pooling classifier (``convert="classify"``, vLLM's
  ``from_2_way_softmax`` head ``W[yes] - W[no]``): last hidden state times one row, sigmoid.
Both equal P(yes)/(P(yes)+P(no)). Prefix caching is on: items of a request share the query's
KV blocks. vLLM only reuses blocks already computed, so the first item of a request goes alone
and warms the cache, then the other items go together and read it.

FP8 checkpoints need vLLM's FP8 kernels, which the CPU build lacks (the first forward hangs);
we refuse them at start-up on CPU and name the torch engine, which dequantizes them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import replace

import numpy as np
import torch

from ranking.checkpoint import DTYPES, count_parameters, load_tokenizer_and_task
from ranking.precision import bf16_is_native
from ranking.request import EncodedRequest
from server.engines import check_supported
from server.engines.base import Engine, LoadedModel, ModelSpec

_ids = itertools.count()


def has_cuda() -> bool:
    return torch.cuda.is_available()


def cpu_threads_bind() -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for every core this process may use (``OMP_NUM_THREADS``
    of them when set), as the torch engine gets. vLLM-CPU's default (``auto``) keeps one core
    for its scheduler process: half of a 2-core machine, which measured 0.6x the items/s."""
    cpus = sorted(os.sched_getaffinity(0))
    n = int(os.environ.get("OMP_NUM_THREADS") or len(cpus))
    cpus = cpus[: max(n, 1)]
    contiguous = cpus == list(range(cpus[0], cpus[-1] + 1))
    return f"{cpus[0]}-{cpus[-1]}" if contiguous else ",".join(map(str, cpus))


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.llm = None
        self.label_ids: tuple[int, int] = (0, 0)  # the task's (yes, no), set by start()

    def engine_args(self, tokenizer):
        from vllm import AsyncEngineArgs

        spec, opts = self.spec, self.spec.vllm
        torch_dtype = DTYPES[spec.dtype]
        if torch_dtype is None and not has_cuda() and not bf16_is_native("cpu"):
            torch_dtype = torch.float32  # no native bf16 on this CPU (ranking.precision)
        dtype = "auto" if torch_dtype is None else str(torch_dtype).removeprefix("torch.")
        args = dict(
            model=str(spec.path),
            enable_prefix_caching=True,
            **self._scoring_args(tokenizer),
            dtype=dtype,
            enforce_eager=not has_cuda(),  # CPU: torch.compile costs minutes at start
        )
        # The KV block is the prefix-cache granularity: a request's query is shared by its items
        # only in whole blocks. vLLM-CPU's default block (128) leaves up to 127 query tokens to
        # recompute per item; 32 (the smallest its attention supports) measured 2.2x the items/s
        # on the standard workload. On GPUs vLLM's own default (16) is kept.
        block = opts.block_size or (None if has_cuda() else 32)
        if block:
            args["block_size"] = block
        if opts.max_model_len:
            args["max_model_len"] = opts.max_model_len
        if has_cuda():
            args["gpu_memory_utilization"] = opts.gpu_memory_utilization
        return AsyncEngineArgs(**args)

    async def start(self) -> LoadedModel:
        info = check_supported(self.spec.path, "vllm")
        os.environ.setdefault(
            "VLLM_CPU_KVCACHE_SPACE", str(int(max(1, self.spec.vllm.kv_cache_gb)))
        )
        if not has_cuda():  # a value already in the environment wins
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind())
        tokenizer, task = load_tokenizer_and_task(info.path)
        self.label_ids = task.label_token_ids(tokenizer)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(info.path)
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.engine_args(tokenizer)
        self.llm = AsyncLLM.from_engine_args(args)
        return LoadedModel(
            info=replace(info, params=count_parameters(info.path)),
            tokenizer=tokenizer,
            task=task,
            label_ids=self.label_ids,
            vocab_size=getattr(config.get_text_config(), "vocab_size", None),
            # the classifier head holds one row (yes - no): other label ids need the logprobs way
            any_label_ids=self.spec.vllm.scoring == "logprobs",
            kernel=f"vllm {args.dtype}",
            kernel_reason=f"{info.format} checkpoint on vLLM's own kernels",
        )

    def _scoring_args(self, tokenizer) -> dict:
        if self.spec.vllm.scoring == "logprobs":
            return {}
        no_tok, yes_tok = tokenizer.convert_ids_to_tokens([self.label_ids[1], self.label_ids[0]])
        return dict(
            runner="pooling",
            convert="classify",
            hf_overrides={
                "method": "from_2_way_softmax",
                "classifier_from_token": [no_tok, yes_tok],
            },
        )

    async def _one(
        self, prompt: list[int], label_ids: tuple[int, ...] | None = None, full_vocab=False
    ) -> float | np.ndarray:
        """P(yes)/(P(yes)+P(no)) of one prompt; with ``label_ids``, the probability of each,
        normalised over them or (``full_vocab``) as vLLM returns it, over the vocabulary."""
        from vllm import PoolingParams, SamplingParams
        from vllm.inputs import TokensPrompt

        if self.spec.vllm.scoring == "classifier":
            final = None
            async for out in self.llm.encode(
                TokensPrompt(prompt_token_ids=prompt),
                PoolingParams(task="classify"),
                request_id=f"c{next(_ids)}",
            ):
                final = out
            return float(final.outputs.data.reshape(-1)[0])
        wanted = list(label_ids or self.label_ids)
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=list(dict.fromkeys(wanted))
        )
        final = None
        async for out in self.llm.generate(
            TokensPrompt(prompt_token_ids=prompt), params, request_id=f"s{next(_ids)}"
        ):
            final = out
        lp = final.outputs[0].logprobs[0]
        logprobs = np.array([lp[t].logprob for t in wanted], dtype=np.float64)
        if label_ids is None:
            yes, no = logprobs
            return float(1.0 / (1.0 + np.exp(no - yes)))
        if full_vocab:
            return np.exp(logprobs)
        return np.exp(logprobs - np.logaddexp.reduce(logprobs))

    async def _request(self, r: EncodedRequest) -> np.ndarray:
        prompts = [r.query_ids + it for it in r.item_ids]
        args = (r.label_ids, r.full_vocab)
        first = await self._one(prompts[0], *args)  # computes and caches the query's KV blocks
        rest = await asyncio.gather(*(self._one(p, *args) for p in prompts[1:]))
        return np.array([first, *rest], dtype=np.float64 if r.label_ids else np.float32)

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(self._request(r) for r in requests)))

    def is_alive(self) -> bool:
        """vLLM marks its engine dead when the engine-core process exits (EngineDeadError)."""
        return self.llm is None or not self.llm.errored

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

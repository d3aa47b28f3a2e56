"""The torch engine: ``ranking.scorer.TorchScorer`` (shared prefix, label rows) in a worker thread.

Runs every checkpoint format on any torch device. INT8 and INT4 checkpoints run on the integer
kernel measured fastest at load (``ranking.quant_kernels``; the dequantized float layers where
none beats them or passes the accuracy gate); FP8 ones are dequantized at load on a CPU (the
CPU path for FP8 checkpoints) and run as FP8 products on CUDA with ``fp8``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ranking.checkpoint import DTYPES
from ranking.quant_kernels import load_for_scoring
from ranking.request import EncodedRequest
from ranking.scorer import TorchScorer
from server.engines.base import Engine, LoadedModel, ModelSpec


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        # one thread: batches run one after another, each using all intra-op threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        self.scorer: TorchScorer | None = None

    def _load(self) -> LoadedModel:
        spec, opts = self.spec, self.spec.torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_for_scoring(
            spec.path,
            DTYPES[spec.dtype],
            device,
            opts.kernel,
            emulate_activation_quant=opts.activation_quant == "emulate",
        )
        model, tok, task, info = loaded.model, loaded.tokenizer, loaded.task, loaded.info
        kernel, reason = loaded.kernel, loaded.kernel_reason
        if opts.fp8:
            from ranking.fp8_linear import convert_to_fp8

            convert_to_fp8(model)  # a clear error on a non-CUDA device
            kernel, reason = "fp8 _scaled_mm", "--torch-fp8"
        self.scorer = TorchScorer(model, tok, task, max_chunk_tokens=opts.chunk_tokens)
        if opts.compile and device == "cpu":
            kernel, reason = self._compile(model, kernel, reason)
        elif opts.compile:  # compiled steps are measured on CPU only (the multi-item path)
            reason = "; ".join(filter(None, [reason, "--torch-compile: CPU only"]))
        return LoadedModel(
            info=info,
            tokenizer=tok,
            task=task,
            label_ids=self.scorer.label_ids,
            vocab_size=model.get_output_embeddings().weight.shape[0],
            kernel=kernel,
            kernel_reason=reason,
        )

    def _compile(self, model, kernel: str, reason: str) -> tuple[str, str]:
        """Compiles the scoring steps now, at load, so that no request pays for it; serves eager
        (and says why) where the model cannot be compiled or compiling fails."""
        from ranking.compiled import compile_scoring, uncompile_scoring

        def said(why: str) -> str:
            return "; ".join(filter(None, [reason, why]))

        if not compile_scoring(model):
            return kernel, said(
                "--torch-compile skipped: linear layers that emulate activation quantization"
            )
        try:
            # dynamic shapes still specialize a size of 1: one request with a single item
            # and one with two
            for items in (["a"], ["a", "b c"]):
                self.scorer.score_ids([self.scorer.encode("warm up", items)])
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, an inductor error: serve eager
            uncompile_scoring(model)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            why = f"--torch-compile failed ({type(exc).__name__}: {first}); serving eager"
            return kernel, said(why)  # the ready line and /v1/models carry it
        return f"{kernel} + torch.compile", said("--torch-compile")

    async def start(self) -> LoadedModel:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._load)

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.scorer.score_ids, requests)

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)

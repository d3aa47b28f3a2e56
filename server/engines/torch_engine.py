"""The torch engine: ``ranking.scorer.TorchScorer`` (shared prefix, label rows) in a worker thread.

Runs every checkpoint format on any torch device; quantized checkpoints are dequantized at load
(FP8 included), so it is also the CPU path for FP8 checkpoints.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ranking.checkpoint import DTYPES, load_checkpoint
from ranking.request import EncodedRequest
from ranking.scorer import TorchScorer
from server.engines.base import Engine


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, settings):
        super().__init__(settings)
        # one thread: batches run one after another, each using all intra-op threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        self.scorer: TorchScorer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tok, task, info = await loop.run_in_executor(
            self._pool,
            lambda: load_checkpoint(
                self.settings.model,
                dtype=DTYPES[self.settings.dtype],
                device=device,
                emulate_activation_quant=self.settings.torch_activation_quant == "emulate",
            ),
        )
        if self.settings.torch_fp8:
            from ranking.fp8_linear import convert_to_fp8

            convert_to_fp8(model)  # a clear error on a non-CUDA device
        self.tokenizer, self.task, self.info = tok, task, info
        self.scorer = TorchScorer(model, tok, task, max_item_tokens=self.settings.max_batch_tokens)
        self.label_ids = self.scorer.label_ids
        self.vocab_size = model.get_output_embeddings().weight.shape[0]

    async def score(self, requests: list[EncodedRequest]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.scorer.score_ids, requests)

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)

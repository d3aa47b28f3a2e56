"""The in-process rows of ``loadtest compare``, each run in its own subprocess.

- ``torch-inprocess``: our torch engine itself (``server.engines.torch_engine.TorchEngine``,
  the server's settings defaults) called in-process, no HTTP, no scheduler: the floor that
  ``server-torch`` is measured against (what the server path costs on top of the model);

- ``vllm-offline``: plain vLLM, ``vllm.LLM(..., enable_prefix_caching=True)``; each item is one
  full prompt (query + item token ids), all the prompts of a request in one ``generate`` call,
  ``max_tokens=1`` and ``logprob_token_ids=[yes, no]`` (the two label log-probs, no decode).
  No tricks of our engine (no query-first warm-up): what a vLLM user gets out of the box.
- ``transformers``: naive batched transformers (``ranking.scorer.naive_label_logits``): every
  full prompt through the whole model in padded batches, full-vocabulary logits.

Why a subprocess: vLLM starts an engine-core process and holds memory until exit; each
baseline gets a clean process, like the servers do. Requests arrive as a JSON file of
``[query, items]`` pairs (the compare workload); the result is written as JSON. With
``--serve`` the process stays loaded and measures in turns asked on stdin (``serve_turns``).

    python -m loadtest.offline --engine vllm-offline --model DIR --requests-file R.json \
        --n 12 --concurrency 1 --warmup 2 --out result.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadtest.stats import Timings
from ranking.request import EncodedRequest

OFFLINE_ENGINES = ("torch-inprocess", "vllm-offline", "transformers")
TURN_PREFIX = "@turn "  # marks --serve's answers on stdout


def _encode(
    model: str, pairs: list[tuple[str, list[str]]]
) -> tuple[list[EncodedRequest], object, tuple]:
    from ranking.checkpoint import load_tokenizer_and_task

    tok, task = load_tokenizer_and_task(model)
    enc = [
        EncodedRequest(task.encode_query(tok, q), task.encode_items(tok, items))
        for q, items in pairs
    ]
    return enc, tok, task.label_token_ids(tok)


def vllm_scorer(model: str, label_ids: tuple[int, int]) -> Callable[[list[EncodedRequest]], None]:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from server.engines import check_supported

    check_supported(model, "vllm")  # FP8 on a CPU: a clear error instead of a hung first forward
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    llm = LLM(
        model=model,
        enable_prefix_caching=True,
        enforce_eager=not torch.cuda.is_available(),  # as our engine: CPU compile costs minutes
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(label_ids))

    def score(requests: list[EncodedRequest]) -> None:
        prompts = [
            TokensPrompt(prompt_token_ids=r.query_ids + it) for r in requests for it in r.item_ids
        ]
        outs = llm.generate(prompts, params, use_tqdm=False)
        assert len(outs) == len(prompts)

    return score


def inprocess_scorer(model: str) -> Callable[[list[EncodedRequest]], None]:
    """The server's torch engine, started and called in this process (its worker thread and
    all), with the settings the server defaults to."""
    import asyncio

    from server.engines.torch_engine import TorchEngine
    from server.settings import ServerSettings

    engine = TorchEngine(ServerSettings(model=model, engine="torch").model_spec())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())

    def score(requests: list[EncodedRequest]) -> None:
        loop.run_until_complete(engine.score(requests))

    return score


def transformers_scorer(model: str, label_ids: tuple[int, int], pad_id: int):
    import torch

    from ranking.checkpoint import load_checkpoint
    from ranking.scorer import naive_label_logits

    net, _, _, _ = load_checkpoint(model, compute=True)  # as the torch server loads it

    def score(requests: list[EncodedRequest]) -> None:
        with torch.inference_mode():
            naive_label_logits(net, requests, label_ids, pad_id)

    return score


def run_requests(
    score: Callable[[list[EncodedRequest]], None],
    requests: list[EncodedRequest],
    n: int,
    concurrency: int,
    start: int = 0,
) -> Timings:
    """``n`` requests (cycled from index ``start``), ``concurrency`` of them per call: the
    offline counterpart of a closed loop at that concurrency. Each request's latency is its
    call's time."""
    out = Timings(n=n)
    t0 = time.perf_counter()
    for s in range(start, start + n, concurrency):
        group = [requests[i % len(requests)] for i in range(s, min(start + n, s + concurrency))]
        t = time.perf_counter()
        score(group)
        out.lat_ms += [(time.perf_counter() - t) * 1000] * len(group)
        out.items += sum(r.n_items for r in group)
    out.wall_s = time.perf_counter() - t0
    return out


def measure(
    score: Callable[[list[EncodedRequest]], None],
    requests: list[EncodedRequest],
    n: int,
    concurrency: int,
    warmup: int,
) -> dict:
    """``warmup`` requests one by one, then ``n`` measured (``run_requests``)."""
    run_requests(score, requests, warmup, 1)
    return run_requests(score, requests, n, concurrency).summary(concurrency)


def serve_turns(
    score: Callable[[list[EncodedRequest]], None], requests: list[EncodedRequest]
) -> None:
    """``--serve``: stays loaded and measures on demand, so ``loadtest compare`` can give it
    turns between other engines (all alive at once, the host's drift shared by all). Each stdin
    line ``{"start", "n", "concurrency"}`` is answered with one stdout line, ``TURN_PREFIX`` +
    the ``Timings`` as JSON; libraries may print other lines, which the reader skips."""
    print(TURN_PREFIX + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t = run_requests(score, requests, cmd["n"], cmd["concurrency"], cmd.get("start", 0))
        print(TURN_PREFIX + json.dumps(dataclasses.asdict(t)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=OFFLINE_ENGINES, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests-file", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", help="write the measurement here (JSON)")
    ap.add_argument("--serve", action="store_true", help="measure in turns asked on stdin")
    args = ap.parse_args()
    if not args.serve and not args.out:
        ap.error("give --out, or --serve")

    pairs = [(q, list(items)) for q, items in json.loads(Path(args.requests_file).read_text())]
    requests, tok, label_ids = _encode(args.model, pairs)
    if args.engine == "torch-inprocess":
        score = inprocess_scorer(args.model)
    elif args.engine == "vllm-offline":
        score = vllm_scorer(args.model, label_ids)
    else:
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        score = transformers_scorer(args.model, label_ids, pad)
    if args.serve:
        run_requests(score, requests, args.warmup, 1)
        serve_turns(score, requests)
        return
    result = measure(score, requests, args.n, args.concurrency, args.warmup)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":  # vLLM spawns its engine core: never build it at import time
    main()

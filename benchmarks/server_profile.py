"""Where a served request spends its time outside the model: py-spy on the server under load.

Starts ``python -m server`` (from ``--repo``, default this checkout, so two checkouts can be
compared on the same machine), attaches ``py-spy record`` to it, sends ``--requests`` requests
of the standard workload at ``--concurrency`` (the same few members again and again, as real
traffic re-ranks a member within seconds), and prints:

- the share of samples in the engine's worker thread (the model) and in the rest (the event
  loop: HTTP, JSON, validation, tokenization, scheduling);
- the functions outside the model with the most samples (inclusive), as a share of all.

    python benchmarks/server_profile.py --model artifacts/demo/teacher --json out.json
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # measured on the allocator the server runs on, before torch is imported

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_THREAD = "_worker (concurrent/futures/thread.py"  # the engine's worker thread


def _start(repo: Path, model: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "server", "--model", model, "--engine", "torch"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, cwd=repo, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ}
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1500):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server not ready")


def _is_model(stack: list[str]) -> bool:
    return any(MODEL_THREAD in f for f in stack)


def summarize(raw: str, top: int) -> dict:
    """Shares of the collapsed stacks ``raw`` (py-spy's raw format, one thread per stack)."""
    total, model = 0, 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()  # self time: the innermost frame
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        n = int(count)
        frames = stack_text.split(";")
        total += n
        if _is_model(frames):
            model += n
            continue
        own[frames[-1]] += n
        for f in set(frames):
            if not f.startswith(("thread (", "process ")):
                inclusive[f] += n
    outside = total - model
    return {
        "samples": total,
        "model_thread_share": model / total if total else None,
        "outside_model_share": outside / total if total else None,
        # inclusive: frames under which most time outside the model went (the event loop's
        # own frames, in every sample, are left out: they say nothing)
        "top_outside_model": [
            {"function": f, "share": n / total}
            for f, n in inclusive.most_common()
            if n < 0.95 * outside
        ][:top],
        "top_self_outside_model": [
            {"function": f, "share": n / total} for f, n in own.most_common(top)
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose server runs")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--query-tokens", type=int, default=250)
    ap.add_argument("--distinct", type=int, default=4)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from loadtest.client import closed_loop
    from loadtest.workload import RequestPool, Workload, request_body
    from server.process import free_port

    pool = RequestPool(
        Workload(
            tokenizer=args.model,
            query_tokens=args.query_tokens,
            items=args.items,
            distinct=args.distinct,
        )
    )
    bodies = [request_body("rank", q, its) for q, its in pool.pairs]
    port = free_port()
    out = Path(f"/tmp/server-profile-{port}")
    out.mkdir(exist_ok=True)
    proc = _start(args.repo, args.model, port, out / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(closed_loop(url, bodies, 4, 1))  # warm
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "-o",
                str(out / "raw.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out / "py-spy.log").open("w"),
        )
        time.sleep(1.0)
        load = asyncio.run(closed_loop(url, bodies, args.requests, args.concurrency))
        load = load.summary(args.concurrency)
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    raw = (out / "raw.txt").read_text() if (out / "raw.txt").is_file() else ""
    result = {"repo": str(args.repo), "load": load, "raw": str(out / "raw.txt")}
    if not raw:
        print(f"py-spy wrote nothing: {(out / 'py-spy.log').read_text()[-1500:]}", file=sys.stderr)
        return 1
    result |= summarize(raw, args.top)
    print(
        f"{args.repo}: {load['items_per_s']:.1f} items/s, p50 {load['p50_ms']:.1f} ms; "
        f"{result['samples']} samples, model thread {result['model_thread_share']:.1%}"
    )
    for key, title in (("top_outside_model", "inclusive"), ("top_self_outside_model", "self")):
        print(f"outside the model, {title} (share of all samples):")
        for t in result[key]:
            print(f"  {t['share']:>6.1%}  {t['function'][:110]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Same models, same workload, four ways of serving them, side by side.

Engines (``--engines``, any subset, in this order):
- ``server-torch``: our server (``python -m server --engine torch``) over HTTP;
- ``server-vllm``: our server with the vLLM engine over HTTP;
- ``vllm-offline``: plain vLLM offline generation with prefix caching (``loadtest.offline``);
- ``transformers``: naive batched transformers, full prompts (``loadtest.offline``).

Every engine sees the same requests (one workload definition, the text built once with the
first model's tokenizer) at the same concurrency: a closed loop for the servers, groups of
``concurrency`` requests per call for the offline ones. Servers and baselines run one at a
time, each in its own process. ``--model`` may be repeated (e.g. teacher and compressed INT8
student): each row carries its model, and the table shows each model against the first.
An engine that cannot run a model (FP8 on a CPU with vLLM) gets a row with its error.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loadtest.client import closed_loop
from loadtest.offline import OFFLINE_ENGINES
from loadtest.stats import fmt, table
from loadtest.workload import RequestPool, request_body
from server.process import REPO, ServerProcess

ENGINES = ("server-torch", "server-vllm", "vllm-offline", "transformers")
BASELINE = "transformers"


def _server(model: str, engine: str, pool: RequestPool, n: int, conc: int, warmup: int, logs: Path):
    w = pool.workload
    bodies = [request_body(w.endpoint, q, items) for q, items in pool.pairs]
    key = secrets.token_urlsafe(24)  # its own server: a fresh key, sent with every request
    with ServerProcess(Path(model), engine.removeprefix("server-"), logs, api_key=key) as srv:
        if warmup:
            asyncio.run(closed_loop(srv.url, bodies, warmup, 1, w.path, key))
        return asyncio.run(closed_loop(srv.url, bodies, n, conc, w.path, key))


def _offline(
    model: str, engine: str, pool: RequestPool, n: int, conc: int, warmup: int, logs: Path
):
    with tempfile.TemporaryDirectory() as tmp:
        req, out = Path(tmp) / "requests.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(pool.pairs))
        log = logs / f"{engine}-{Path(model).name}.log"
        cmd = [sys.executable, "-m", "loadtest.offline", "--engine", engine, "--model", model]
        cmd += ["--requests-file", str(req), "--n", str(n), "--concurrency", str(conc)]
        cmd += ["--warmup", str(warmup), "--out", str(out)]
        with log.open("w") as f:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=1800)
        if rc.returncode != 0 or not out.is_file():
            tail = log.read_text()[-1500:]
            raise RuntimeError(f"{engine} exited with {rc.returncode} (log {log}):\n{tail}")
        return json.loads(out.read_text())


def compare(
    models: list[str],
    engines: list[str],
    pool: RequestPool,
    requests: int = 12,
    concurrency: int = 1,
    warmup: int = 2,
    log_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs every (model, engine) and returns ``{"workload", "results": [rows]}``."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    for m in models:
        if not Path(m).is_dir():
            raise ValueError(f"model folder not found: {m}")
    if requests < 1 or concurrency < 1 or warmup < 0:
        raise ValueError("need --requests >= 1, --concurrency >= 1, --warmup >= 0")
    logs = Path(log_dir or tempfile.mkdtemp(prefix="loadtest-compare-"))
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    combos = [(m, e) for m in models for e in engines]
    for model, engine in tqdm(combos, desc="compare", unit="run", disable=not progress):
        row: dict[str, Any] = {"model": model, "engine": engine}
        fn = _offline if engine in OFFLINE_ENGINES else _server
        try:
            row |= fn(model, engine, pool, requests, concurrency, warmup, logs)
        except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
            row |= {"items_per_s": None, "p50_ms": None, "p99_ms": None, "error": str(exc)}
            print(f"\n{engine} on {model} failed: {str(exc)[:400]}", file=sys.stderr, flush=True)
        results.append(row)
    return {
        "workload": {**pool.workload.describe(), "measured": pool.lengths},
        "requests": requests,
        "concurrency": concurrency,
        "logs": str(logs),
        "results": results,
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def format_compare(rep: dict[str, Any]) -> str:
    """Per model: every engine with items/s and p99, and both as ratios to the naive baseline;
    then, with several models, each model against the first one, engine by engine."""
    rows_ = rep["results"]
    models = list(dict.fromkeys(r["model"] for r in rows_))
    out = []
    rows = []
    for m in models:
        mine = [r for r in rows_ if r["model"] == m]
        base = next((r for r in mine if r["engine"] == BASELINE and r.get("items_per_s")), None)
        for r in mine:
            rows.append(
                [
                    Path(m).name,
                    r["engine"],
                    fmt(r["items_per_s"]),
                    fmt(r["p50_ms"]),
                    fmt(r["p99_ms"]),
                    _ratio(r["items_per_s"], base and base["items_per_s"]),
                    _ratio(base and base["p99_ms"], r["p99_ms"]),
                    "failed" if r.get("error") else "",
                ]
            )
    head = ["model", "engine", "items/s", "p50 ms", "p99 ms", "items/s vs naive", "p99 faster"]
    if any(r[-1] for r in rows):
        head.append("note")
    else:
        rows = [r[:-1] for r in rows]
    out.append(table(rows, head))
    if len(models) > 1:
        first = {r["engine"]: r for r in rows_ if r["model"] == models[0]}
        rows = []
        for m in models[1:]:
            for r in (x for x in rows_ if x["model"] == m):
                f = first.get(r["engine"], {})
                rows.append(
                    [
                        Path(m).name,
                        r["engine"],
                        _ratio(r["items_per_s"], f.get("items_per_s")),
                        _ratio(f.get("p99_ms"), r["p99_ms"]),
                    ]
                )
        out.append(f"\nagainst {Path(models[0]).name}:")
        out.append(table(rows, ["model", "engine", "items/s ratio", "p99 faster"]))
    return "\n".join(out)

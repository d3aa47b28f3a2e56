"""Same models, same workload, four ways of serving them, side by side.

Engines (``--engines``, any subset, in this order):
- ``server-torch``: our server (``python -m server --engine torch``) over HTTP;
- ``server-vllm``: our server with the vLLM engine over HTTP;
- ``vllm-serve``: the peer, vLLM's own OpenAI-compatible server and its
  ``/generative_scoring`` route, tuned flags listed in the output (``loadtest.peer``);
- ``torch-inprocess``: our torch engine called in-process, no HTTP (``loadtest.offline``): the
  notes give ``server-torch`` against it, the cost of the server path;
- ``vllm-offline``: plain vLLM offline generation with prefix caching (``loadtest.offline``);
- ``transformers``: naive batched transformers, full prompts (``loadtest.offline``).

Every engine sees the same requests (one workload definition, the text built once with the
first model's tokenizer) at the same concurrency: a closed loop for the servers, groups of
``concurrency`` requests per call for the offline ones. Each engine runs in its own process.
The host's speed drifts (minute to minute, 2x on a shared machine), so ``server-torch`` and
``torch-inprocess`` of every model are started together and measured in turns, ``--rounds``
rounds of a few requests each: their ratios (a student against the teacher through the
server, the server against the engine in-process) come from one stretch of time. The vLLM
rows, each with an engine-core process and a KV cache, are measured one at a time, model by
model; then that model's servers, all still up, are swept in turns (every server's first rate,
then every server's second, ...), so the peer and ours meet the same stretch of drift too.

``--model`` may be repeated (e.g. teacher and compressed INT8 student): each row carries its
model, and the table shows each model against the first. An engine that cannot run a model
(FP8 on a CPU with vLLM) gets a row with its error.

Each row also carries its useful GFLOP/s against the matrix-product peak (in the machine's
compute dtype, ``ranking.precision``, whose facts the table prints) at the model's shapes
(``loadtest.usefulwork``); each server row its scores' largest difference from our first
server row and, unless ``--no-sweep``, a short open-loop sweep: the highest rate that
holds p99 <= SLO.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from loadtest import promscrape
from loadtest.client import RunConfig, closed_loop
from loadtest.offline import OFFLINE_ENGINES, TURN_PREFIX
from loadtest.peer import (
    PEER_ENGINE,
    PEER_PATH,
    BodyPool,
    PeerServer,
    peer_env,
    peer_flags,
    response_scores,
    scoring_bodies,
)
from loadtest.stats import Timings, fmt, table
from loadtest.sweep import SweepSteps
from loadtest.usefulwork import useful_work
from loadtest.workload import RequestPool, request_body
from ranking.precision import machine
from server.engines.choice import machine_class
from server.process import REPO, ServerProcess

ENGINES = (
    "server-torch",
    "server-vllm",
    PEER_ENGINE,
    "torch-inprocess",
    "vllm-offline",
    "transformers",
)
BASELINE = "transformers"
OURS = ("server-torch", "server-vllm")
# Light processes: all of them (every model) are started together and measured in turns, round
# after round, so the host's drift falls on every row alike and their ratios (student against
# teacher, server against in-process) come from one stretch of time. The vLLM rows each hold
# an engine-core process and a KV cache: measured one at a time.
IN_TURNS = ("server-torch", "torch-inprocess")


@dataclass(frozen=True)
class SweepSpec:
    """A short open-loop sweep per server row: rates are ``factors`` times the row's own
    concurrency-1 request rate, ``duration_s`` each; the answer is the highest rate whose p99
    (failures counted as misses) holds ``slo_ms``."""

    slo_ms: float = 500.0
    factors: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    duration_s: float = 10.0


def _scores(
    url: str, path: str, bodies: list[dict], api_key: str | None = None
) -> list[list[float]]:
    """Each distinct body once, its scores in item order (the parity check across engines)."""
    headers = promscrape.auth_headers(api_key)
    with httpx.Client(base_url=url, timeout=300, headers=headers) as c:
        out = []
        for b in bodies:
            r = c.post(path, json=b)
            r.raise_for_status()
            out.append(response_scores(r.json()))
    return out


def _sweep_steps(h: _Served, rate_1: float, spec: SweepSpec) -> SweepSteps:
    """A server's sweep: ``spec.factors`` times its own concurrency-c request rate."""
    base = RunConfig(
        url=h.srv.url,
        rate=rate_1,
        duration_s=spec.duration_s,
        slo_ms=spec.slo_ms,
        timeout_s=max(10.0, spec.slo_ms / 1000 * 10),
        grace_s=max(5.0, spec.slo_ms / 1000 * 4),
        path=h.path,
        progress=False,
        scrape_metrics=h.ours,
        api_key=h.key,
    )
    rates = sorted({round(rate_1 * f, 3) for f in spec.factors if rate_1 * f > 0})
    return SweepSteps(base, h.pool, rates, verbose=False)


def _sweep_row(steps: SweepSteps) -> dict:
    rep = steps.report()
    passing = [p for p in rep["points"] if p["slo"]["meets_slo"]]
    return {
        "slo_ms": rep["slo_ms"],
        "rates": rep["rates"],
        "max_rate_meeting_slo": rep["max_rate_meeting_slo"],
        "items_per_s_meeting_slo": max((p["items_per_s"] for p in passing), default=None),
        "points": [
            {
                "offered_rate": p["offered_rate"],
                "items_per_s": p["items_per_s"],
                "p99_ms": p["latency_ms"]["p99"],
                "goodput": p["slo"]["goodput"],
                "refused_share": _refused(p),
            }
            for p in rep["points"]
        ],
        "stopped_early": rep["stopped_early"],
    }


def _sweeps(served: dict[str, _Served], rows: dict[str, dict], spec: SweepSpec) -> None:
    """The sweeps of one model's servers, all alive, in turns: every server's first rate, then
    every server's second, ... (``turn_order``), so the peer and ours meet the same stretch of
    the host's drift. Each row gets its ``sweep``."""
    steps = {}
    for e, h in served.items():
        rate_1 = rows[e]["items_per_s"] / h.pool.workload.items  # requests/s at concurrency c
        if rate_1 > 0:
            steps[e] = _sweep_steps(h, rate_1, spec)
    r = 0
    while any(not st.done for st in steps.values()):
        for e in turn_order([e for e, st in steps.items() if not st.done], r):
            try:
                steps[e].step()
            except Exception as exc:  # noqa: BLE001 - a server that died ends its own sweep
                steps[e].stopped_early = f"failed: {exc}"
            time.sleep(0.5)  # let the server drain before the next run
        r += 1
    for e, st in steps.items():
        rows[e]["sweep"] = _sweep_row(st)


def _refused(point: dict) -> float:
    """Share of a sweep point's requests refused with 429 (admission control)."""
    refused = sum(n for kind, n in point["errors"].items() if kind.startswith("http_429"))
    return refused / max(1, point["requests"]["scheduled"])


@dataclass
class _Served:
    """One running server of a compare run: where to send, what (its bodies: the peer gets our
    token ids), how it is swept (its request pool), whether it has our /metrics, its key."""

    srv: ServerProcess
    path: str
    bodies: list[dict]
    pool: Any
    ours: bool  # our server: /metrics scraped in sweeps, its kernel read from /v1/models
    key: str | None = None
    flags: list[str] = field(default_factory=list)  # the peer's tuned flags

    def turn(self, start: int, n: int, conc: int) -> Timings:
        t = closed_loop(self.srv.url, self.bodies, n, conc, self.path, self.key, start)
        return asyncio.run(t)

    def measure(self, n: int, conc: int, warmup: int) -> dict:
        if warmup:
            self.turn(0, warmup, 1)
        return self.turn(0, n, conc).summary(conc)

    def scores(self) -> list[list[float]]:
        return _scores(self.srv.url, self.path, self.bodies, self.key)

    def kernel(self) -> str:
        h = promscrape.auth_headers(self.key)
        card = httpx.get(f"{self.srv.url}/v1/models", headers=h).json()
        return card["data"][0].get("kernel", "")


def _start_ours(model: str, engine: str, pool: RequestPool, logs: Path, stack) -> _Served:
    key = secrets.token_urlsafe(24)  # its own server: a fresh key, sent with every request
    env = {"SLIMRANK_API_KEYS": key}
    srv = stack.enter_context(ServerProcess(Path(model), engine.removeprefix("server-"), logs, env))
    w = pool.workload
    bodies = [request_body(w.endpoint, q, items) for q, items in pool.pairs]
    return _Served(srv, w.path, bodies, pool, True, key)


def _start_peer(model: str, pool: RequestPool, conc: int, logs: Path, stack) -> _Served:
    from server.engines import check_supported

    check_supported(model, "vllm")  # INT4 on AVX2, FP8 on a CPU: an error row, not a hang
    bodies = scoring_bodies(model, pool.pairs)
    longest_q = max(len(b["query"]) for b in bodies)
    longest_i = max(len(x) for b in bodies for x in b["items"])
    flags = peer_flags(longest_q, longest_i, pool.workload.items, conc, _has_cuda())
    env = peer_env()
    srv = stack.enter_context(PeerServer(Path(model), flags, env, logs))
    flags = [f"{k}={v}" for k, v in env.items()] + flags
    return _Served(srv, PEER_PATH, bodies, BodyPool(pool, bodies), False, flags=flags)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _offline_cmd(
    model: str, engine: str, pool: RequestPool, warmup: int, tmp: Path, logs: Path
) -> tuple[list[str], Path]:
    """``python -m loadtest.offline`` for ``engine`` on the compare requests (written to
    ``tmp``), and its log's path."""
    req = tmp / "requests.json"
    req.write_text(json.dumps(pool.pairs))
    cmd = [sys.executable, "-m", "loadtest.offline", "--engine", engine, "--model", model]
    cmd += ["--requests-file", str(req), "--warmup", str(warmup)]
    return cmd, logs / f"{engine}-{Path(model).name}.log"


def _offline(
    model: str, engine: str, pool: RequestPool, n: int, conc: int, warmup: int, logs: Path
):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd, log = _offline_cmd(model, engine, pool, warmup, Path(tmp), logs)
        cmd += ["--n", str(n), "--concurrency", str(conc), "--out", str(out)]
        with log.open("w") as f:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=1800)
        if rc.returncode != 0 or not out.is_file():
            tail = log.read_text()[-1500:]
            raise RuntimeError(f"{engine} exited with {rc.returncode} (log {log}):\n{tail}")
        return json.loads(out.read_text())


class _InprocessTurns:
    """``python -m loadtest.offline --serve``: the torch engine in its own process, measured in
    turns over stdin / stdout (``loadtest.offline.serve_turns``)."""

    def __init__(self, model: str, pool: RequestPool, warmup: int, logs: Path):
        self.dir = tempfile.TemporaryDirectory()
        engine, tmp = "torch-inprocess", Path(self.dir.name)
        self.cmd, self.log = _offline_cmd(model, engine, pool, warmup, tmp, logs)
        self.cmd += ["--serve"]
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self._err = self.log.open("w")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._err,
        )  # fmt: skip
        try:
            self._answer()  # loaded and warmed
        except BaseException:
            self.__exit__()
            raise
        return self

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(TURN_PREFIX):
                return json.loads(line[len(TURN_PREFIX) :])
        self.proc.wait()
        tail = self.log.read_text()[-1500:]
        raise RuntimeError(
            f"torch-inprocess exited with {self.proc.returncode} (log {self.log}):\n{tail}"
        )

    def turn(self, start: int, n: int, conc: int) -> Timings:
        self.proc.stdin.write(json.dumps({"start": start, "n": n, "concurrency": conc}) + "\n")
        self.proc.stdin.flush()
        return Timings(**self._answer())

    def __exit__(self, *exc):
        if self.proc is not None:
            with contextlib.suppress(BrokenPipeError):  # a worker that died has no stdin
                self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        self.dir.cleanup()


def turn_sizes(requests: int, rounds: int) -> list[int]:
    """``requests`` split over at most ``rounds`` rounds, as evenly as they go."""
    k = max(1, min(rounds, requests))
    return [requests // k + (1 if r < requests % k else 0) for r in range(k)]


def turn_order(keys: list, round_: int) -> list:
    """Round ``round_``'s order: the list rotated by one each round, so no row always follows
    the same one (a heavy model leaves the caches cold for whoever comes next)."""
    if not keys:
        return []
    r = round_ % len(keys)
    return keys[r:] + keys[:r]


def _in_turns(models, engines, pool, n, conc, warmup, rounds, logs, progress, servers) -> tuple:
    """The ``IN_TURNS`` rows of every model, all processes alive at once, measured round after
    round (``turn_sizes``, ``turn_order``). Returns ``({(model, engine): row}, {(model,
    engine): _Served})``: the servers stay up (on the ``servers`` exit stack) for their model's
    checks and sweeps; the in-process workers end here. A row whose process failed carries its
    error."""
    keys = [(m, e) for m in models for e in engines if e in IN_TURNS]
    rows: dict[tuple[str, str], dict] = {}
    served: dict[tuple[str, str], _Served] = {}
    live: dict[tuple[str, str], Any] = {}
    with contextlib.ExitStack() as workers:
        for m, e in tqdm(keys, desc="start", unit="process", disable=not progress):
            try:
                if e == "torch-inprocess":
                    live[(m, e)] = workers.enter_context(_InprocessTurns(m, pool, warmup, logs))
                else:
                    h = _start_ours(m, e, pool, logs, servers)
                    if warmup:
                        h.turn(0, warmup, 1)
                    live[(m, e)] = served[(m, e)] = h
            except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
                rows[(m, e)] = _failed(m, e, exc)
        sizes = turn_sizes(n, rounds)
        acc = {k: Timings() for k in live}
        start = 0
        bar = tqdm(total=len(sizes) * len(live), desc="turns", unit="turn", disable=not progress)
        for r, size in enumerate(sizes):
            for k in turn_order([k for k in live if k not in rows], r):
                try:
                    acc[k].add(live[k].turn(start, size, conc))
                except Exception as exc:  # noqa: BLE001
                    rows[k] = _failed(*k, exc)
                bar.update()
            start += size
        bar.close()
    for k in live:
        if k not in rows:
            rows[k] = {"model": k[0], "engine": k[1], **acc[k].summary(conc)}
            rows[k]["rounds"] = len(sizes)
    return rows, {k: h for k, h in served.items() if "error" not in rows[k]}


def _server_checks(model: str, here: dict[str, _Served], done: dict, spec) -> None:
    """One model's servers, all up: each one's scores on the distinct requests (and our
    kernel), then their sweeps in turns (``_sweeps``)."""
    ok = {}
    for e, h in here.items():
        try:
            done[(model, e)]["_scores"] = h.scores()
            if h.ours:
                done[(model, e)]["kernel"] = h.kernel()
            ok[e] = h
        except Exception as exc:  # noqa: BLE001
            done[(model, e)] = _failed(model, e, exc)
    if spec is not None:
        _sweeps(ok, {e: done[(model, e)] for e in ok}, spec)


def _failed(model: str, engine: str, exc: Exception) -> dict:
    # whole: a server's or a run's error already carries just its log's tail
    print(f"\n{engine} on {model} failed: {exc}", file=sys.stderr, flush=True)
    return {"model": model, "engine": engine, "items_per_s": None, "p50_ms": None,
            "p99_ms": None, "error": str(exc)}  # fmt: skip


def compare(
    models: list[str],
    engines: list[str],
    pool: RequestPool,
    requests: int = 12,
    concurrency: int = 1,
    warmup: int = 2,
    log_dir: str | Path | None = None,
    progress: bool = True,
    sweep_spec: SweepSpec | None = None,
    rounds: int = 4,
) -> dict[str, Any]:
    """Runs every (model, engine) and returns ``{"workload", "results": [rows], "peak"}``.

    The ``IN_TURNS`` rows of all models are measured first, together, in ``rounds`` rounds of
    turns. Then model by model, its other rows one at a time; its servers (ours and the peer)
    stay up, get their scores on the distinct requests (compared with the first of our server
    rows of the same model: ``max_abs_score_diff``) and, with a ``sweep_spec``, are swept in
    turns for the highest rate that holds the SLO. Every row gets its useful GFLOP/s next to
    the matrix-product peak at the model's shapes (``peak``)."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    for m in models:
        if not Path(m).is_dir():
            raise ValueError(f"model folder not found: {m}")
    if requests < 1 or concurrency < 1 or warmup < 0 or rounds < 1:
        raise ValueError("need --requests >= 1, --concurrency >= 1, --warmup >= 0, --rounds >= 1")
    logs = Path(log_dir or tempfile.mkdtemp(prefix="loadtest-compare-"))
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as light:
        done, served = _in_turns(
            models, engines, pool, requests, concurrency, warmup, rounds, logs, progress, light
        )
        alone = [(m, e) for m in models for e in engines if (m, e) not in done]
        bar = tqdm(total=len(alone), desc="compare", unit="run", disable=not progress)
        for model in models:
            with contextlib.ExitStack() as mine:
                here = {e: h for (m, e), h in served.items() if m == model}
                for engine in (e for m, e in alone if m == model):
                    row: dict[str, Any] = {"model": model, "engine": engine}
                    try:
                        if engine in OFFLINE_ENGINES:
                            row |= _offline(
                                model, engine, pool, requests, concurrency, warmup, logs
                            )
                        else:
                            if engine == PEER_ENGINE:
                                h = _start_peer(model, pool, concurrency, logs, mine)
                            else:
                                h = _start_ours(model, engine, pool, logs, mine)
                            row |= h.measure(requests, concurrency, warmup)
                            if h.flags:
                                row["flags"] = h.flags
                            here[engine] = h
                    except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
                        row = _failed(model, engine, exc)
                    done[(model, engine)] = row
                    bar.update()
                _server_checks(model, here, done, sweep_spec)
                for h in here.values():  # done with this model: the machine quiet for the next
                    h.srv.stop()
        bar.close()
    results = [done[(m, e)] for m in models for e in engines]
    _score_diffs(results)
    work = {m: useful_work(m, pool.pairs) for m in models}
    for r in results:
        per_item = work[r["model"]]["flops_per_item"]
        r["useful_gflops"] = r["items_per_s"] * per_item / 1e9 if r.get("items_per_s") else None
    return {
        "workload": {**pool.workload.describe(), "measured": pool.lengths},
        "requests": requests,
        "concurrency": concurrency,
        "rounds": len(turn_sizes(requests, rounds)),
        "in_turns": [e for e in engines if e in IN_TURNS],
        "logs": str(logs),
        "useful_work": work,
        "machine": machine(),
        "machine_class": machine_class(),
        "date": datetime.date.today().isoformat(),
        "results": results,
    }


def _score_diffs(results: list[dict]) -> None:
    """``max_abs_score_diff`` of every scored row against the first of our server rows (same
    model, same requests); the scores themselves are dropped from the rows."""
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model and "_scores" in r]
        ref = next((r for r in mine if r["engine"] in OURS), None)
        for r in mine:
            if ref is not None and r is not ref:
                diff = max(
                    abs(a - b)
                    for xs, ys in zip(r["_scores"], ref["_scores"], strict=True)
                    for a, b in zip(xs, ys, strict=True)
                )
                r["max_abs_score_diff"] = diff
                r["score_diff_vs"] = ref["engine"]
    for r in results:
        r.pop("_scores", None)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _sustained(r: dict) -> tuple[float | None, float | None]:
    sw = r.get("sweep") or {}
    return sw.get("max_rate_meeting_slo"), sw.get("items_per_s_meeting_slo")


def format_compare(rep: dict[str, Any]) -> str:
    """Per model: every engine with items/s, p99, useful GFLOP/s (share of the matmul peak),
    the highest rate under the SLO and the score difference; then our best against the peer,
    the peer's flags, and, with several models, each model against the first one."""
    rows_ = rep["results"]
    models = list(dict.fromkeys(r["model"] for r in rows_))
    work = rep.get("useful_work", {})
    out = []
    rows = []
    for m in models:
        mine = [r for r in rows_ if r["model"] == m]
        base = next((r for r in mine if r["engine"] == BASELINE and r.get("items_per_s")), None)
        peak = work.get(m, {}).get("peak_gflops")
        for r in mine:
            rate, items_slo = _sustained(r)
            g = r.get("useful_gflops")
            diff = r.get("max_abs_score_diff")
            rows.append(
                [
                    Path(m).name,
                    r["engine"],
                    fmt(r["items_per_s"]),
                    fmt(r["p50_ms"]),
                    fmt(r["p99_ms"]),
                    _ratio(r["items_per_s"], base and base["items_per_s"]),
                    fmt(g),
                    f"{g / peak:.0%}" if g and peak else "-",
                    "-" if "sweep" not in r else (fmt(rate, 2) if rate else "none"),
                    fmt(items_slo),
                    f"{diff:.1e}" if diff is not None else "-",
                    "failed" if r.get("error") else "",
                ]
            )
    head = [
        "model",
        "engine",
        "items/s",
        "p50 ms",
        "p99 ms",
        "vs naive",
        "GFLOP/s",
        "of peak",
        "req/s @SLO",
        "items/s @SLO",
        "|d score|",
    ]
    if any(r[-1] for r in rows):
        head.append("note")
    else:
        rows = [r[:-1] for r in rows]
    out.append(table(rows, head))
    slo = next((r["sweep"]["slo_ms"] for r in rows_ if r.get("sweep")), None)
    notes = [f"concurrency {rep['concurrency']}, {rep['requests']} requests per row"]
    if rep.get("in_turns"):
        notes.append(
            f"{', '.join(rep['in_turns'])} of every model: measured together, in turns over "
            f"{rep['rounds']} rounds; the other rows one at a time"
        )
    if slo is not None:
        notes.append(f"@SLO: highest offered rate of a short sweep holding p99 <= {slo:g} ms")
    for m in models:
        w = work.get(m)
        if w:
            notes.append(
                f"{Path(m).name}: {w['gflop_per_request']:.2f} GFLOP per request with the "
                f"query once; matmul peak {w['peak_gflops']:.0f} GFLOP/s at "
                f"{'x'.join(map(str, w['peak_shape']))} ({w['threads']} threads)"
            )
        out_peer = _against_peer([r for r in rows_ if r["model"] == m])
        if out_peer:
            notes.append(f"{Path(m).name}: {out_peer}")
        by = {r["engine"]: r for r in rows_ if r["model"] == m and r.get("items_per_s")}
        if "server-torch" in by and "torch-inprocess" in by:
            gap = 1 - by["server-torch"]["items_per_s"] / by["torch-inprocess"]["items_per_s"]
            notes.append(
                f"{Path(m).name}: the server path (HTTP, JSON, tokenization, scheduling) costs "
                f"{gap:.1%} of the in-process torch engine's items/s"
            )
    if rep.get("machine"):
        hw = rep["machine"]
        notes.append(
            f"machine: {hw['cpu']}, {hw['cores']} cores, flags {' '.join(hw['flags']) or '-'}, "
            f"torch {hw['torch_cpu_capability']}, compute dtype {hw['compute_dtype']}, "
            f"allocator {hw.get('allocator', '-')}"
        )
    flags = next((r["flags"] for r in rows_ if r.get("flags")), None)
    if flags:
        notes.append(f"{PEER_ENGINE} flags: {' '.join(flags)}")
    out.append("\n".join(notes))
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


def _against_peer(rows: list[dict]) -> str | None:
    """ "our best (engine) vs vllm-serve: A x items/s at concurrency c, B x items/s under SLO"."""
    peer = next((r for r in rows if r["engine"] == PEER_ENGINE and r.get("items_per_s")), None)
    ours = [r for r in rows if r["engine"] in OURS and r.get("items_per_s")]
    if peer is None or not ours:
        return None
    best = max(ours, key=lambda r: r["items_per_s"])
    text = (
        f"our best ({best['engine']}) vs {PEER_ENGINE}: "
        f"{_ratio(best['items_per_s'], peer['items_per_s'])} items/s"
    )
    best_slo = max(ours, key=lambda r: _sustained(r)[1] or 0)
    a, b = _sustained(best_slo)[1], _sustained(peer)[1]
    if "sweep" in peer:
        text += f"; under the SLO ({best_slo['engine']}) {_ratio(a, b)}"
        if a and not b:
            text += " (the peer held the SLO at none of its rates)"
    return text

"""What every chaos scenario shares: its config, its report (checks and tallies), the request
tally, a fresh server with a per-run key, and the unloaded-latency and capacity probes."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from loadtest.client import Outcome, RunConfig
from loadtest.stats import fmt, percentiles, table
from loadtest.workload import DEFAULT_MODEL, RequestPool, Workload
from server.process import ServerProcess

CONNECTION_ERRORS = ("connect_error", "transport_error")
# the scenarios' servers accept one key, made per run; every client here sends it
RUN_KEY = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {RUN_KEY}"}
REQUEST_TIMEOUT_S = 30.0  # the server's default request deadline: nothing may take longer
DEFAULT_STUDENT = "artifacts/demo/compressed/int8"
LADDER_STEPS = 16  # capacity sweep: start, x1.5, x1.5^2, ... (start from the unloaded latency)


T = TypeVar("T")


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run's settings; ``short`` shrinks every phase to a test-sized form."""

    model: str = DEFAULT_MODEL
    student: str = DEFAULT_STUDENT  # the version a rollout (``swap``) moves to
    engine: str = "torch"
    short: bool = False  # the test-sized form: seconds, not minutes
    slo_ms: float = 500.0
    seed: int = 0
    log_dir: str | None = None
    items: int = 50  # items per request (the load tester's default workload)
    source: str = "synthetic"  # the workload's requests: synthetic, or demo rows of ``data``
    data: str = "artifacts/demo/data"
    distinct: int = 8  # distinct request bodies, cycled
    shift_topic: str = "finance"  # drift: every candidate of this topic in the shifted phase
    progress: bool = True

    def pick(self, full: T, short: T) -> T:
        return short if self.short else full


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    scenario: str
    config: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    tallies: dict[str, dict] = field(default_factory=dict)  # phase -> tally(...)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        failed = [c for c in self.checks if not c.ok]
        return {
            "scenario": self.scenario,
            "passed": self.passed,
            "reason": "; ".join(f"{c.name}: {c.detail}" for c in failed)
            if failed
            else "every check passed",
            "checks": [asdict(c) for c in self.checks],
            "requests": self.tallies,
            "config": self.config,
            "seconds": round(self.seconds, 1),
            **self.extra,
        }


# ---- counting -------------------------------------------------------------------------------------


def tally(outcomes: list[Outcome]) -> dict[str, Any]:
    """Requests sent, by status, 5xx, connection errors, lost, admitted p50/p99 (ms)."""
    sent = [o for o in outcomes if o.sent_s is not None]
    by_status = Counter(str(o.status) for o in sent if o.status is not None)
    conn = [o for o in sent if o.error and o.error.split(":")[0] in CONNECTION_ERRORS]
    lost = [o for o in sent if o.status is None and o not in conn]
    admitted = percentiles([o.latency_s * 1000 for o in sent if o.status == 200], (50, 99))
    return {
        "sent": len(sent),
        "not_sent": len(outcomes) - len(sent),
        "by_status": dict(sorted(by_status.items())),
        "5xx": sum(v for k, v in by_status.items() if k.startswith("5")),
        "connection_errors": len(conn),
        "lost": len(lost),
        "admitted_p50_ms": admitted["p50"],
        "admitted_p99_ms": admitted["p99"],
    }


# the server's per-request timing headers (ms), as TEI names them
TIMING_HEADERS = ("x-queue-time", "x-inference-time", "x-total-time")


def latency_parts(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """Where admitted requests' time went, from the timing headers kept on each outcome (ms,
    p50 / p99 / max of each part): ``queue`` (waiting for a batch), ``inference`` (the batch
    on the engine), ``server_other`` (in the server outside both: reading, parsing,
    tokenizing, the event loop, the response) and ``outside_server`` (the client's side: the
    load generator's event loop and the connection). Requests missing a header are skipped."""
    parts: dict[str, list[float]] = {
        "latency": [],
        "queue": [],
        "inference": [],
        "server_other": [],
        "outside_server": [],
    }
    for o in outcomes:
        h = o.headers or {}
        if o.status != 200 or o.latency_s is None or not all(k in h for k in TIMING_HEADERS):
            continue
        queue, inference, total = (float(h[k]) for k in TIMING_HEADERS)
        latency = o.latency_s * 1000
        parts["latency"].append(latency)
        parts["queue"].append(queue)
        parts["inference"].append(inference)
        parts["server_other"].append(total - queue - inference)
        parts["outside_server"].append(latency - total)
    return {k: percentiles(v, (50, 99)) for k, v in parts.items()}


# ---- the server -----------------------------------------------------------------------------------


@contextmanager
def server(cfg: ChaosConfig, env: dict[str, str] | None = None, **settings) -> Iterator:
    """A fresh server for one scenario, with ``env`` added to its environment. Stopped (SIGTERM,
    then SIGKILL) on exit whatever happened."""
    log_dir = Path(cfg.log_dir) if cfg.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    env = {"SLIMRANK_API_KEYS": RUN_KEY, **(env or {})}  # every scenario runs with keys on
    srv = ServerProcess(Path(cfg.model), cfg.engine, log_dir, env, **settings)
    try:
        srv.start(timeout=600)
    except BaseException:
        srv.stop()
        raise
    try:
        yield srv
    finally:
        srv.stop(timeout=REQUEST_TIMEOUT_S + 30)


ROLLOUT_MODEL = "ranker"  # the model name of the rollout scenarios' versions


def write_models_file(path: Path, cfg: ChaosConfig, versions: dict[str, str]) -> Path:
    """A models file with ``versions`` (version -> checkpoint) of ``ROLLOUT_MODEL`` on the
    scenario's engine, the first labelled ``stable``."""
    import yaml

    entries = [
        {"name": ROLLOUT_MODEL, "version": v, "path": p, "engine": cfg.engine}
        for v, p in versions.items()
    ]
    first = next(iter(versions))
    path.write_text(
        yaml.safe_dump({"models": entries, "labels": {ROLLOUT_MODEL: {"stable": first}}})
    )
    return path


def request_pool(cfg: ChaosConfig) -> RequestPool:
    return RequestPool(
        Workload(
            tokenizer=cfg.model,
            items=cfg.items,
            seed=cfg.seed,
            source=cfg.source,
            data=cfg.data,
            distinct=cfg.distinct,
        )
    )


def run_config(cfg: ChaosConfig, url: str, rate: float, duration: float, **kw) -> RunConfig:
    base = dict(
        url=url,
        rate=rate,
        duration_s=duration,
        slo_ms=cfg.slo_ms,
        max_requests=int(rate * duration * 1.5) + 10,
        max_in_flight=1024,
        timeout_s=REQUEST_TIMEOUT_S + 5,
        seed=cfg.seed,
        progress=False,
        scrape_metrics=False,
        api_key=RUN_KEY,
    )
    return RunConfig(**{**base, **kw})


def unloaded_latency(url: str, pool: RequestPool, n: int) -> dict[str, float]:
    """p50/p99 (ms) of ``n`` requests sent one at a time: the latency floor."""
    lat = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, headers=AUTH) as c:
        for req in pool.sequence(n):
            t = time.perf_counter()
            r = c.post(
                pool.workload.path, content=req.body, headers={"content-type": "application/json"}
            )
            if r.status_code == 200:
                lat.append((time.perf_counter() - t) * 1000)
    return percentiles(lat, (50, 99))


def measure_capacity(
    cfg: ChaosConfig, url: str, pool: RequestPool, unloaded: dict[str, float]
) -> dict[str, Any]:
    """The highest rate meeting the SLO, from a short sweep (``loadtest.sweep.sweep``): rates
    rising by 1.5x from half what one request at a time would reach (``unloaded`` p50), a short
    constant-rate run each (at least 3 requests), stopping at the first miss. When not even
    the first rate meets the SLO (a machine too slow for it), the highest throughput seen."""
    from loadtest.sweep import sweep

    p50 = unloaded["p50"] if not math.isnan(unloaded["p50"]) else 1000.0
    start = max(0.05, 0.5 * 1000.0 / p50)
    ladder = [start * 1.5**k for k in range(LADDER_STEPS)]
    step = max(cfg.pick(4.0, 1.5), 3 / start)
    base = run_config(cfg, url, start, step, timeout_s=10.0, arrivals="constant")
    rep = sweep(base, pool, ladder, broken_goodput=1.0, patience=1, settle_s=0.5, verbose=False)
    best = rep["max_rate_meeting_slo"]
    throughput = max(p["throughput_rps"] for p in rep["points"])
    return {
        "capacity_rps": best if best is not None else max(throughput, start / 2),
        "slo_met_at_first_rate": best is not None,
        "sweep": [
            {
                "rate": p["offered_rate"],
                "throughput_rps": p["throughput_rps"],
                "p99_ms": p["latency_ms"]["p99"],
                "goodput": p["slo"]["goodput"],
            }
            for p in rep["points"]
        ],
    }


def say(cfg: ChaosConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[chaos] {msg}", flush=True)


# ---- the table -------------------------------------------------------------------------------------


def format_chaos(rep: dict[str, Any]) -> str:
    """The terminal table of one scenario: the counts per phase, then each check."""
    phases = list(rep["requests"])
    keys = [
        "sent",
        "by_status",
        "5xx",
        "connection_errors",
        "lost",
        "admitted_p50_ms",
        "admitted_p99_ms",
    ]
    rows = []
    for k in keys:
        vals = [rep["requests"][p][k] for p in phases]
        rows.append(
            [k.replace("_", " "), *(json.dumps(v) if isinstance(v, dict) else fmt(v) for v in vals)]
        )
    out = [f"== chaos: {rep['scenario']} ({rep['seconds']:.0f} s) ==", table(rows, ["", *phases])]
    width = max(len(c["name"]) for c in rep["checks"]) if rep["checks"] else 0
    out.append(
        "\n".join(
            f"{'ok' if c['ok'] else 'FAIL':<4}  {c['name']:<{width}}  {c['detail'][:160]}"
            for c in rep["checks"]
        )
    )
    out.append(("PASS" if rep["passed"] else "FAIL") + f": {rep['reason']}")
    return "\n\n".join(out)

"""``engine-fault``: the server's test-only fault switch (``SLIMRANK_FAULT_BATCHES=N``: the N-th
engine batch after ready raises) fails one batch: only its request gets a 5xx of type
``engine_error``, every later one succeeds. With ``--engine vllm`` the engine-core process is
also killed: ``/health`` and ``/ready`` must go unhealthy, and in-flight and new requests get a
503 at once instead of hanging.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import httpx

from loadtest.chaos.harness import AUTH, REQUEST_TIMEOUT_S, ChaosConfig, Report, server, tally
from loadtest.client import Outcome
from loadtest.hostile import ITEMS, QUERY


def _error_type(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def _engine_core(proc) -> Any | None:
    """vLLM's engine-core child process (a psutil.Process), if the server has one."""
    import psutil

    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            name = " ".join([child.name(), *child.cmdline()])
            if "EngineCore" in name or "engine_core" in name:
                return child
    except psutil.Error:
        return None
    return None


def _post(c: httpx.Client, body: dict) -> tuple[int | None, str | None, float]:
    t = time.perf_counter()
    try:
        r = c.post("/v1/rank", json=body)
        return r.status_code, _error_type(r.content), time.perf_counter() - t
    except httpx.HTTPError as exc:
        return None, type(exc).__name__, time.perf_counter() - t


def engine_fault(cfg: ChaosConfig) -> Report:
    rep = Report("engine-fault", asdict(cfg))
    fault_at = 3  # the third batch after ready
    n = cfg.pick(40, 12)
    body = {"query": QUERY, "items": ITEMS}
    rows = []
    # admission lifted: the engine-core kill below must find all its requests in flight
    env = {"SLIMRANK_FAULT_BATCHES": str(fault_at), "SLIMRANK_MAX_EXPECTED_LATENCY_MS": "60000"}
    with server(cfg, env) as srv:
        with httpx.Client(base_url=srv.url, timeout=REQUEST_TIMEOUT_S + 5, headers=AUTH) as c:
            for i in range(n):  # one at a time: each request is its own batch
                status, kind, dt = _post(c, body)
                rows.append({"i": i, "status": status, "type": kind, "ms": round(dt * 1000, 1)})
            health = c.get("/health").status_code
            ready = c.get("/ready").status_code
        if cfg.engine == "vllm":
            rep.extra["engine_death"] = _kill_engine_core(srv, body)
    outcomes = [
        Outcome(
            0.0,
            len(ITEMS),
            sent_s=0.0,
            done_s=r["ms"] / 1000 if r["status"] else None,
            status=r["status"],
            error=None if r["status"] == 200 else f"http_{r['status']}:{r['type']}",
        )
        for r in rows
    ]
    rep.tallies["requests"] = t = tally(outcomes)
    failed = [r for r in rows if r["status"] != 200]
    rep.extra["failed_requests"] = failed
    expected = [r for r in failed if r["i"] == fault_at - 1]
    rep.check(
        "the faulty batch fails with engine_error",
        len(expected) == 1
        and expected[0]["status"] >= 500
        and expected[0]["type"] == "engine_error",
        f"request #{fault_at} got {rows[fault_at - 1]['status']} {rows[fault_at - 1]['type']}",
    )
    others = [r for r in failed if r["i"] != fault_at - 1]
    rep.check(
        "every other request succeeds", not others, f"{len(others)} other failures: {others[:3]}"
    )
    rep.check("no connection errors", t["connection_errors"] == 0, f"{t['connection_errors']}")
    rep.check(
        "healthy after the fault",
        health == 200 and ready == 200,
        f"/health {health}, /ready {ready}",
    )
    death = rep.extra.get("engine_death")
    if death is not None:
        rep.check("engine-core death: unhealthy and 503 at once", death["ok"], death["detail"])
    return rep


def _kill_engine_core(srv, body: dict) -> dict[str, Any]:
    """Kills vLLM's engine-core process under in-flight load; /health, /ready and requests must
    turn 503 within 5 s instead of hanging until the request deadline."""
    from concurrent.futures import ThreadPoolExecutor

    core = _engine_core(srv.proc)
    if core is None:
        return {"ok": False, "detail": "no engine-core child process found"}
    with (
        httpx.Client(base_url=srv.url, timeout=REQUEST_TIMEOUT_S + 5, headers=AUTH) as c,
        ThreadPoolExecutor(8) as ex,
    ):
        inflight = [ex.submit(_post, c, {**body, "items": ITEMS * 50}) for _ in range(8)]
        time.sleep(0.2)
        core.kill()
        t0 = time.perf_counter()
        answered = [f.result() for f in inflight]
        new = [_post(c, body) for _ in range(3)]
        health = c.get("/health").status_code
        ready = c.get("/ready").status_code
    slow = [a for a in answered + new if a[2] > 5.0 or a[0] not in (200, 503)]
    ok = not slow and health != 200 and ready != 200 and all(s == 503 for s, _, _ in new)
    return {
        "ok": ok,
        "detail": f"in-flight {[a[0] for a in answered]}, new {[a[0] for a in new]}, /health {health}, "
        f"/ready {ready}, slowest {max(a[2] for a in answered + new):.1f} s after "
        f"{time.perf_counter() - t0:.1f} s",
    }

"""``swap``: a rollout under load, through the admin API, with nothing lost.

The server starts with the teacher alone as ``ranker@stable``. An open-loop run at half its
capacity (measured first) goes on throughout while the admin API, one step after another:
loads the student as ``ranker:student`` (timed: seconds to ready, memory), tries to load a
broken checkpoint (it must fail, say why and change nothing), moves ``stable`` to the student,
back to the teacher (the rollback), to the student and back again, and finally unloads the
student. Every request must get a 200 (or a 429 from admission), none a 5xx, none lost or
refused at the connection, and both versions must have answered.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import httpx

from loadtest.chaos.harness import (
    ROLLOUT_MODEL,
    ChaosConfig,
    Report,
    measure_capacity,
    request_pool,
    run_config,
    say,
    server,
    tally,
    unloaded_latency,
    write_models_file,
)
from loadtest.client import open_loop

NAME = ROLLOUT_MODEL
VERSION_HEADER = "x-model-version"


def broken_copy(checkpoint: str, into: Path) -> Path:
    """The checkpoint with unreadable weights and no manifest: it passes every check that
    reads no weights, and fails in the engine's load."""
    dst = into / "broken"
    shutil.copytree(checkpoint, dst)
    (dst / "manifest.json").unlink(missing_ok=True)
    for f in dst.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    return dst


async def _steps(url: str, admin_key: str, student: str, broken: Path, gap_s: float) -> list:
    """The admin calls, ``gap_s`` apart: (step, status, ms, detail) each."""
    auth = {"Authorization": f"Bearer {admin_key}"}
    out = []
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=600) as c:

        async def call(step: str, method: str, path: str, body: dict | None = None) -> dict:
            await asyncio.sleep(gap_s)
            t = time.perf_counter()
            r = await c.request(method, path, json=body)
            ms = (time.perf_counter() - t) * 1000
            detail = r.json()
            out.append({"step": step, "status": r.status_code, "ms": round(ms, 1),
                        "detail": detail})  # fmt: skip
            return detail

        student_entry = {"name": NAME, "version": "student", "path": student, "engine": "torch"}
        await call("load the student", "POST", "/admin/models", student_entry)
        await call("load a broken checkpoint", "POST", "/admin/models",
                   {**student_entry, "version": "broken", "path": str(broken)})  # fmt: skip
        listing = (await c.get("/admin/models")).json()
        out[-1]["labels_after"] = listing["labels"]
        for target in ("student", "teacher", "student", "teacher"):
            await call(f"stable -> {target}", "PUT", f"/admin/labels/{NAME}@stable",
                       {"version": target})  # fmt: skip
        await call("unload the student", "DELETE", f"/admin/models/{NAME}:student")
    return out


def swap(cfg: ChaosConfig) -> Report:
    rep = Report("swap", asdict(cfg))
    admin_key = "swap-" + str(time.time_ns())
    with tempfile.TemporaryDirectory(prefix="slimrank-swap-") as tmp:
        tmp_path = Path(tmp)
        models = write_models_file(tmp_path / "models.yaml", cfg, {"teacher": cfg.model})
        broken = broken_copy(cfg.student, tmp_path)
        env = {"SLIMRANK_ADMIN_API_KEY": admin_key}
        with server(cfg, env, models=str(models)) as srv:
            pool = request_pool(cfg)
            base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
            cap = measure_capacity(cfg, srv.url, pool, base)
            rate = 0.5 * cap["capacity_rps"]
            duration = cfg.pick(90.0, 20.0)
            gap = cfg.pick(5.0, 1.0)
            say(cfg, f"swap: {rate:.1f} req/s (half of capacity) for {duration:g}s")
            rc = run_config(cfg, srv.url, rate, duration)

            async def both():
                return await asyncio.gather(
                    open_loop(rc, pool, keep_headers=(VERSION_HEADER,)),
                    _steps(srv.url, admin_key, cfg.student, broken, gap),
                )

            result, steps = asyncio.run(both())
            logs = srv.logs()
    t = tally(result.outcomes)
    rep.tallies["requests"] = t
    by_version = Counter(
        (o.headers or {}).get(VERSION_HEADER, "-") for o in result.outcomes if o.status == 200
    )
    last_done = max((o.done_s or 0.0) for o in result.outcomes) if result.outcomes else 0.0
    rep.extra.update(
        unloaded_ms=base,
        capacity=cap,
        rate=rate,
        seconds_of_load=duration,
        answered_by=dict(by_version),
        steps=steps,
        last_request_done_s=last_done,
        student_ready_log=[ln for ln in logs.splitlines() if "ready: ranker:student" in ln][:1],
    )
    by_step = {s["step"]: s for s in steps}
    load = by_step.get("load the student", {})
    rep.check(
        "the student loads under load",
        load.get("status") == 200 and load["detail"].get("state") == "ready",
        f"{load.get('status')} in {load.get('ms', 0) / 1000:.1f} s, memory "
        f"{(load.get('detail', {}).get('memory_bytes') or 0) / 2**20:.0f} MB",
    )
    failed = by_step.get("load a broken checkpoint", {})
    stable_after = [
        lab["arms"] for lab in failed.get("labels_after", []) if lab["label"] == "stable"
    ]
    rep.check(
        "a failed load says why and changes nothing",
        failed.get("status") == 422
        and "broken" in str(failed.get("detail"))
        and stable_after == [{"teacher": 1.0}],
        f"{failed.get('status')}: {str(failed.get('detail'))[:120]}; stable -> {stable_after}",
    )
    moves = [s for s in steps if s["step"].startswith("stable ->")]
    rep.check(
        "every label move and the unload succeed",
        len(moves) == 4
        and all(s["status"] == 200 for s in moves)
        and by_step.get("unload the student", {}).get("status") == 200,
        ", ".join(f"{s['step']}: {s['status']} ({s['ms']:.0f} ms)" for s in steps[2:]),
    )
    rep.check(
        "both versions answered",
        by_version.get(f"{NAME}:teacher", 0) > 0 and by_version.get(f"{NAME}:student", 0) > 0,
        str(dict(by_version)),
    )
    others = {k: v for k, v in t["by_status"].items() if k not in ("200", "429")}
    rep.check("only 200 and 429", not others, f"other statuses: {others}" if others else "ok")
    rep.check("no 5xx", t["5xx"] == 0, f"{t['5xx']} 5xx")
    rep.check("nothing lost", t["lost"] == 0, f"{t['lost']} sent and never answered")
    rep.check("no connection errors", t["connection_errors"] == 0, f"{t['connection_errors']}")
    return rep

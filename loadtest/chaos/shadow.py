"""``shadow``: what mirroring every request to a shadow version costs the primary, and whether
the agreement the server records matches an offline comparison of the same two checkpoints.

The server holds the teacher (``ranker@stable``) and the student. Capacity is measured on the
teacher; then an open-loop run at half of it goes through four phases of equal length,
alternating the ``stable`` label between no shadow and the student as a 100% shadow (off, on,
off, on: the machine's drift falls on both sides alike). Reported: the primary's admitted p50 /
p99 with the shadow off and on, the shadow copies by outcome (scored, dropped, refused,
failed), and the agreement the server recorded (mean |score difference|, top-k overlap, from
``/metrics``) beside the same figures computed offline: the requests of the "on" phases scored
by both checkpoints through the torch engine in this process (on the kernels the server
chose at load), no server in between.
Check: the primary's p99 moves by less than 10% and the recorded agreement matches the
offline one (mean |difference| within 0.01, overlap within 0.05).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from loadtest import promscrape
from loadtest.chaos.harness import (
    ROLLOUT_MODEL,
    RUN_KEY,
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
from loadtest.stats import fmt, percentiles

NAME = ROLLOUT_MODEL
PAIR = {"model": NAME, "primary": "teacher", "shadow": "student"}
P99_BUDGET = 0.10  # the primary's p99 may move by less than this with the shadow on
DIFF_TOLERANCE, OVERLAP_TOLERANCE = 0.01, 0.05


def kernel_option(label: str) -> str:
    """The ``--torch-kernel`` that gives a served version's kernel (its card's ``kernel``:
    "int8 fbgemm", "int4 dequantized to float32", "float32", ...)."""
    from ranking.quant_kernels import FALLBACK, INT4_KERNELS, INT8_KERNELS

    words = label.split()
    if len(words) > 1 and words[1] in INT8_KERNELS + INT4_KERNELS:
        return words[1]
    return FALLBACK if len(words) > 1 else "auto"


def offline_agreement(
    teacher: str, student: str, bodies: list[bytes], k: int, kernels: dict[str, str]
) -> dict:
    """Both checkpoints through the torch engine in this process, with the kernels the server
    ran them on (``kernels``: checkpoint -> its card's kernel), on ``bodies``: the mean over
    requests of mean |difference| and of the top-k overlap."""
    from ranking.request import EncodedRequest
    from server.engines.torch_engine import TorchEngine
    from server.settings import ServerSettings
    from server.shadow import agreement

    async def scores(model: str) -> list[np.ndarray]:
        kernel = kernel_option(kernels.get(model, ""))
        settings = ServerSettings(model=model, engine="torch", torch_kernel=kernel)
        engine = TorchEngine(settings.model_spec())
        loaded = await engine.start()
        out = []
        for b in bodies:
            body = json.loads(b)
            q = loaded.task.encode_query(loaded.tokenizer, body["query"])
            items = loaded.task.encode_items(loaded.tokenizer, body["items"])
            (s,) = await engine.score([EncodedRequest(q, items)])
            out.append(np.asarray(s, dtype=np.float64))
        await engine.stop()
        return out

    t, s = asyncio.run(scores(teacher)), asyncio.run(scores(student))
    pairs = [agreement(a, b, k) for a, b in zip(t, s, strict=True)]
    return {
        "requests": len(pairs),
        "mean_abs_diff": float(np.mean([d for d, _ in pairs])),
        "topk_overlap": float(np.mean([o for _, o in pairs])),
    }


def _recorded(before: dict, after: dict) -> dict:
    """The server's shadow histograms and counters over the run."""
    d = promscrape.counter_delta
    count = d(before, after, "slimrank_shadow_score_diff_count", **PAIR)
    return {
        "requests": count,
        "mean_abs_diff": d(before, after, "slimrank_shadow_score_diff_sum", **PAIR) / count
        if count
        else float("nan"),
        "topk_overlap": d(before, after, "slimrank_shadow_topk_overlap_sum", **PAIR) / count
        if count
        else float("nan"),
        "copies": {
            outcome: d(before, after, "slimrank_shadow_requests_total", **PAIR, outcome=outcome)
            for outcome in ("scored", "dropped", "refused", "failed")
        },
    }


def shadow(cfg: ChaosConfig) -> Report:
    rep = Report("shadow", asdict(cfg))
    admin_key = "shadow-" + str(time.time_ns())
    folder = Path(cfg.log_dir or "/tmp")
    folder.mkdir(parents=True, exist_ok=True)
    models = write_models_file(
        folder / f"shadow-models-{time.time_ns()}.yaml",
        cfg,
        {"teacher": cfg.model, "student": cfg.student},
    )
    off = {"version": "teacher"}
    on = {"version": "teacher", "shadow": "student", "shadow_percent": 100}
    phase_s = cfg.pick(30.0, 5.0)
    with server(cfg, {"SLIMRANK_ADMIN_API_KEY": admin_key}, models=str(models)) as srv:
        pool = request_pool(cfg)
        base = unloaded_latency(srv.url, pool, cfg.pick(20, 8))
        cap = measure_capacity(cfg, srv.url, pool, base)
        rate = 0.5 * cap["capacity_rps"]
        say(cfg, f"shadow: {rate:.1f} req/s (half of capacity), 4 phases of {phase_s:g}s")
        admin = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
        )
        latencies: dict[str, list[float]] = {"off": [], "on": []}
        tallies: dict[str, list] = {"off": [], "on": []}
        shadowed: list[bytes] = []
        before = promscrape.scrape(srv.url, api_key=RUN_KEY)
        for i, mode in enumerate(("off", "on", "off", "on")):
            r = admin.put(f"/admin/labels/{NAME}@stable", json=on if mode == "on" else off)
            r.raise_for_status()
            rc = run_config(cfg, srv.url, rate, phase_s, seed=cfg.seed + i)
            result = asyncio.run(open_loop(rc, pool))
            time.sleep(cfg.pick(2.0, 1.0))  # the shadow queue empties before the next phase
            latencies[mode] += [o.latency_s * 1000 for o in result.outcomes if o.status == 200]
            tallies[mode] += result.outcomes
            if mode == "on":
                shadowed += [pool.sequence(len(result.outcomes))[j].body
                             for j, o in enumerate(result.outcomes) if o.status == 200]  # fmt: skip
        after = promscrape.scrape(srv.url, api_key=RUN_KEY)
        cards = admin.get("/admin/models").json()["data"]
        admin.close()
    path_of = {"teacher": cfg.model, "student": cfg.student}
    kernels = {path_of[c["version"]]: c["kernel"] for c in cards}
    recorded = _recorded(before, after)
    say(cfg, f"shadow: offline comparison of {len(shadowed)} requests")
    offline = offline_agreement(cfg.model, cfg.student, shadowed, 10, kernels)
    p = {mode: percentiles(lat, (50, 99)) for mode, lat in latencies.items()}
    for mode in ("off", "on"):
        rep.tallies[f"shadow {mode}"] = tally(tallies[mode])
    change = p["on"]["p99"] / p["off"]["p99"] - 1 if p["off"]["p99"] else float("nan")
    rep.extra.update(
        unloaded_ms=base,
        capacity=cap,
        rate=rate,
        phase_seconds=phase_s,
        primary_ms=p,
        p99_change=change,
        recorded=recorded,
        offline=offline,
        kernels=kernels,
    )
    rep.check(
        "primary p99 moves < 10%",
        abs(change) < P99_BUDGET,
        f"p99 {fmt(p['off']['p99'])} ms off, {fmt(p['on']['p99'])} ms on ({change:+.1%})",
    )
    rep.check(
        "recorded agreement matches offline",
        abs(recorded["mean_abs_diff"] - offline["mean_abs_diff"]) <= DIFF_TOLERANCE
        and abs(recorded["topk_overlap"] - offline["topk_overlap"]) <= OVERLAP_TOLERANCE,
        f"mean |diff| {recorded['mean_abs_diff']:.4f} server vs {offline['mean_abs_diff']:.4f} "
        f"offline; top-10 overlap {recorded['topk_overlap']:.3f} vs "
        f"{offline['topk_overlap']:.3f}",
    )
    copies = recorded["copies"]
    rep.check(
        "copies scored",
        copies["scored"] > 0 and copies["failed"] == 0,
        ", ".join(f"{k} {v:.0f}" for k, v in copies.items()),
    )
    on_t = rep.tallies["shadow on"]
    rep.check("no 5xx", on_t["5xx"] == 0 and rep.tallies["shadow off"]["5xx"] == 0, "")
    return rep

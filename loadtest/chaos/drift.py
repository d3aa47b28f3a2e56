"""``drift``: the server's score drift PSI stays low on traffic like the data and crosses the page
threshold when the traffic moves; and what the score monitoring costs per request.

The server holds one checkpoint with a score reference (``score_reference.json``, written by the
compression report from the test split) and a drift window of ``window`` seconds. Two phases,
each one window long, at a light constant rate: the workload as configured (``--source demo``:
the test split's members and candidates), then the same members with every candidate of one
topic (``--shift-topic``: another item population). ``slimrank_score_psi`` is read from
``/metrics`` every couple of seconds. Checks: once the window holds enough scores, the PSI of
the first phase stays under 0.1; in the second it crosses 0.25 within one window.

Standard traffic is always the data folder's rows (``--source demo``): synthetic requests are
not like the data, so against the test split's reference they read as drift.

Cost: a second server on the same checkpoint with ``--no-score-monitoring`` (no histogram, no
PSI); requests sent one at a time, alternating between the two servers, so the machine's drift
falls on both alike; reported as the p50 difference, beside the in-process cost of counting one
response's scores and of computing the PSI at a scrape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from loadtest import promscrape
from loadtest.chaos.harness import (
    AUTH,
    REQUEST_TIMEOUT_S,
    RUN_KEY,
    ChaosConfig,
    Report,
    request_pool,
    run_config,
    say,
    server,
    tally,
    unloaded_latency,
)
from loadtest.client import open_loop
from loadtest.stats import fmt, percentiles
from loadtest.workload import RequestPool
from ranking.score_drift import PSI_PAGE, PSI_WARN


def read_psi(url: str) -> tuple[float, float]:
    """(PSI, scores in the window) of the server's only version; NaN where not exported."""
    samples = promscrape.scrape(url, api_key=RUN_KEY) or {}
    psi = [v for (name, _), v in samples.items() if name == "slimrank_score_psi"]
    size = [v for (name, _), v in samples.items() if name == "slimrank_score_window_scores"]
    return (psi[0] if psi else float("nan")), (size[0] if size else 0.0)


class PsiSampler:
    """Reads the PSI every ``every`` seconds in a thread while a phase runs."""

    def __init__(self, url: str, every: float):
        self.url, self.every = url, every
        self.series: list[dict] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            psi, size = read_psi(self.url)
            self.series.append(
                {"t": round(time.perf_counter() - self._t0, 2), "psi": psi, "scores": size}
            )
            self._stop.wait(self.every)

    def __enter__(self) -> PsiSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def monitoring_cost_in_process(items: int, reps: int = 2000) -> dict:
    """Microseconds to count one response's scores (``ScoreDrift.observe``) and to compute one
    version's PSI at a scrape, in this process."""
    from ranking.score_drift import histogram
    from server.drift import ScoreDrift

    rng = np.random.default_rng(0)
    d = ScoreDrift(window_s=300.0, min_scores=1)
    d.reference = histogram(rng.beta(2, 5, 10_000))
    batch = rng.beta(2, 5, items)
    t = time.perf_counter()
    for _ in range(reps):
        d.observe(batch)
    observe_us = (time.perf_counter() - t) / reps * 1e6
    t = time.perf_counter()
    for _ in range(reps):
        d.psi()
    return {
        "observe_us_per_response": observe_us,
        "psi_us_per_scrape": (time.perf_counter() - t) / reps * 1e6,
    }


def alternating_latency(urls: dict[str, str], pool: RequestPool, n: int) -> dict[str, dict]:
    """p50/p99 (ms) of ``n`` requests per server, sent one at a time, alternating."""
    lat: dict[str, list[float]] = {k: [] for k in urls}
    clients = {
        k: httpx.Client(base_url=u, timeout=REQUEST_TIMEOUT_S, headers=AUTH)
        for k, u in urls.items()
    }
    try:
        for req in pool.sequence(n):
            for k, c in clients.items():
                t = time.perf_counter()
                r = c.post(
                    pool.workload.path,
                    content=req.body,
                    headers={"content-type": "application/json"},
                )
                if r.status_code == 200:
                    lat[k].append((time.perf_counter() - t) * 1000)
    finally:
        for c in clients.values():
            c.close()
    return {k: {**percentiles(v, (50, 99)), "n": len(v)} for k, v in lat.items()}


def drift(cfg: ChaosConfig) -> Report:
    if cfg.source != "demo":  # the reference is the test split's scores: so is standard traffic
        say(cfg, f"drift: standard traffic is the rows of {cfg.data} (--source demo), as the "
            "score reference is")  # fmt: skip
        cfg = dataclasses.replace(cfg, source="demo")
    rep = Report("drift", asdict(cfg))
    window = cfg.pick(120.0, 20.0)
    min_scores = int(cfg.pick(1000, 100))
    env = {"SLIMRANK_DRIFT_WINDOW_S": str(window), "SLIMRANK_DRIFT_MIN_SCORES": str(min_scores)}
    standard = request_pool(cfg)
    shifted = RequestPool(dataclasses.replace(standard.workload, topic=cfg.shift_topic))
    phases: dict[str, dict] = {}
    with server(cfg, env) as srv:
        card = httpx.get(srv.url + "/v1/models", headers=AUTH, timeout=30).json()["data"][0]
        if not card.get("score_reference"):
            rep.check(
                "checkpoint has a score reference",
                False,
                f"{cfg.model} has no score_reference.json: run its compression report first",
            )
            return rep
        base = unloaded_latency(srv.url, standard, cfg.pick(10, 4))
        # a light load: a third of what one request at a time reaches, and at least enough for
        # the window to hold twice the scores a PSI needs
        rate = max(2 * min_scores / (cfg.items * window), 0.33 * 1000.0 / base["p50"])
        say(cfg, f"drift: {rate:.1f} req/s, two phases of one {window:g}s window each")
        for i, (name, pool) in enumerate((("standard", standard), ("shifted", shifted))):
            rc = run_config(cfg, srv.url, rate, window, seed=cfg.seed + i, arrivals="constant")
            with PsiSampler(srv.url, cfg.pick(3.0, 1.0)) as sampler:
                result = asyncio.run(open_loop(rc, pool))
            psi, size = read_psi(srv.url)
            sampler.series.append({"t": round(window, 2), "psi": psi, "scores": size})
            phases[name] = {
                "series": sampler.series,
                "final_psi": psi,
                "tally": tally(result.outcomes),
            }
            rep.tallies[name] = phases[name]["tally"]
        say(cfg, "drift: monitoring cost, with and without, requests alternating")
        with server(cfg, {"SLIMRANK_SCORE_MONITORING": "false"}) as off:
            cost = alternating_latency(
                {"on": srv.url, "off": off.url}, standard, int(cfg.pick(100, 10))
            )
    inproc = monitoring_cost_in_process(cfg.items)
    std = [p["psi"] for p in phases["standard"]["series"] if np.isfinite(p["psi"])]
    crossed = [p["t"] for p in phases["shifted"]["series"] if p["psi"] > PSI_PAGE]
    rep.extra.update(
        window_s=window,
        min_scores=min_scores,
        rate=rate,
        unloaded_ms=base,
        shift_topic=cfg.shift_topic,
        phases={k: {x: v[x] for x in ("series", "final_psi")} for k, v in phases.items()},
        seconds_to_page=crossed[0] if crossed else None,
        cost_ms=cost,
        cost_p50_ms=cost["on"]["p50"] - cost["off"]["p50"],
        cost_in_process=inproc,
    )
    rep.check(
        "standard traffic: PSI < 0.1",
        bool(std) and max(std) < PSI_WARN,
        f"max {max(std):.3f}, final {phases['standard']['final_psi']:.3f} over {len(std)} readings"
        if std
        else "no PSI reading (window never held enough scores)",
    )
    rep.check(
        "shifted traffic: PSI > 0.25 within the window",
        bool(crossed) and crossed[0] <= window,
        f"crossed after {crossed[0]:.0f}s, final {phases['shifted']['final_psi']:.2f}"
        if crossed
        else f"final {phases['shifted']['final_psi']:.3f}",
    )
    rep.check(
        "no 5xx",
        all(t["5xx"] == 0 for t in rep.tallies.values()),
        ", ".join(f"{k} {t['5xx']}" for k, t in rep.tallies.items()),
    )
    say(
        cfg,
        f"drift: p50 {fmt(cost['on']['p50'])} ms with monitoring, {fmt(cost['off']['p50'])} ms "
        f"without; observe {inproc['observe_us_per_response']:.1f} us per response",
    )
    return rep


def _finite(x: float | None) -> bool:
    """A PSI reading with a value (JSON writes NaN as null)."""
    return x is not None and bool(np.isfinite(x))


def plot_psi(rep: dict, path: str | Path) -> Path:
    """The PSI read during the two phases, one after the other, with the 0.1 / 0.25 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    offset = 0.0
    for name, color in (("standard", "tab:blue"), ("shifted", "tab:orange")):
        pts = [p for p in rep["phases"][name]["series"] if _finite(p["psi"])]
        ax.plot([offset + p["t"] for p in pts], [p["psi"] for p in pts], "o-", ms=3,
                color=color, label=f"{name} traffic")  # fmt: skip
        offset += rep["window_s"]
    ax.axhline(PSI_WARN, color="goldenrod", ls="--", label="warn 0.1")
    ax.axhline(PSI_PAGE, color="red", ls="--", label="page 0.25")
    ax.axvline(rep["window_s"], color="gray", ls=":")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("seconds (the traffic shifts at the dotted line)")
    ax.set_ylabel("slimrank_score_psi")
    ax.set_title(f"score drift, {rep['window_s']:g} s window (shift: topic {rep['shift_topic']})")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

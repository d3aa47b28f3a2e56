"""Rate sweep: open-loop runs at increasing offered rates, to find the highest that meets the SLO.

"Meets the SLO" = at least 99 % of the scheduled requests returned 200 within ``slo_ms``
(p99 latency within the SLO with every failure counted as too slow). The sweep stops early
once the SLO is clearly broken (goodput below ``broken_goodput``, or ``patience`` misses in a
row): past saturation an open-loop server only builds queues, and there is nothing to learn
from pushing harder. Writes JSON and a PNG (latency percentiles and goodput vs offered rate).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.client import RunConfig, format_report, run
from loadtest.stats import fmt, table
from loadtest.workload import RequestPool


def rate_list(
    rates: str | None, start: float | None, stop: float | None, step: float | None
) -> list[float]:
    """Rates from "1,2,5" or from start/stop/step (stop included); sorted, all > 0."""
    if rates:
        try:
            out = [float(x) for x in rates.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--rates must be numbers separated by commas: {rates!r}") from exc
    elif start is not None and stop is not None and step is not None:
        if step <= 0 or stop < start:
            raise ValueError("need --step > 0 and --stop >= --start")
        out = list(np.round(np.arange(start, stop + step / 2, step), 6))
    else:
        raise ValueError("give --rates R1,R2,... or --start, --stop and --step")
    if not out or any(not (r > 0 and math.isfinite(r)) for r in out):
        raise ValueError(f"rates must be positive numbers, got {out}")
    return sorted(out)


class SweepSteps:
    """A sweep taken one rate at a time (same workload and seed each), lowest rate first, so a
    caller can interleave several servers' sweeps (``loadtest compare``). It stops when the SLO
    is clearly broken: goodput under ``broken_goodput``, or ``patience`` misses in a row."""

    def __init__(
        self,
        base: RunConfig,
        pool: RequestPool,
        rates: list[float],
        broken_goodput: float = 0.5,
        patience: int = 2,
        verbose: bool = True,
    ):
        if base.slo_ms is None:
            raise ValueError("a sweep needs an SLO (--slo-p99-ms)")
        self.base, self.pool, self.rates = base, pool, list(rates)
        self.broken_goodput, self.patience, self.verbose = broken_goodput, patience, verbose
        self.points: list[dict[str, Any]] = []
        self.misses = 0
        self.stopped_early: str | None = None

    @property
    def done(self) -> bool:
        return self.stopped_early is not None or len(self.points) >= len(self.rates)

    def step(self) -> dict[str, Any]:
        """Runs the next rate and returns its point."""
        rate = self.rates[len(self.points)]
        s = run(dataclasses.replace(self.base, rate=rate), self.pool).summary()
        self.points.append(s)
        g = s["slo"]
        if self.verbose:
            print(f"\n== offered {rate:g} req/s ==\n{format_report(s)}", flush=True)
        self.misses = 0 if g["meets_slo"] else self.misses + 1
        if not g["meets_slo"] and (
            g["goodput"] < self.broken_goodput or self.misses >= self.patience
        ):
            self.stopped_early = (
                f"SLO clearly broken at {rate:g} req/s (goodput {g['goodput']:.1%}, "
                f"{self.misses} miss(es) in a row)"
            )
        return s

    def report(self) -> dict[str, Any]:
        passing = [p["offered_rate"] for p in self.points if p["slo"]["meets_slo"]]
        return {
            "slo_ms": self.base.slo_ms,
            "slo_rule": "goodput >= 0.99 (p99 within the SLO, failures count as misses)",
            "rates": self.rates,
            "max_rate_meeting_slo": max(passing) if passing else None,
            "stopped_early": self.stopped_early,
            "points": self.points,
        }


def sweep(
    base: RunConfig,
    pool: RequestPool,
    rates: list[float],
    broken_goodput: float = 0.5,
    patience: int = 2,
    settle_s: float = 1.0,
    verbose: bool = True,
) -> dict[str, Any]:
    """One open-loop run per rate (``SweepSteps``); returns the JSON report."""
    steps = SweepSteps(base, pool, rates, broken_goodput, patience, verbose)
    while not steps.done:
        steps.step()
        if not steps.done:
            time.sleep(settle_s)  # let the server drain before the next rate
    return steps.report()


def format_sweep(rep: dict[str, Any]) -> str:
    rows = []
    for p in rep["points"]:
        lat, g = p["latency_ms"], p["slo"]
        rows.append(
            [
                fmt(p["offered_rate"], 2),
                fmt(p["achieved_rate"], 2),
                fmt(p["items_per_s"], 1),
                fmt(lat["p50"]),
                fmt(lat["p90"]),
                fmt(lat["p99"]),
                f"{g['goodput']:.1%}",
                sum(p["errors"].values()),
                "yes" if g["meets_slo"] else "no",
            ]
        )
    head = [
        "offered/s",
        "sent/s",
        "items/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "goodput",
        "errors",
        "SLO",
    ]
    best = rep["max_rate_meeting_slo"]
    tail = f"\nhighest rate meeting p99 <= {rep['slo_ms']:g} ms: " + (
        f"{best:g} req/s" if best is not None else "none of the rates tried"
    )
    if rep["stopped_early"]:
        tail += f"\nstopped early: {rep['stopped_early']}"
    return table(rows, head) + tail


def plot_sweep(rep: dict[str, Any], path: str | Path) -> Path:
    """Latency percentiles (log scale, with the SLO line) and goodput vs offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = rep["points"]
    x = [p["offered_rate"] for p in pts]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
        ax1.plot(x, [p["latency_ms"][key] for p in pts], style, label=key)
    ax1.axhline(rep["slo_ms"], color="red", ls="--", label=f"SLO {rep['slo_ms']:g} ms")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency ms (from scheduled send)")
    ax1.legend()
    ax1.grid(alpha=0.3, which="both")
    ax2.plot(x, [p["slo"]["goodput"] * 100 for p in pts], "o-", color="green", label="goodput")
    ax2.axhline(99, color="red", ls="--", label="99 %")
    if rep["max_rate_meeting_slo"] is not None:
        for ax in (ax1, ax2):
            ax.axvline(rep["max_rate_meeting_slo"], color="gray", ls=":")
    ax2.set_ylim(0, 105)
    ax2.set_xlabel("offered rate (req/s)")
    ax2.set_ylabel("% of requests ok within SLO")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle("slimrank load sweep")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

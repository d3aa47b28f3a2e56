"""Fault scenarios against a real server: ``python -m loadtest chaos SCENARIO --json OUT``.

Each scenario (one module here: ``overload``, ``drain``, ``engine_fault``, ``slow_clients``,
``swap``, ``shadow``, ``drift``)
starts its own server (``ServerProcess``, loopback only), drives it with the open-loop runner of
``loadtest.client``, injects its fault, judges the outcome itself (a list of checks, each with
its reason) and stops by itself: every phase is bounded in time and request count. The report
(a table and JSON) holds, per scenario: requests sent, by status, 5xx, connection errors
(refused or reset), lost (sent and never answered: timeouts, or still open at the hard stop),
admitted (200) latency p50/p99, the checks and the verdict. What the scenarios share is in
``harness``.

Timeouts and windows the scenarios rely on are passed to the server as environment variables
(``SLIMRANK_DRAIN_WINDOW_S``, ``SLIMRANK_HEADER_TIMEOUT_S``, ``SLIMRANK_BODY_TIMEOUT_S``,
``SLIMRANK_FAULT_BATCHES``), so ``--short`` can shrink them; a server without those settings
ignores them, and the scenario then fails on the behaviour they control.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loadtest.chaos.drain import CLEAN_EXIT, drain
from loadtest.chaos.drift import drift
from loadtest.chaos.engine_fault import engine_fault
from loadtest.chaos.harness import ChaosConfig, Report, format_chaos, tally
from loadtest.chaos.overload import overload, recovery_seconds
from loadtest.chaos.shadow import shadow
from loadtest.chaos.slow_clients import slow_clients
from loadtest.chaos.swap import swap

RUNNERS: dict[str, Callable[[ChaosConfig], Report]] = {
    "overload": overload,
    "drain": drain,
    "engine-fault": engine_fault,
    "slow-clients": slow_clients,
    "swap": swap,
    "shadow": shadow,
    "drift": drift,
}
SCENARIOS = tuple(RUNNERS)

__all__ = [
    "CLEAN_EXIT",
    "RUNNERS",
    "SCENARIOS",
    "ChaosConfig",
    "Report",
    "format_chaos",
    "recovery_seconds",
    "run_scenario",
    "tally",
]


def run_scenario(name: str, cfg: ChaosConfig) -> dict[str, Any]:
    """Runs one scenario and returns its report (JSON-ready)."""
    if name not in RUNNERS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    t0 = time.perf_counter()
    rep = RUNNERS[name](cfg)
    rep.seconds = time.perf_counter() - t0
    return rep.to_dict()

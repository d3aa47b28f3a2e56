"""Test helpers: a real server process on a free port (``server.process``, re-exported here)
and reading one metric from a ``/metrics`` text."""

from __future__ import annotations

import re

from server.process import REPO, ServerProcess, free_port

__all__ = ["REPO", "ServerProcess", "free_port", "metric_value"]


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of a metric's samples whose label set has every one of ``labels``
    (e.g. 'endpoint="/v1/rank",status="429"', in any order)."""
    wanted = re.findall(r'\w+="[^"]*"', labels)
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    if not found:
        raise KeyError(f"{name}{{{labels}}} not in /metrics")
    return total

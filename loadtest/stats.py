"""The numbers of a load test, defined once: percentiles, histogram quantiles, the table.

- ``percentiles``: numpy's default ``linear`` method (Hyndman & Fan type 7, the one
  ``numpy.percentile``, pandas and Excel's PERCENTILE.INC use): sort the n values and take
  position ``q * (n - 1)``, interpolating linearly between its two neighbours. So p50 of
  [1, 2, 3, 4] is 2.5 and p99 of 1..100 is 99.01.
- ``histogram_quantile``: what PromQL's ``histogram_quantile`` does with cumulative bucket
  counts, so the server-side percentiles we print are the ones a Grafana panel would show.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (50, 90, 95, 99)


def percentiles(values: Iterable[float], qs: Sequence[float] = QUANTILES) -> dict[str, float]:
    """{"p50": ..., "p90": ..., "max": ...} by linear interpolation (type 7); NaN when empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    out: dict[str, float] = {}
    for q in qs:
        key = f"p{q:g}"
        out[key] = float(np.percentile(arr, q, method="linear")) if arr.size else math.nan
    out["max"] = float(arr.max()) if arr.size else math.nan
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """PromQL ``histogram_quantile(q, ...)`` over ``(upper_bound, cumulative_count)`` pairs.

    The rank ``q * total`` (total = the ``+Inf`` bucket) falls in the first bucket whose
    cumulative count reaches it; the result interpolates linearly inside that bucket, from
    its lower bound (the previous bound, or 0 for the first bucket) to its upper bound. A rank
    in the ``+Inf`` bucket returns the highest finite bound. No observations: NaN.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bs = sorted((float(le), float(c)) for le, c in buckets)
    if not bs or not math.isinf(bs[-1][0]):
        return math.nan  # PromQL needs the +Inf bucket
    total = bs[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    i = next(k for k, (_, c) in enumerate(bs) if c >= rank)  # exists: bs[-1][1] == total
    le, count = bs[i]
    if math.isinf(le):
        return bs[-2][0] if len(bs) > 1 else math.nan
    if i == 0 and le <= 0:
        return le
    lower, below = (bs[i - 1][0], bs[i - 1][1]) if i > 0 else (0.0, 0.0)
    in_bucket = count - below
    if in_bucket <= 0:
        return le
    return lower + (le - lower) * (rank - below) / in_bucket


def fmt(x: float | int | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """NaN and infinities become null: reports must be strict JSON (no bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    return out


def throughput_summary(n: int, concurrency: int, items: int, wall_s: float, lat_ms) -> dict:
    """The row every closed-loop measurement reports (server and offline engines alike)."""
    ms = np.asarray(lat_ms, dtype=float)
    p = percentiles(ms)
    return {
        "requests": n,
        "concurrency": concurrency,
        "items_per_s": items / wall_s,
        "p50_ms": p["p50"],
        "p99_ms": p["p99"],
        "mean_ms": float(ms.mean()),
    }


@dataclass
class Timings:
    """Raw closed-loop timings, to be summed over several turns (``loadtest.compare``)."""

    lat_ms: list[float] = field(default_factory=list)
    items: int = 0
    wall_s: float = 0.0
    n: int = 0

    def add(self, other: Timings) -> None:
        self.lat_ms += other.lat_ms
        self.items += other.items
        self.wall_s += other.wall_s
        self.n += other.n

    def summary(self, concurrency: int) -> dict[str, Any]:
        return throughput_summary(self.n, concurrency, self.items, self.wall_s, self.lat_ms)

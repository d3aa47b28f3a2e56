"""Server-side view of a load test: ``/metrics`` scraped before and after, differenced.

The client sees end-to-end latency; the server's histograms say where it went (queue wait,
engine prefill). Counters and histogram buckets are cumulative, so the run's own share is
``after - before`` (what PromQL's ``increase()`` gives over the run), and its percentiles are
``histogram_quantile`` over the bucket deltas. Metric names: ``server/metrics.py``.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.stats import histogram_quantile

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

PREFILL = "slimrank_request_prefill_seconds"
QUEUE_WAIT = "slimrank_queue_wait_seconds"
DURATION = "slimrank_request_duration_seconds"
ITEMS = "slimrank_items_scored_total"
REQUESTS = "slimrank_requests_total"


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The server's API-key header (none when no key is given)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def scrape(base_url: str, timeout: float = 10.0, api_key: str | None = None) -> Samples | None:
    """The server's samples, or None when it has no Prometheus ``/metrics`` (not an error:
    the load test still runs, the report just has no server side)."""
    try:
        r = httpx.get(
            base_url.rstrip("/") + "/metrics", timeout=timeout, headers=auth_headers(api_key)
        )
        if r.status_code != 200:
            return None
        return parse(r.text)
    except (httpx.HTTPError, ValueError):
        return None


def _match(labels: tuple[tuple[str, str], ...], want: dict[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in want.items())


def counter_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Increase of a counter (summed over the label sets matching ``labels``)."""
    total = 0.0
    for (n, lab), v in after.items():
        if n == name and _match(lab, labels):
            total += v - before.get((n, lab), 0.0)
    return total


def bucket_delta(
    before: Samples, after: Samples, histogram: str, **labels: str
) -> list[tuple[float, float]]:
    """(le, cumulative count increase) of a histogram, summed by ``le`` over the other labels
    (PromQL: ``sum by (le) (increase(h_bucket[run]))``)."""
    acc: dict[float, float] = defaultdict(float)
    for (n, lab), v in after.items():
        if n != histogram + "_bucket" or not _match(lab, labels):
            continue
        le = float(dict(lab)["le"])
        acc[le] += v - before.get((n, lab), 0.0)
    return sorted(acc.items())


def histogram_ms(
    before: Samples, after: Samples, histogram: str, qs=(0.5, 0.9, 0.99), **labels: str
) -> dict[str, float] | None:
    """Percentiles in ms of the observations made between the two scrapes; None if none."""
    buckets = bucket_delta(before, after, histogram, **labels)
    if not buckets or buckets[-1][1] <= 0:
        return None
    out = {f"p{q * 100:g}": histogram_quantile(q, buckets) * 1000 for q in qs}
    out["count"] = buckets[-1][1]
    return out


def server_report(before: Samples | None, after: Samples | None) -> dict | None:
    """What the server saw during the run: prefill / queue / in-server latency percentiles,
    items scored and requests by status."""
    if before is None or after is None:
        return None
    statuses: dict[str, float] = defaultdict(float)
    for (n, lab), v in after.items():
        if n == REQUESTS:
            d = v - before.get((n, lab), 0.0)
            if d:
                statuses[dict(lab).get("status", "?")] += d
    rep = {
        "prefill_ms": histogram_ms(before, after, PREFILL),
        "queue_wait_ms": histogram_ms(before, after, QUEUE_WAIT),
        "request_duration_ms": histogram_ms(before, after, DURATION),
        "items_scored": counter_delta(before, after, ITEMS),
        "requests_by_status": {k: int(v) for k, v in sorted(statuses.items())},
    }
    if all(v is None for k, v in rep.items() if k.endswith("_ms")) and not statuses:
        return None  # not a slimrank server (or nothing reached it)
    return rep

"""Prometheus metrics of the ranking server (prometheus-client, base units, ``slimrank_`` prefix).

Throughput is ``rate()`` of the counters; latency percentiles come from the histograms, e.g.

    histogram_quantile(0.99, sum by (le) (rate(slimrank_request_prefill_seconds_bucket[1m])))
    sum(rate(slimrank_items_scored_total[1m]))

Each app owns its registry, so several servers can live in one process (tests do that).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# ms-scale engine work up to multi-second overload tails
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 50, 64, 100, 128, 256, 512, 1024, 2048)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.batch_prefill = Histogram(
            "slimrank_batch_prefill_seconds",
            "Engine compute time of one batch (prefill only: scoring never decodes).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_prefill = Histogram(
            "slimrank_request_prefill_seconds",
            "Engine compute time seen by one request (the batch it ran in).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "slimrank_queue_wait_seconds",
            "Time from admission to the start of its batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "slimrank_request_duration_seconds",
            "End-to-end request latency in the server.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter("slimrank_items_scored_total", "Items scored.", registry=r)
        self.prompt_tokens = Counter(
            "slimrank_prompt_tokens_total",
            "Prompt tokens as sent (query counted once per item).",
            registry=r,
        )
        self.computed_tokens = Counter(
            "slimrank_computed_tokens_total", "Prompt tokens run through the model.", registry=r
        )
        self.reused_tokens = Counter(
            "slimrank_prefix_reused_tokens_total",
            "Prompt tokens not recomputed thanks to the shared query prefix.",
            registry=r,
        )
        self.batch_items = Histogram(
            "slimrank_batch_size_items", "Items per engine batch.", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "slimrank_batch_size_requests",
            "Requests per engine batch.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "slimrank_requests_total",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge("slimrank_requests_in_flight", "Requests being handled.", registry=r)
        self.queued_requests = Gauge(
            "slimrank_queue_requests", "Requests waiting for a batch.", registry=r
        )
        self.queued_items = Gauge("slimrank_queue_items", "Items waiting for a batch.", registry=r)
        self.ready = Gauge("slimrank_ready", "1 once the model is loaded and warmed.", registry=r)
        self.model_info = Info("slimrank_model", "The served model.", registry=r)
        self.model_parameters = Gauge("slimrank_model_parameters", "Parameters of the served model.",
                                      registry=r)  # fmt: skip

    def set_model(self, name: str, fmt: str, engine: str, params: int | None) -> None:
        self.model_info.info(
            {"name": name, "format": fmt, "engine": engine, "parameters": str(params or 0)}
        )
        if params:
            self.model_parameters.set(params)

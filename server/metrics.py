"""Prometheus metrics of the ranking server (prometheus-client, base units, ``slimrank_`` prefix).

Throughput is ``rate()`` of the counters; latency percentiles come from the histograms, e.g.

    histogram_quantile(0.99, sum by (le) (rate(slimrank_request_prefill_seconds_bucket[1m])))
    sum(rate(slimrank_items_scored_total[1m]))

Each app owns its registry, so several servers can live in one process (tests do that).
Every serving series carries the model version (`model`, `version`) that did the work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from server.drift import ScoreCollector, ScoreDrift

# ms-scale engine work up to multi-second overload tails
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 50, 64, 100, 128, 256, 512, 1024, 2048)


VERSION = ("model", "version")  # every serving series is per model version (few: bounded)
PAIR = ("model", "primary", "shadow")  # shadow comparisons: per (primary, shadow) version pair
OVERLAP_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
DIFF_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


class ServerMetrics:
    """The registry and every metric family. A model version's own series are bound once, when
    it is added (``for_version``), and removed when it is unloaded."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.batch_prefill = Histogram(
            "slimrank_batch_prefill_seconds",
            "Engine compute time of one batch (prefill only: scoring never decodes).",
            VERSION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_prefill = Histogram(
            "slimrank_request_prefill_seconds",
            "Engine compute time seen by one request (the batch it ran in).",
            VERSION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "slimrank_queue_wait_seconds",
            "Time from admission to the start of its batch.",
            VERSION,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "slimrank_request_duration_seconds",
            "End-to-end request latency in the server (model and version: the one that "
            "answered; empty where the request was refused before one was chosen).",
            ("endpoint", *VERSION),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter("slimrank_items_scored_total", "Items scored.", VERSION, registry=r)
        self.prompt_tokens = Counter(
            "slimrank_prompt_tokens_total",
            "Prompt tokens as sent (query counted once per item).",
            VERSION,
            registry=r,
        )
        self.computed_tokens = Counter(
            "slimrank_computed_tokens_total",
            "Prompt tokens run through the model.",
            VERSION,
            registry=r,
        )
        self.reused_tokens = Counter(
            "slimrank_prefix_reused_tokens_total",
            "Prompt tokens not recomputed thanks to the shared query prefix.",
            VERSION,
            registry=r,
        )
        self.batch_items = Histogram(
            "slimrank_batch_size_items",
            "Items per engine batch.",
            VERSION,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "slimrank_batch_size_requests",
            "Requests per engine batch.",
            VERSION,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "slimrank_requests_total",
            "Requests by endpoint, HTTP status and the model version that answered (429s and "
            "engine errors included; empty model/version: refused before one was chosen).",
            ("endpoint", "status", *VERSION),
            registry=r,
        )
        self.in_flight = Gauge("slimrank_requests_in_flight", "Requests being handled.", registry=r)
        self.queued_requests = Gauge(
            "slimrank_queue_requests", "Requests waiting for a batch.", VERSION, registry=r
        )
        self.queued_items = Gauge(
            "slimrank_queue_items", "Items waiting for a batch.", VERSION, registry=r
        )
        self.admission_margin = Gauge(
            "slimrank_admission_margin_seconds",
            "What admission adds to its plan: the 95th percentile of how late recent admitted "
            "requests finished against their planned time (0 when they finish on time).",
            VERSION,
            registry=r,
        )
        self.ready = Gauge(
            "slimrank_ready", "1 once the models of the models file are loaded and warmed.",
            registry=r,
        )  # fmt: skip
        self.version_state = Gauge(
            "slimrank_model_state",
            "1 for the state each model version is in (loading, ready, failed, unloading).",
            (*VERSION, "state"),
            registry=r,
        )
        self.model_info = Info("slimrank_model", "Each served model version.", VERSION, registry=r)
        self.model_parameters = Gauge(
            "slimrank_model_parameters", "Parameters of each model version.", VERSION, registry=r
        )
        self.model_memory = Gauge(
            "slimrank_model_memory_bytes",
            "Resident memory each model version added when it loaded.",
            VERSION,
            registry=r,
        )
        self.label_weight = Gauge(
            "slimrank_label_weight",
            "Share of a label's requests each version answers (1 for a plain label).",
            ("model", "label", "version"),
            registry=r,
        )
        self.shadow_requests = Counter(
            "slimrank_shadow_requests_total",
            "Copies of requests for a shadow version, by outcome: scored, dropped (the shadow "
            "queue was full), refused (the shadow's scheduler said 429), failed.",
            (*PAIR, "outcome"),
            registry=r,
        )
        self.shadow_score_diff = Histogram(
            "slimrank_shadow_score_diff",
            "Per shadowed request: mean |shadow score - primary score| over its items.",
            PAIR,
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.shadow_topk_overlap = Histogram(
            "slimrank_shadow_topk_overlap",
            "Per shadowed request: share of the primary's top k (10, or the request's top_k) "
            "that the shadow also ranks in its top k.",
            PAIR,
            buckets=OVERLAP_BUCKETS,
            registry=r,
        )
        # slimrank_score{,_psi,_window_scores}: per version, computed at scrape (server/drift.py)
        self._drift: dict[tuple[str, str], ScoreDrift] = {}
        r.register(ScoreCollector(lambda: [(*k, d) for k, d in list(self._drift.items())]))

    def track_scores(self, model: str, version: str, drift: ScoreDrift) -> None:
        """Exports ``drift`` (the version's score histogram and PSI) until it is removed."""
        self._drift[(model, version)] = drift

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model, version)

    def remove_version(self, model: str, version: str) -> None:
        """An unloaded version's gauges and score histogram go (its counters stay: rates over
        them stay right)."""
        self._drift.pop((model, version), None)
        for g in (self.queued_requests, self.queued_items, self.admission_margin,
                  self.model_parameters, self.model_memory, self.model_info):  # fmt: skip
            try:
                g.remove(model, version)
            except KeyError:
                pass
        for state in STATES:
            try:
                self.version_state.remove(model, version, state)
            except KeyError:
                pass


STATES = ("loading", "ready", "failed", "unloading")


class VersionMetrics:
    """One model version's series: what its scheduler records (the same attribute names as the
    families, bound to its labels)."""

    def __init__(self, m: ServerMetrics, model: str, version: str):
        lv = (model, version)
        self.model, self.version = model, version
        self.batch_prefill = m.batch_prefill.labels(*lv)
        self.request_prefill = m.request_prefill.labels(*lv)
        self.queue_wait = m.queue_wait.labels(*lv)
        self.items = m.items.labels(*lv)
        self.prompt_tokens = m.prompt_tokens.labels(*lv)
        self.computed_tokens = m.computed_tokens.labels(*lv)
        self.reused_tokens = m.reused_tokens.labels(*lv)
        self.batch_items = m.batch_items.labels(*lv)
        self.batch_requests = m.batch_requests.labels(*lv)
        self.queued_requests = m.queued_requests.labels(*lv)
        self.queued_items = m.queued_items.labels(*lv)
        self.admission_margin = m.admission_margin.labels(*lv)
        self._m = m

    def set_state(self, state: str) -> None:
        for s in STATES:
            self._m.version_state.labels(self.model, self.version, s).set(int(s == state))

    def set_loaded(self, fmt: str, engine: str, kernel: str, params: int | None,
                   memory_bytes: int | None) -> None:  # fmt: skip
        lv = (self.model, self.version)
        self._m.model_info.labels(*lv).info(
            {"format": fmt, "engine": engine, "kernel": kernel, "parameters": str(params or 0)}
        )
        if params:
            self._m.model_parameters.labels(*lv).set(params)
        if memory_bytes is not None:
            self._m.model_memory.labels(*lv).set(memory_bytes)

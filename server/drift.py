"""Live score distribution of each model version and its drift from the checkpoint's reference.

Each version keeps the histogram of the scores it returned (``ranking.score_drift`` bins: 20
equal-width bins over [0, 1]), in total (exported as the Prometheus histogram
``slimrank_score``) and per time slice of a sliding window; the population stability index of
the window against the reference stored with the checkpoint is exported as
``slimrank_score_psi``. Counting is one ``bincount`` per request; the PSI is computed when
Prometheus scrapes, so the cost per request does not grow with the window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from ranking.score_drift import SCORE_BINS, bin_edges, histogram, psi

SLICES = 10  # a window is this many slices: it slides in steps of a tenth of its length


class ScoreDrift:
    """One version's score counts: all-time, and over the last ``window_s`` seconds."""

    def __init__(
        self,
        window_s: float = 300.0,
        min_scores: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.window_s, self.min_scores, self.clock = window_s, min_scores, clock
        self.reference: np.ndarray | None = None  # the checkpoint's counts (None: no PSI)
        self.total = np.zeros(SCORE_BINS, dtype=np.int64)
        self.total_sum = 0.0
        self._slice_s = window_s / SLICES
        self._slices: deque[tuple[int, np.ndarray]] = deque()  # (slice number, counts)
        self._lock = threading.Lock()  # observe (event loop) vs collect (scrape thread)

    def observe(self, scores: np.ndarray) -> None:
        """Counts the scores of one response."""
        counts = histogram(scores)
        slot = int(self.clock() // self._slice_s)
        with self._lock:
            self.total += counts
            self.total_sum += float(np.nansum(scores))
            if self._slices and self._slices[-1][0] == slot:
                self._slices[-1][1][:] += counts
            else:
                self._slices.append((slot, counts))
            self._expire(slot)

    def _expire(self, slot: int) -> None:
        while self._slices and self._slices[0][0] <= slot - SLICES:
            self._slices.popleft()

    def window(self) -> np.ndarray:
        """Counts of the scores returned over the last ``window_s`` seconds."""
        with self._lock:
            self._expire(int(self.clock() // self._slice_s))
            out = np.zeros(SCORE_BINS, dtype=np.int64)
            for _, c in self._slices:
                out += c
            return out

    def psi(self, live: np.ndarray | None = None) -> float:
        """PSI of the window (``live``: its counts, if already taken) against the reference;
        NaN without a reference or while the window holds fewer than ``min_scores`` scores
        (too few to tell drift from noise)."""
        live = self.window() if live is None else live
        if self.reference is None or live.sum() < self.min_scores:
            return float("nan")
        return psi(self.reference, live)


class ScoreCollector:
    """Exports every version's ``slimrank_score`` histogram, window size and PSI at scrape time.
    ``versions`` yields (model, version, ScoreDrift) of the versions being served."""

    def __init__(self, versions: Callable[[], Iterable[tuple[str, str, ScoreDrift]]]):
        self.versions = versions
        self.edges = [str(e) for e in bin_edges()]

    def describe(self) -> list:
        return []  # collected on every scrape; nothing to check at registration

    def collect(self):
        hist = HistogramMetricFamily(
            "slimrank_score",
            "Scores returned (calibrated where the checkpoint has a calibrator), in the bins of "
            "the checkpoint's score reference.",
            labels=("model", "version"),
        )
        size = GaugeMetricFamily(
            "slimrank_score_window_scores",
            "Scores in the drift window (the PSI is NaN below --drift-min-scores).",
            labels=("model", "version"),
        )
        index = GaugeMetricFamily(
            "slimrank_score_psi",
            "Population stability index of the scores over the drift window against the "
            "checkpoint's reference (0.1: worth a look; 0.25: a different population).",
            labels=("model", "version"),
        )
        for model, version, d in self.versions():
            with d._lock:
                total, total_sum = d.total.copy(), d.total_sum
            cumulative = np.cumsum(total).tolist()
            buckets = [*zip(self.edges, cumulative, strict=True), ("+Inf", cumulative[-1])]
            hist.add_metric([model, version], buckets, total_sum)
            live = d.window()
            size.add_metric([model, version], float(live.sum()))
            if d.reference is not None:
                index.add_metric([model, version], d.psi(live))
        return [hist, size, index]

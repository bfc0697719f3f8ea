"""Prometheus metrics of the service, on a registry of its own (`GET /metrics`).

Drift: the model's drift reference (`hybrid_ad.monitoring.reference`) profiles each stage's
output and the final score on validation events (`score:rules`, `score:autoencoder`,
`score:histogram`, `score:judge`). The service keeps the last `DRIFT_WINDOW` scored events'
values of those four and reports, at each scrape, their PSI and KS against the reference
(`hybrid_ad.monitoring.drift`), once the window holds `DEFAULT_MIN_ROWS` events. The judge's
inputs are not watched here: `score_many` returns the stage outputs, not the judge matrix, and
recomputing it would be a second feature path; `hybrid-ad drift` covers them offline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hybrid_ad.core.live import ScoredBatch
from hybrid_ad.monitoring.drift import DEFAULT_MIN_ROWS, ReferenceProfile
from hybrid_ad.monitoring.reference import SCORE_PREFIX

DRIFT_WINDOW = 2000
"""Scored events the drift figures look at (the most recent ones)."""
WATCHED = {
    f"{SCORE_PREFIX}rules": "rule_score",
    f"{SCORE_PREFIX}autoencoder": "reconstruction_error",
    f"{SCORE_PREFIX}histogram": "histogram_score",
    f"{SCORE_PREFIX}judge": "score",
}
"""Reference column -> the `ScoredBatch.columns` column holding it."""
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
SCORE_BUCKETS = tuple(np.round(np.linspace(0.05, 1.0, 20), 2))


class DriftWindow:
    """The latest scored events' stage outputs, against one model's reference profile."""

    def __init__(self, profile: ReferenceProfile | None, size: int = DRIFT_WINDOW) -> None:
        self.profile = profile
        columns = [name for name in WATCHED if profile is not None and name in profile.columns]
        self._columns = columns
        self._values = np.full((size, len(columns)), np.nan)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """Append a batch's stage outputs (`ScoredBatch.columns`; the scorer's thread)."""
        if not self._columns or not len(columns["score"]):
            return
        values = np.column_stack(
            [np.asarray(columns[WATCHED[name]], np.float64) for name in self._columns]
        )
        size = len(self._values)
        values = values[-size:]
        rows = (self._next + np.arange(len(values))) % size
        with self._lock:
            self._values[rows] = values
            self._next = (self._next + len(values)) % size
            self._filled = min(size, self._filled + len(values))

    def figures(self) -> tuple[int, dict[str, tuple[float, float]]]:
        """Events in the window and, when there are enough, (PSI, KS) per watched column."""
        with self._lock:
            values = self._values[: self._filled].copy()
        if self.profile is None or len(values) < DEFAULT_MIN_ROWS:
            return len(values), {}
        figures = {}
        for i, name in enumerate(self._columns):
            column = values[:, i]
            finite = column[np.isfinite(column)]
            if len(finite):
                reference = self.profile.columns[name]
                figures[name] = (reference.psi(finite), reference.ks(finite))
        return len(values), figures


class ScoreHistogram(Collector):
    """The judge scores' histogram, counted with numpy per micro-batch (a prometheus_client
    `Histogram` takes one `observe` call, with its lock, per event)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = np.asarray(buckets, np.float64)
        self._counts = np.zeros(len(buckets) + 1, np.int64)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def add(self, scores: np.ndarray) -> None:
        """Count a batch's scores (`le` buckets: a score equal to a bound is in its bucket)."""
        at = np.searchsorted(self.bounds, scores, side="left")
        counts = np.bincount(at, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(np.sum(scores))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        bounds = [repr(float(bound)) for bound in self.bounds] + ["+Inf"]
        family = HistogramMetricFamily("hybrid_ad_score", "Judge scores")
        family.add_metric([], list(zip(bounds, cumulative, strict=True)), total)
        yield family


class DriftCollector(Collector):
    """Computes the drift gauges at scrape time from the current `DriftWindow`."""

    def __init__(self) -> None:
        self.window = DriftWindow(None)

    def collect(self) -> Iterator[Metric]:
        rows, figures = self.window.figures()
        events = GaugeMetricFamily(
            "hybrid_ad_drift_window_events", "Scored events in the drift window"
        )
        events.add_metric([], rows)
        yield events
        psi = GaugeMetricFamily(
            "hybrid_ad_drift_psi",
            "PSI of a stage output over the drift window against the model's reference",
            labels=["column"],
        )
        ks = GaugeMetricFamily(
            "hybrid_ad_drift_ks",
            "KS statistic of a stage output over the drift window against the reference",
            labels=["column"],
        )
        for name, (psi_value, ks_value) in figures.items():
            psi.add_metric([name], psi_value)
            ks.add_metric([name], ks_value)
        yield psi
        yield ks


class ServiceMetrics:
    """Every metric the service exports, registered on `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.request_seconds = Histogram(
            "hybrid_ad_request_seconds",
            "Request latency by endpoint and status code",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "hybrid_ad_stage_seconds",
            "Time per request in each stage: validate (schema), queue (waiting for the scorer's "
            "thread), score (score_many), respond (building the answer)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.coalesced = Histogram(
            "hybrid_ad_coalesced_requests",
            "Requests scored together in one micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.score = ScoreHistogram(SCORE_BUCKETS)
        registry.register(self.score)
        self.events = Counter("hybrid_ad_events_scored", "Events scored", registry=registry)
        self.alerts = Counter(
            "hybrid_ad_alerts", "Events at or above the threshold", registry=registry
        )
        self.dead_letters = Counter(
            "hybrid_ad_dead_letters", "Events the scorer refused", registry=registry
        )
        self.invalid = Counter(
            "hybrid_ad_invalid_requests",
            "Requests refused before scoring",
            ["reason"],
            registry=registry,
        )
        self.reloads = Counter(
            "hybrid_ad_reloads", "Model reloads by result", ["result"], registry=registry
        )
        self.checkpoints = Counter(
            "hybrid_ad_checkpoints", "State checkpoints written", registry=registry
        )
        self.checkpoint_seconds = Histogram(
            "hybrid_ad_checkpoint_seconds",
            "Time to take and write a checkpoint",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ready = Gauge("hybrid_ad_ready", "1 once the model is loaded", registry=registry)
        self.model = Gauge(
            "hybrid_ad_model_info", "The model being served", ["version"], registry=registry
        )
        self.drift = DriftCollector()
        registry.register(self.drift)

    def served(self, version: str, previous: str | None, profile: ReferenceProfile | None) -> None:
        """A model version now serves: its info gauge and a fresh drift window."""
        if previous is not None:
            self.model.remove(previous)
        self.model.labels(version).set(1)
        self.drift.window = DriftWindow(profile)

    def scored(self, scored: ScoredBatch) -> None:
        """Count one scored batch (the scorer's thread)."""
        columns = scored.columns
        scores = np.asarray(columns["score"], np.float64)
        self.events.inc(len(scores))
        if len(scores):
            self.alerts.inc(int(np.count_nonzero(columns["alert"])))
            self.score.add(scores)
        if scored.dead_letters:
            self.dead_letters.inc(len(scored.dead_letters))
        self.drift.window.add(columns)

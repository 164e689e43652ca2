"""Worker metrics through ``prometheus_client``: counters, a freshness histogram, gauges.

Served as Prometheus text on ``/metrics`` (the worker's web port) and summed up
in one log line every few seconds. Each ``Metrics`` has its own registry, so
several in one process (tests) do not collide. Live quality (the worker's published
lists scored against its users' next events, ``streams.worker.livequality``) is counted
per model version: ``freshrec_live_points_total`` and ``freshrec_live_hits_total``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["COUNTERS", "Metrics", "live_quality", "parse", "scrape"]

disable_created_metrics()  # no *_created series: scrapers derive starts from uptime

COUNTERS = {
    "events_in": "Event messages consumed",
    "events_applied": "Events folded into a user's history (valid, not a re-delivery or a duplicate)",
    "events_duplicate": "Events skipped: re-delivered (offset already applied) or an event_id sent twice",
    "dlq": "Messages sent to the dead-letter topic",
    "lists_out": "Recommendation lists published",
    "users_erased": "Users erased (state deleted, tombstone published)",
    "retries": "Batch compute or publish attempts that failed and were retried",
    "batches_failed": "Batches that failed after their retries (dead-lettered with on_error=dlq)",
    "batches": "Micro-batches processed",
    "events_expired": "Events deleted by retention before this worker read them (a lag longer than retention)",
    "learn_errors": "Item-side deltas whose learning failed (skipped)",
    "catalog_updates": "Catalog messages applied",
    "model_swaps": "Model versions swapped in without a restart",
    "model_errors": "Model versions that could not be loaded (old one kept)",
    "deltas_applied": "Item-side deltas applied (every worker's batches, this worker's included)",
    "deltas_bad": "Records of the deltas topic that were not a delta (skipped)",
    "snapshots": "Item-side snapshots this worker wrote",
}

LIVE = {
    "points": "Applied events scored against the last list this worker published to their user (the user had "
              "one, the item was new to them), by that list's model version",
    "hits": "Of the points, events whose item was in that list (hits / points: HR@K as served)",
}

STAGES = ("compute", "publish", "deltas")
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    """Thread-safe counters, a freshness histogram and a sliding window of latencies (ms).

    Latency (freshness at the worker) is an event's broker timestamp to its list
    being published.
    """

    window: int = 10_000
    lag: int | None = None
    model_version: str = ""
    index_version: int = 0
    started: float = field(default_factory=time.time)
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    _latency_ms: deque[float] = field(init=False)
    _batch_sizes: deque[int] = field(init=False)
    _stage_ms: dict[str, deque[float]] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._latency_ms = deque(maxlen=self.window)
        self._batch_sizes = deque(maxlen=1000)
        self._stage_ms = {stage: deque(maxlen=1000) for stage in STAGES}
        self._counters = {name: Counter(f"freshrec_{name}", doc, registry=self.registry)
                          for name, doc in COUNTERS.items()}
        self._live_counters = {name: Counter(f"freshrec_live_{name}", doc, ["model_version"], registry=self.registry)
                               for name, doc in LIVE.items()}
        self._freshness = Histogram("freshrec_freshness_seconds", "Event broker timestamp to its list published",
                                    buckets=FRESHNESS_BUCKETS, registry=self.registry)
        self._batch_size = Histogram("freshrec_batch_size", "Events per micro-batch",
                                     buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 4096), registry=self.registry)
        self._stage = Histogram("freshrec_batch_stage_seconds", "Seconds a micro-batch spent in a stage: compute "
                                "(model and lists, in the compute thread) or publish (lists, state and dead "
                                "letters queued and flushed to the broker), or deltas (item-side deltas of every worker applied, "
                                "per read)", ["stage"], buckets=STAGE_BUCKETS,
                                registry=self.registry)
        Gauge("freshrec_lag", "Events not yet consumed on this worker's partitions (reads low on the "
              "embedded broker)", registry=self.registry).set_function(lambda: -1 if self.lag is None else self.lag)
        Gauge("freshrec_index_version", "Version of the served item index",
              registry=self.registry).set_function(lambda: self.index_version)
        Gauge("freshrec_uptime_seconds", "Seconds since the worker started",
              registry=self.registry).set_function(lambda: time.time() - self.started)
        self.registry.register(_Derived(self))

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name].inc(n)

    def count(self, name: str) -> int:
        return int(self._counters[name]._value.get())

    def live(self, model_version: str, points: int, hits: int) -> None:
        """Live quality: ``points`` events scored against lists of ``model_version``, ``hits`` of them hits."""
        self._live_counters["points"].labels(model_version).inc(points)
        self._live_counters["hits"].labels(model_version).inc(hits)

    def live_quality(self) -> dict[str, tuple[int, int]]:
        """Model version -> (points, hits) since the worker started (read from the counters)."""
        counts: dict[str, list[int]] = {}
        for i, name in enumerate(("points", "hits")):
            for family in self._live_counters[name].collect():
                for s in family.samples:
                    if s.name.endswith("_total"):
                        counts.setdefault(s.labels["model_version"], [0, 0])[i] = int(s.value)
        return {v: (p, h) for v, (p, h) in counts.items()}

    def batch(self, size: int) -> None:
        self._counters["batches"].inc()
        self._batch_size.observe(size)
        with self._lock:
            self._batch_sizes.append(size)

    def stage(self, name: str, seconds: float) -> None:
        """One batch's time in a stage (``STAGES``)."""
        self._stage.labels(name).observe(seconds)
        with self._lock:
            self._stage_ms[name].append(seconds * 1000.0)

    def latencies(self, values_ms: list[float]) -> None:
        for v in values_ms:
            self._freshness.observe(v / 1000.0)
        with self._lock:
            self._latency_ms.extend(values_ms)

    def snapshot(self) -> dict[str, float | int | str | None]:
        with self._lock:
            lat = np.fromiter(self._latency_ms, dtype=np.float64)
            sizes = list(self._batch_sizes)
            stages = {name: list(v) for name, v in self._stage_ms.items()}
        snap: dict[str, float | int | str | None] = {name: self.count(name) for name in COUNTERS}
        snap["latency_p50_ms"] = round(float(np.percentile(lat, 50)), 1) if len(lat) else None
        snap["latency_p99_ms"] = round(float(np.percentile(lat, 99)), 1) if len(lat) else None
        snap["batch_size_mean"] = round(sum(sizes) / len(sizes), 1) if sizes else None
        for name, ms in stages.items():
            snap[f"{name}_ms_mean"] = round(sum(ms) / len(ms), 1) if ms else None
        snap["lag"] = self.lag
        snap["model_version"] = self.model_version
        points, hits = self.live_quality().get(self.model_version, (0, 0))  # the served version's lists
        snap["live_points"], snap["live_hits"] = points, hits
        snap["live_hr"] = round(hits / points, 3) if points else None
        snap["index_version"] = self.index_version
        snap["uptime_s"] = round(time.time() - self.started, 1)
        return snap

    def log_line(self) -> str:
        s = self.snapshot()
        return (
            f"events in={s['events_in']} applied={s['events_applied']} dup={s['events_duplicate']} "
            f"dlq={s['dlq']} | lists out={s['lists_out']} | batch mean={s['batch_size_mean']} "
            f"compute={s['compute_ms_mean']}ms publish={s['publish_ms_mean']}ms | "
            f"deltas applied={s['deltas_applied']} ({s['deltas_ms_mean']}ms) | "
            f"latency p50={s['latency_p50_ms']}ms p99={s['latency_p99_ms']}ms | lag={s['lag']} | "
            f"model={s['model_version']} index={s['index_version']} "
            f"live hr={s['live_hr']} ({s['live_hits']}/{s['live_points']})"
        )

    def prometheus(self) -> bytes:
        """The Prometheus text exposition of this worker's metrics."""
        return generate_latest(self.registry)


class _Derived(Collector):
    """Values computed at scrape time: the latency window's quantiles and the model version."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.metrics.snapshot()
        lat = GaugeMetricFamily("freshrec_latency_ms", "Event broker timestamp to list published, over the "
                                "last 10,000 applied events", labels=["quantile"])
        for q, key in (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms")):
            if s[key] is not None:
                lat.add_metric([q], float(s[key]))  # type: ignore[arg-type]
        yield lat
        info = GaugeMetricFamily("freshrec_model_info", "The served model version", labels=["model_version"])
        info.add_metric([str(s["model_version"])], 1.0)
        yield info


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, float]:
    """A worker's /metrics as series -> value (``freshrec_dlq_total``, ``freshrec_latency_ms{quantile="0.5"}``)."""
    import urllib.request

    return parse(urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout).read().decode())


def parse(text: str) -> dict[str, float]:
    """Prometheus text as series -> value (what ``scrape`` returns)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def live_quality(*scrapes: Mapping[str, float]) -> dict[str, Any]:
    """Live quality summed over workers' scrapes (``scrape``): ``{"hits", "points", "hr", "by_model":
    {version: {"hits", "points", "hr"}}}``; ``hr`` is None without points."""
    from prometheus_client.parser import text_string_to_metric_families

    by: dict[str, dict[str, float]] = {}
    for series in scrapes:  # back to exposition text: the client's parser reads the label escapes
        text = "".join(f"{name} {value}\n" for name, value in series.items() if name.startswith("freshrec_live_"))
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("freshrec_live_hits_total", "freshrec_live_points_total"):
                    counts = by.setdefault(s.labels["model_version"], {"hits": 0.0, "points": 0.0})
                    counts[s.name.split("_")[2]] += s.value

    def hr(hits: float, points: float) -> dict[str, Any]:
        return {"hits": int(hits), "points": int(points), "hr": round(hits / points, 4) if points else None}

    total = hr(sum(c["hits"] for c in by.values()), sum(c["points"] for c in by.values()))
    return {**total, "by_model": {v: hr(c["hits"], c["points"]) for v, c in sorted(by.items())}}

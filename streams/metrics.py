"""Worker metrics: counters, batch sizes, end-to-end latency percentiles, lag.

Exposed as Prometheus text (``/metrics`` on the worker's web port) and as one
log line every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Metrics"]

_COUNTERS = {
    "events_in": "Event messages consumed",
    "events_applied": "Events folded into a user's history (valid, not a replay)",
    "events_duplicate": "Events skipped because their event_id was already applied",
    "dlq": "Messages sent to the dead-letter topic",
    "lists_out": "Recommendation lists published",
    "users_erased": "Users erased (state deleted, tombstone published)",
    "retries": "Batch compute or publish attempts that failed and were retried",
    "batches_failed": "Batches that failed after their retries (dead-lettered with on_error=dlq)",
    "batches": "Micro-batches processed",
    "catalog_updates": "Catalog messages applied",
    "model_swaps": "Model versions swapped in without a restart",
    "model_errors": "Model versions that could not be loaded (old one kept)",
}


@dataclass
class Metrics:
    """Thread-safe counters and a sliding window of latencies (ms)."""

    window: int = 10_000
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    lag: int | None = None
    model_version: str = ""
    index_version: int = 0
    started: float = field(default_factory=time.time)
    _latency_ms: deque[float] = field(init=False)
    _batch_sizes: deque[int] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._latency_ms = deque(maxlen=self.window)
        self._batch_sizes = deque(maxlen=1000)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def batch(self, size: int) -> None:
        with self._lock:
            self.counts["batches"] += 1
            self._batch_sizes.append(size)

    def latencies(self, values_ms: list[float]) -> None:
        with self._lock:
            self._latency_ms.extend(values_ms)

    def snapshot(self) -> dict[str, float | int | str | None]:
        with self._lock:
            lat = np.fromiter(self._latency_ms, dtype=np.float64)
            sizes = list(self._batch_sizes)
            snap: dict[str, float | int | str | None] = dict(self.counts)
        snap["latency_p50_ms"] = round(float(np.percentile(lat, 50)), 1) if len(lat) else None
        snap["latency_p99_ms"] = round(float(np.percentile(lat, 99)), 1) if len(lat) else None
        snap["batch_size_mean"] = round(sum(sizes) / len(sizes), 1) if sizes else None
        snap["lag"] = self.lag
        snap["model_version"] = self.model_version
        snap["index_version"] = self.index_version
        snap["uptime_s"] = round(time.time() - self.started, 1)
        return snap

    def log_line(self) -> str:
        s = self.snapshot()
        return (
            f"events in={s['events_in']} applied={s['events_applied']} dup={s['events_duplicate']} "
            f"dlq={s['dlq']} | lists out={s['lists_out']} | batch mean={s['batch_size_mean']} | "
            f"latency p50={s['latency_p50_ms']}ms p99={s['latency_p99_ms']}ms | lag={s['lag']} | "
            f"model={s['model_version']} index={s['index_version']}"
        )

    def prometheus(self) -> str:
        s = self.snapshot()
        lines = []
        for name, help_text in _COUNTERS.items():
            lines += [f"# HELP freshrec_{name}_total {help_text}", f"# TYPE freshrec_{name}_total counter",
                      f"freshrec_{name}_total {s[name]}"]
        lines += ["# HELP freshrec_latency_ms Event arrival to list published (sliding window)",
                  "# TYPE freshrec_latency_ms summary"]
        if s["latency_p50_ms"] is not None:
            lines += [f'freshrec_latency_ms{{quantile="0.5"}} {s["latency_p50_ms"]}',
                      f'freshrec_latency_ms{{quantile="0.99"}} {s["latency_p99_ms"]}']
        if s["lag"] is not None:
            lines += ["# HELP freshrec_lag Events not yet consumed on this worker's partitions",
                      "# TYPE freshrec_lag gauge", f"freshrec_lag {s['lag']}"]
        lines += ["# TYPE freshrec_model_info gauge",
                  f'freshrec_model_info{{model_version="{s["model_version"]}"}} 1',
                  "# TYPE freshrec_index_version gauge", f"freshrec_index_version {s['index_version']}"]
        return "\n".join(lines) + "\n"

"""The only module that reads the environment.

Every setting has a default, a ``FRESHREC_<NAME>`` variable and, where the CLI
has one, a flag: flags win over variables, variables over defaults. The
settings are printed at start-up (``Settings.describe``).

Two profiles: ``production`` (normal Apache Kafka client settings) and
``embedded`` (the Tansu broker that ``freshrec broker`` / tests / the demo
start on loopback; see docs/broker.md for the workarounds it needs).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from model_core.config import FoldInConfig
from model_core.errors import ConfigError

__all__ = ["ASSIGNMENTS", "ON_ERROR", "Settings", "add_kafka_flags", "load_settings"]

ON_ERROR = ("stop", "dlq")
ASSIGNMENTS = ("cooperative-sticky", "range", "roundrobin")


@dataclass(frozen=True)
class Settings:
    """Process-wide settings (model hyper-parameters live with the model)."""

    device: str = "auto"
    """torch/FAISS device: auto, cpu or cuda (FRESHREC_DEVICE)."""
    log_level: str = "INFO"
    """Python logging level (FRESHREC_LOG_LEVEL)."""
    kafka_debug: str = ""
    """librdkafka debug contexts for freshrec's Kafka clients, e.g. cgrp,fetch (empty = off); their
    lines go to the log as freshrec.kafka.client (FRESHREC_KAFKA_DEBUG)."""
    progress: bool = True
    """Progress bars on long work when stderr is a terminal (FRESHREC_PROGRESS=0 hides them)."""

    brokers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated host:port (FRESHREC_BROKERS)."""
    profile: str = "production"
    """Client tuning: production (Apache Kafka) or embedded (Tansu) (FRESHREC_PROFILE)."""
    topic_prefix: str = "freshrec"
    """Topic names are <prefix>.events, .events.dlq, .items, .recommendations, .trending (FRESHREC_TOPIC_PREFIX)."""
    partitions: int = 4
    """Partitions of topics freshrec creates; at most this many workers share the load (FRESHREC_PARTITIONS)."""
    replication: int = 1
    """Replication factor of topics freshrec creates (FRESHREC_REPLICATION)."""
    group: str = "freshrec-worker"
    """Consumer group of the workers (FRESHREC_GROUP)."""
    assignment: str = "cooperative-sticky"
    """Partition assignment of the workers' group: cooperative-sticky (a rebalance revokes only the
    partitions that move, and a worker re-reads only the state of partitions new to it) or range
    (eager: every rebalance revokes every partition) (FRESHREC_ASSIGNMENT)."""
    offset_gaps: str = "stop"
    """A message past the offset its partition's next message must have: stop (exit 70; nothing past
    it is committed) or allow (for an events topic that other producers write with transactions,
    whose commit markers take offsets). Events deleted by retention before they were read are
    logged and counted either way (FRESHREC_OFFSET_GAPS)."""

    model_dir: str = "models"
    """Directory of model versions the worker serves; newer versions are picked up live (FRESHREC_MODEL_DIR)."""
    k: int = 20
    """Length of each published list (FRESHREC_K)."""
    index: str = "flat"
    """Item index: flat (exact), ivf, hnsw, ivf-sq8 or ivf-pq (approximate, faster) (FRESHREC_INDEX)."""
    history_size: int = 50
    """Distinct recent items kept per user (FRESHREC_HISTORY_SIZE)."""
    half_life_s: float = 3600.0
    """Event-time half-life of an event's weight in the fold-in, seconds; 0 = none (FRESHREC_HALF_LIFE_S)."""
    position_decay: float = 0.5
    """Fold-in weight factor per step back in the user's item order (FRESHREC_POSITION_DECAY)."""
    compute_threads: int = 1
    """BLAS / OpenMP threads of the worker's compute thread (fold-in and search); the event loop
    needs a core of its own, and oversubscribed BLAS threads made search several times slower on
    2 cores (FRESHREC_COMPUTE_THREADS)."""
    batch_size: int = 256
    """Events per micro-batch (FRESHREC_BATCH_SIZE)."""
    batch_within_s: float = 0.005
    """Longest wait to fill a micro-batch after its first event, seconds; bounds the freshness a
    batch adds (under a backlog batches fill at once; 5 ms against 20 ms: see
    benchmarks/batch_window.sh) (FRESHREC_BATCH_WITHIN_S)."""
    model_poll_s: float = 5.0
    """How often the worker looks for a newer model version, seconds (FRESHREC_MODEL_POLL_S)."""
    snapshot_every_s: float = 300.0
    """How often the worker that owns events partition 0 snapshots the item side every worker
    shares (trending, item graphs, session kNN, the ranker, new items), seconds; a starting
    worker loads the newest snapshot and applies the deltas after it (FRESHREC_SNAPSHOT_EVERY_S)."""
    snapshot_dir: str = ""
    """Where item-side snapshots are written and read; every worker must see the same directory
    (the model volume does). Empty = <model dir>/online-state/<group> (FRESHREC_SNAPSHOT_DIR)."""
    deltas_retention_s: float = 3600.0
    """Retention of the item-side deltas topic, seconds, set when freshrec creates it: deltas older
    than the newest snapshot are not needed, and an erased user's pseudonymous session records
    are gone from the topic within this time (FRESHREC_DELTAS_RETENTION_S)."""
    trending_every_s: float = 10.0
    """How often a worker publishes the global trending list (what ``freshrec serve`` answers with
    ``fallback=trending``), seconds (FRESHREC_TRENDING_EVERY_S)."""
    metrics_interval_s: float = 5.0
    """How often the worker logs its metrics line, seconds (FRESHREC_METRICS_INTERVAL_S)."""
    live_quality_users: int = 200_000
    """Users whose last published list a worker keeps to score live quality as served (hits and points
    of its lists against the users' next events, freshrec_live_hits_total / freshrec_live_points_total):
    the least recently published are dropped first; about 0.4 KB each with 20-item lists; 0 = off
    (FRESHREC_LIVE_QUALITY_USERS)."""
    web_port: int = 6066
    """Port of the worker's HTTP endpoint (/metrics for Prometheus); 0 = no web server (FRESHREC_WEB_PORT)."""
    data_dir: str = ".freshrec"
    """Worker-local files (the Faust app's data dir) (FRESHREC_DATA_DIR)."""

    on_error: str = "dlq"
    """What a worker does when a batch's compute still fails after its retries: stop (exit 70; the
    orchestrator restarts it and the batch is consumed again) or dlq (dead-letter the batch's
    events with the reason and go on; nothing of the batch was applied, and its erase commands
    still are). A batch whose outputs cannot be flushed to the broker always stops the worker: part
    of them may be out (FRESHREC_ON_ERROR)."""
    error_retries: int = 3
    """Retries of a failed batch step (compute or flush) before on_error applies (FRESHREC_ERROR_RETRIES)."""
    health_stall_s: float = 60.0
    """/health fails when events wait on this worker's partitions and no batch finished for this
    long, seconds (FRESHREC_HEALTH_STALL_S)."""
    max_message_bytes: int = 65536
    """Larger event messages go to the dead-letter topic (FRESHREC_MAX_MESSAGE_BYTES)."""
    max_id_length: int = 256
    """Longest user, item, session or event id, characters (FRESHREC_MAX_ID_LENGTH)."""
    min_event_time: float = 946684800.0
    """Earliest accepted event time, Unix seconds (default 2000-01-01) (FRESHREC_MIN_EVENT_TIME)."""
    max_future_s: float = 86400.0
    """Latest accepted event time, seconds after the message's broker timestamp (FRESHREC_MAX_FUTURE_S)."""

    serve_host: str = "127.0.0.1"
    """Address ``freshrec serve`` listens on; 0.0.0.0 for every interface (FRESHREC_SERVE_HOST)."""
    serve_port: int = 8000
    """Port of ``freshrec serve``: API, dashboard, /metrics (FRESHREC_SERVE_PORT)."""
    serve_partitions: str = ""
    """Partitions of the recommendations topic ``freshrec serve`` holds, comma-separated (e.g. 0,1);
    empty = all. Replicas with different sets split a topic too big for one process
    (FRESHREC_SERVE_PARTITIONS)."""
    serve_recent_events: int = 10000
    """Newest messages of the events topic ``freshrec serve`` keeps for the dashboard's user lookup;
    0 = do not read the events topic (FRESHREC_SERVE_RECENT_EVENTS)."""
    serve_ready_quiet_s: float = 0.5
    """``freshrec serve`` is ready once every partition reported its end and no record came for this
    long, seconds (the embedded broker under-reports end offsets) (FRESHREC_SERVE_READY_QUIET_S)."""
    serve_worker_metrics: str = ""
    """Workers' Prometheus /metrics URLs the dashboard scrapes for live quality and DLQ counts,
    comma-separated (FRESHREC_SERVE_WORKER_METRICS)."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"FRESHREC_DEVICE / --device {self.device!r} must be auto, cpu or cuda")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"FRESHREC_LOG_LEVEL {self.log_level!r} must be DEBUG, INFO, WARNING or ERROR")
        if self.index not in ("flat", "ivf", "hnsw", "ivf-sq8", "ivf-pq"):
            raise ConfigError(f"FRESHREC_INDEX / --index {self.index!r} must be flat, ivf, hnsw, ivf-sq8 or ivf-pq")
        if self.profile not in ("production", "embedded"):
            raise ConfigError(f"FRESHREC_PROFILE / --profile {self.profile!r} must be production or embedded")
        for hostport in self.brokers.split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"broker address {hostport!r} is not host:port (FRESHREC_BROKERS / --brokers)")
        if self.assignment not in ASSIGNMENTS:
            raise ConfigError(f"FRESHREC_ASSIGNMENT {self.assignment!r} must be one of {', '.join(ASSIGNMENTS)}")
        if self.offset_gaps not in ("stop", "allow"):
            raise ConfigError(f"FRESHREC_OFFSET_GAPS {self.offset_gaps!r} must be stop or allow")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"FRESHREC_ON_ERROR / --on-error {self.on_error!r} must be stop or dlq")
        if self.live_quality_users < 0:
            raise ConfigError(f"live_quality_users={self.live_quality_users} must be >= 0 "
                              "(FRESHREC_LIVE_QUALITY_USERS)")
        if self.error_retries < 0:
            raise ConfigError(f"error_retries={self.error_retries} must be >= 0 (FRESHREC_ERROR_RETRIES)")
        for name in ("partitions", "replication", "k", "batch_size", "max_message_bytes", "max_id_length",
                     "compute_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1 (FRESHREC_{name.upper()})")
        for name in ("batch_within_s", "model_poll_s", "trending_every_s", "metrics_interval_s", "health_stall_s", "max_future_s",
                     "snapshot_every_s", "deltas_retention_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0 (FRESHREC_{name.upper()})")
        self.foldin  # noqa: B018 - validates history_size, half_life_s, position_decay (ConfigError)
        if not 0 <= self.serve_port < 65536:
            raise ConfigError(f"serve_port={self.serve_port} is not a port (FRESHREC_SERVE_PORT / --port)")
        self.serve_partition_ids  # noqa: B018 - validates serve_partitions (ConfigError)
        if self.serve_recent_events < 0:
            raise ConfigError(f"serve_recent_events={self.serve_recent_events} must be >= 0 "
                              "(FRESHREC_SERVE_RECENT_EVENTS)")
        if not self.serve_ready_quiet_s > 0:
            raise ConfigError(f"serve_ready_quiet_s={self.serve_ready_quiet_s} must be > 0 "
                              "(FRESHREC_SERVE_READY_QUIET_S)")
        if not 0 <= self.web_port < 65536:
            raise ConfigError(f"web_port={self.web_port} is not a port (FRESHREC_WEB_PORT)")

    @property
    def foldin(self) -> FoldInConfig:
        """The fold-in settings as model_core's config (validated there)."""
        return FoldInConfig(self.history_size, self.half_life_s, self.position_decay)

    @property
    def serve_partition_ids(self) -> list[int] | None:
        """``serve_partitions`` as sorted partition numbers; None = all."""
        if not self.serve_partitions.strip():
            return None
        try:
            ids = sorted({int(p) for p in self.serve_partitions.split(",") if p.strip()})
        except ValueError:
            raise ConfigError(f"serve partitions {self.serve_partitions!r} is not a comma list of partition "
                              "numbers, e.g. 0,1 (FRESHREC_SERVE_PARTITIONS / --partitions)") from None
        if any(i < 0 for i in ids):
            raise ConfigError(f"serve partitions {self.serve_partitions!r} must be >= 0")
        return ids

    @property
    def worker_metrics_urls(self) -> list[str]:
        """``serve_worker_metrics`` as a list of URLs."""
        return [u.strip() for u in self.serve_worker_metrics.split(",") if u.strip()]

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.events.dlq"

    @property
    def items_topic(self) -> str:
        return f"{self.topic_prefix}.items"

    @property
    def recommendations_topic(self) -> str:
        return f"{self.topic_prefix}.recommendations"

    @property
    def trending_topic(self) -> str:
        """The global trending list (key ``b"global"``; compacted): what ``freshrec serve`` answers for
        an unknown user when asked for ``fallback=trending``."""
        return f"{self.topic_prefix}.trending"

    @property
    def deltas_topic(self) -> str:
        """The item side's replicated log: every worker's batch deltas, read by every worker of the
        group (one partition, so one order)."""
        return f"{self.topic_prefix}.deltas.{self.group}"

    @property
    def state_topic(self) -> str:
        """The workers' per-user state changelog (one per consumer group; compacted)."""
        return f"{self.topic_prefix}.state.{self.group}"

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"FRESHREC_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``FRESHREC_*`` variables, then non-None ``overrides`` (flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"FRESHREC_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _convert(f.name, f.type, raw)
    known = {f.name for f in fields(Settings)}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None and k in known})
    return Settings(**values)


def add_kafka_flags(p: argparse.ArgumentParser) -> None:
    """``--brokers``, ``--profile``, ``--topic-prefix`` (dest names match Settings fields)."""
    p.add_argument("--brokers", default=None, metavar="H:P[,H:P]",
                   help="Kafka bootstrap servers (default: FRESHREC_BROKERS, else 127.0.0.1:9092)")
    p.add_argument("--profile", choices=("production", "embedded"), default=None,
                   help="client tuning: production (Apache Kafka) or embedded (the Tansu broker of "
                   "`freshrec broker`) (default: FRESHREC_PROFILE, else production)")
    p.add_argument("--topic-prefix", dest="topic_prefix", default=None, metavar="PREFIX",
                   help="topics are PREFIX.events, PREFIX.recommendations, ... "
                   "(default: FRESHREC_TOPIC_PREFIX, else freshrec)")

"""The streaming updater: a Faust app that turns event batches into fresh lists.

Per micro-batch (``stream.take_events``):

1. decode + validate; a bad message goes to the dead-letter topic with the
   reason, and the batch goes on;
2. group by user; load each user's ``UserHistory`` from the changelog-backed
   table; apply the events (an event id already applied is skipped);
3. in a worker thread (never on the event loop): learn the batch's global side
   (trending, new items), fold the touched users in and search the index;
4. publish one list per touched user, then write the histories back (to the
   changelog partition the user's events came from, so a moved worker
   recovers exactly its users).

A catalog listener applies ``freshrec.items`` to every worker (not split by the
consumer group), and a timer hot-swaps newer model versions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from model_core.als import ALSModel, latest_model_dir
from model_core.config import FoldInConfig
from model_core.errors import BadInputError, FreshrecError, ModelIncompatibleError
from model_core.events import Event
from model_core.index import IndexConfig
from model_core.online import OnlineRecommender
from model_core.state import UserHistory
from streams.codec import Recommendation, decode_event, dlq_record, encode_recommendation
from streams.kafka import client_config, ensure_topics
from streams.metrics import Metrics
from streams.settings import Settings

__all__ = ["WorkerState", "build_app", "run_worker", "CATALOG_EVENTS"]

log = logging.getLogger("freshrec.worker")

CATALOG_EVENTS = ("new", "unavailable", "available")


@dataclass
class WorkerState:
    """Everything the agents share: the served model, metrics, one compute thread."""

    settings: Settings
    model_root: Path
    foldin: FoldInConfig = field(default_factory=FoldInConfig)
    metrics: Metrics = field(default_factory=Metrics)
    rec: OnlineRecommender | None = None
    bad_versions: set[str] = field(default_factory=set)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "freshrec-compute"))

    def load_initial(self) -> None:
        model = ALSModel.load(self.model_root)
        self.rec = self._serve(model)
        self._note_versions()
        log.info("serving model %s (%d items, k=%d) on %s from %s", model.version, len(model.item_ids),
                 model.config.factors, self.rec.device, latest_model_dir(self.model_root))

    def _serve(self, model: ALSModel) -> OnlineRecommender:
        return OnlineRecommender(model, self.foldin, IndexConfig(kind=self.settings.index),  # type: ignore[arg-type]
                                 device=self.settings.device)

    def _note_versions(self) -> None:
        assert self.rec is not None
        self.metrics.model_version = self.rec.model_version
        self.metrics.index_version = self.rec.index_version

    def newer_version(self) -> Path | None:
        """The newest model directory if it is newer than the served one (and not known bad)."""
        try:
            path = latest_model_dir(self.model_root)
        except ModelIncompatibleError:
            return None
        assert self.rec is not None
        if path.name == self.rec.model_version or path.name in self.bad_versions:
            return None
        return path if path.name > self.rec.model_version else None

    def build_swap(self, path: Path) -> OnlineRecommender:
        """Load and index a model version (in the compute thread)."""
        assert self.rec is not None
        fresh = self._serve(ALSModel.load(path))
        fresh.trending = self.rec.trending  # popularity is learned online: keep it
        if self.rec.unavailable:
            fresh.set_available(self.rec.unavailable, False)
        return fresh

    def compute(
        self, events: list[Event], histories: dict[str, UserHistory]
    ) -> tuple[OnlineRecommender, list[list[tuple[str, float]]]]:
        """Learn a batch and recommend for its users (runs in the compute thread).

        Returns the model that made the lists, so they name the right versions
        even if a newer model is swapped in meanwhile.
        """
        rec = self.rec
        assert rec is not None
        rec.observe(events, histories)
        return rec, rec.recommend(list(histories.values()), self.settings.k)

    def set_available(self, item: str, available: bool) -> None:
        """Catalog update (runs in the compute thread, so never during a batch's search)."""
        assert self.rec is not None
        self.rec.set_available([item], available)


class _CatalogListener(threading.Thread):
    """Reads every partition of the items topic from the start (not a group member)."""

    def __init__(self, state: WorkerState, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="freshrec-catalog", daemon=True)
        self.state, self.loop = state, loop
        self.stopping = threading.Event()

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

        s = self.state.settings
        consumer = Consumer(client_config(s, "consumer", **{
            "group.id": f"{s.group}-catalog-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}))
        try:
            md = consumer.list_topics(s.items_topic, timeout=10)
            parts = md.topics[s.items_topic].partitions
            consumer.assign([TopicPartition(s.items_topic, p, OFFSET_BEGINNING) for p in parts])
            while not self.stopping.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                self.loop.call_soon_threadsafe(self._apply, msg.value())
        except KafkaException as exc:
            log.error("catalog listener stopped: %s", exc)
        finally:
            consumer.close()

    def _apply(self, value: bytes | None) -> None:
        try:
            d = json.loads(value or b"")
            item, action = str(d["item_id"]), d["event"]
            if action not in CATALOG_EVENTS:
                raise ValueError(f"event {action!r} is not one of {', '.join(CATALOG_EVENTS)}")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored catalog message %r: %s", (value or b"")[:200], exc)
            return
        done = self.loop.run_in_executor(self.state.executor, self.state.set_available, item, action != "unavailable")
        done.add_done_callback(lambda fut: self._applied(fut, item, action))

    def _applied(self, fut: asyncio.Future[None], item: str, action: str) -> None:
        if fut.exception() is not None:
            log.error("catalog update %s=%s failed: %s", item, action, fut.exception())
            return
        self.state.metrics.inc("catalog_updates")
        log.info("catalog: %s is %s", item, action)


def _embedded_transport() -> str:
    """Register a Faust transport with a short fetch wait (the embedded broker needs it)."""
    from faust.transport import drivers

    if "kafka-embedded" not in drivers.TRANSPORTS.data:
        drivers.TRANSPORTS.data["kafka-embedded"] = f"{__name__}:_EmbeddedTransport"
    return "kafka-embedded"


def _make_embedded_transport() -> Any:
    from faust.transport.drivers import aiokafka as driver

    class Thread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = 100  # Faust hard-codes 1500 ms; each hop waited ~0.4 s
            return consumer

    class Consumer(driver.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> Any:
            return Thread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):  # type: ignore[misc]
        pass

    Transport.Consumer = Consumer
    return Transport


_EmbeddedTransport = _make_embedded_transport()


def build_app(settings: Settings, state: WorkerState) -> faust.App:
    """The Faust app of one worker, configured from settings."""
    embedded = settings.profile == "embedded"
    scheme = _embedded_transport() if embedded else "kafka"
    extra: dict[str, Any] = {}
    if embedded:
        extra.update(broker_session_timeout=6, broker_heartbeat_interval=1, broker_rebalance_timeout=10)
    app = faust.App(
        settings.group,
        broker=[f"{scheme}://{hp.strip()}" for hp in settings.brokers.split(",")],
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        **extra,
    )
    events_topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
    recs_topic = app.topic(settings.recommendations_topic, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    # key: user id; value: UserHistory.to_dict() (Faust tables serialize both as JSON)
    histories = app.Table("user-history", partitions=settings.partitions, default=None)
    metrics = state.metrics

    async def to_dlq(ev: Any, reason: str) -> None:
        msg = ev.message
        await dlq_topic.send(key=msg.key, value=dlq_record(msg.value, reason, topic=msg.topic,
                                                           partition=msg.partition, offset=msg.offset))
        metrics.inc("dlq")
        log.warning("DLQ %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    @app.agent(events_topic)
    async def update(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            metrics.inc("events_in", len(batch))
            metrics.batch(len(batch))
            valid: list[tuple[Event, Any]] = []
            for ev in batch:
                try:
                    event = decode_event(ev.message.value)
                    key = ev.message.key
                    if key is None:
                        raise BadInputError("message has no key (the key must be the user_id)")
                    if key.decode(errors="replace") != event.user_id:
                        raise BadInputError(f"message key {key[:64]!r} is not the event's user_id")
                except BadInputError as exc:
                    await to_dlq(ev, str(exc))
                    continue
                valid.append((event, ev))
            touched: dict[str, UserHistory] = {}
            partition_of: dict[str, int] = {}
            applied: list[Event] = []
            arrivals: dict[str, list[float]] = {}
            for event, ev in valid:
                h = touched.get(event.user_id)
                if h is None:
                    raw = histories.data.get(event.user_id)
                    h = UserHistory.from_dict(raw) if raw else UserHistory(event.user_id)
                if h.add(event, state.rec.model.config.weights, state.foldin):  # type: ignore[union-attr]
                    touched[event.user_id] = h
                    partition_of[event.user_id] = ev.message.partition
                    applied.append(event)
                    arrivals.setdefault(event.user_id, []).append(ev.message.timestamp)
                else:
                    metrics.inc("events_duplicate")
            if not touched:
                continue
            metrics.inc("events_applied", len(applied))
            rec, lists = await loop.run_in_executor(state.executor, state.compute, applied, touched)
            now = time.time()
            for (user, h), items in zip(touched.items(), lists):
                msg = Recommendation(user, items, rec.model_version, rec.index_version, h.events_applied,
                                     h.last_event_id, h.last_event_time, now)
                await recs_topic.send(key=user.encode(), value=encode_recommendation(msg))
                value = h.to_dict()
                histories.data[user] = value
                histories.send_changelog(partition_of[user], user, value)
            # state and lists are on the broker before these events can be committed as done
            await app.producer.flush()
            if embedded:  # see _seal_changelog
                await _seal_changelog(app, histories, set(partition_of.values()))
            metrics.inc("lists_out", len(touched))
            metrics.latencies([(now - t) * 1000.0 for ts in arrivals.values() for t in ts])
            metrics.index_version = rec.index_version

    @app.timer(settings.model_poll_s)
    async def watch_model() -> None:
        path = state.newer_version()
        if path is None:
            return
        loop = asyncio.get_running_loop()
        try:
            fresh = await loop.run_in_executor(state.executor, state.build_swap, path)
        except FreshrecError as exc:
            state.bad_versions.add(path.name)
            metrics.inc("model_errors")
            log.error("model %s not loaded, still serving %s: %s", path.name, state.rec.model_version, exc)  # type: ignore[union-attr]
            return
        old = state.rec
        state.rec = fresh
        state._note_versions()
        metrics.inc("model_swaps")
        log.info("swapped model %s -> %s without a restart", old.model_version if old else None, fresh.model_version)

    @app.timer(settings.metrics_interval_s)
    async def report() -> None:
        metrics.lag = _lag(app, settings.events_topic)
        log.info("%s", metrics.log_line())

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.text(metrics.prometheus(), content_type="text/plain")

    @app.task
    async def start_catalog() -> None:
        listener = _CatalogListener(state, asyncio.get_running_loop())
        listener.start()
        app._freshrec_catalog = listener  # type: ignore[attr-defined]
        log.info("worker ready: consuming %s (group %s), publishing %s", settings.events_topic, settings.group,
                 settings.recommendations_topic)

    @app.on_before_shutdown.connect  # type: ignore[misc, arg-type]
    def stop_catalog(app_: Any, **kwargs: Any) -> None:
        listener = getattr(app_, "_freshrec_catalog", None)
        if listener is not None:
            listener.stopping.set()
        log.info("shutting down: %s", metrics.log_line())

    return app


_MARKER = "__freshrec_changelog_marker__"


async def _seal_changelog(app: faust.App, table: Any, partitions: set[int]) -> None:
    """Embedded broker only: end every batch of changelog writes with a lone marker record.

    Tansu under-reports a partition's end offset as the start of its last stored
    batch + 1, so Faust's recovery stops inside the last batch. With the state
    writes already flushed, a one-record batch after them makes that last batch
    a marker nobody reads, and every real state write is recovered.
    """
    for p in partitions:
        table.send_changelog(p, _MARKER, {})
    await app.producer.flush()


def _lag(app: faust.App, topic: str) -> int | None:
    """Events not yet read on this worker's partitions of ``topic`` (best effort).

    On the embedded broker end offsets are under-reported, so this reads low there.
    """
    try:
        consumer = app.consumer
        total = 0
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            high = consumer.highwater(tp)
            pos = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
            if high is not None:
                total += max(0, high - 1 - (pos if pos is not None else -1))
        return total
    except Exception:  # noqa: BLE001 - metrics must never break the worker
        return None


def run_worker(settings: Settings, model_root: str | Path, *, foldin: FoldInConfig | None = None) -> int:
    """Create topics, load the model, and run one worker until SIGTERM/SIGINT."""
    ensure_topics(settings)
    state = WorkerState(settings, Path(model_root), foldin or FoldInConfig())
    state.load_initial()
    app = build_app(settings, state)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False,
                          override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # faust exits the process on shutdown; report our own code
        return int(exc.code or 0)
    finally:
        state.executor.shutdown(wait=False)
    return 0

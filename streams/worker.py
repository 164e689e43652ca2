"""The streaming updater: a Faust app that turns event batches into fresh lists.

Per micro-batch (``stream.take_events``):

1. decode + validate every message (``decode_message``, which raises nothing but
   BadInputError): a bad one goes to the dead-letter topic with the reason, and
   the batch goes on;
2. load each user's ``UserHistory`` (``UserStateStore``: in memory for the
   partitions this worker owns, recovered from the state changelog) and apply
   the events; a message at or before the user's last applied offset is a
   re-delivery and changes nothing (exactly-once effect, with or without ids);
   an erase command forgets the user;
3. in the compute thread (never on the event loop): learn the batch's global
   side (trending, new items), fold the touched users in and search the index;
4. publish one list per touched user and write the histories to the changelog
   partition the user's events came from (a tombstone on both topics for an
   erased user), flush, and only then let Faust commit the batch's offsets.

A batch whose compute or publish still fails after ``error_retries`` retries is
dead-lettered (``on_error=dlq``) or ends the process (``on_error=stop``); an
exception escaping the agent ends the process too: never a live worker that
consumes nothing. ``/health`` and ``/ready`` report liveness and readiness.

A catalog listener applies ``freshrec.items`` to every worker (not split by the
consumer group), and a timer hot-swaps newer model versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import faust

from model_core.als import ALSModel, latest_model_dir
from model_core.config import FoldInConfig
from model_core.errors import BadInputError, FreshrecError, ModelIncompatibleError
from model_core.events import Event
from model_core.index import IndexConfig
from model_core.online import OnlineRecommender
from model_core.state import UserHistory
from streams.codec import EraseCommand, EventLimits, Recommendation, decode_message, dlq_record, encode_recommendation
from streams.kafka import client_config, ensure_topics
from streams.metrics import Metrics
from streams.settings import Settings
from streams.userstate import UserStateStore

__all__ = ["WorkerState", "build_app", "run_worker", "CATALOG_EVENTS", "EXIT_FATAL"]

log = logging.getLogger("freshrec.worker")

CATALOG_EVENTS = ("new", "unavailable", "available")
EXIT_FATAL = 70  # the worker stopped itself on an error it cannot contain (restart it)


@dataclass
class WorkerState:
    """Everything the agents share: the served model, metrics, one compute thread."""

    settings: Settings
    model_root: Path
    foldin: FoldInConfig = field(default_factory=FoldInConfig)
    metrics: Metrics = field(default_factory=Metrics)
    health: "Health" = field(default_factory=lambda: Health(60.0))
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


def _fatal(reason: str) -> NoReturn:
    """End the process with EXIT_FATAL: the orchestrator restarts it, and no event is lost
    (nothing unapplied was committed). Never leave a live process that consumes nothing."""
    log.critical("stopping the worker (exit %d): %s", EXIT_FATAL, reason)
    logging.shutdown()
    os._exit(EXIT_FATAL)


class Health:
    """What /health and /ready report."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.agent_running = False
        self.model_loaded = False
        self.assigned: set[int] = set()
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def live(self, lag: int | None) -> tuple[bool, str]:
        if not self.agent_running:
            return False, "the event agent is not running"
        idle = time.monotonic() - self.last_progress
        if lag and idle > self.stall_s:
            return False, f"{lag} events wait and no batch finished for {idle:.0f}s"
        return True, "ok"

    def ready(self, store: UserStateStore) -> tuple[bool, str]:
        if not self.model_loaded:
            return False, "no model loaded"
        missing = sorted(p for p in self.assigned if not store.loaded(p))
        if missing:
            return False, f"recovering user state of partitions {missing}"
        return True, "ok"


class _BatchFailed(Exception):
    """A batch's compute or publish failed after its retries."""


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
    state_topic = app.topic(settings.state_topic, key_serializer="raw", value_serializer="raw")
    store = UserStateStore(settings)
    metrics, health = state.metrics, state.health
    limits = EventLimits(settings.max_message_bytes, settings.max_id_length, settings.min_event_time,
                         settings.max_future_s)
    loader = ThreadPoolExecutor(1, "freshrec-recovery")
    inflight: dict[int, asyncio.Future[dict[int, dict[str, bytes]]]] = {}

    async def to_dlq(msg: Any, reason: str) -> None:
        await dlq_topic.send(key=msg.key, value=dlq_record(msg.value, reason, topic=msg.topic,
                                                           partition=msg.partition, offset=msg.offset))
        metrics.inc("dlq")
        log.warning("DLQ %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    async def recover(partitions: set[int]) -> None:
        """Load the user state of these partitions where it is not in memory (blocking reads, in
        the recovery thread; one read per partition at a time). A partition dropped (revoked)
        while its read ran is read again."""
        loop = asyncio.get_running_loop()
        while todo := sorted(p for p in partitions if not store.loaded(p)):
            others = {inflight[p] for p in todo if p in inflight}
            mine = [p for p in todo if p not in inflight]
            if mine:
                generations = store.generations(mine)
                fut = loop.run_in_executor(loader, store.load, mine)
                inflight.update(dict.fromkeys(mine, fut))
                try:
                    store.install(await fut, generations)
                finally:
                    for p in mine:
                        if inflight.get(p) is fut:
                            del inflight[p]
            for other in others:
                with contextlib.suppress(Exception):  # its caller reports it; this loop reads again
                    await asyncio.shield(other)

    @app.on_partitions_revoked.connect  # type: ignore[misc, arg-type]
    async def on_revoked(app_: Any, revoked: set[Any], **kwargs: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == settings.events_topic}
        health.assigned -= parts
        store.drop(parts)  # read in full again if they come back: another worker may change them meanwhile

    @app.on_partitions_assigned.connect  # type: ignore[misc, arg-type]
    async def on_assigned(app_: Any, assigned: set[Any], **kwargs: Any) -> None:
        health.assigned = {tp.partition for tp in assigned if tp.topic == settings.events_topic}
        store.drop(store.partitions - health.assigned)
        if health.assigned:
            asyncio.ensure_future(_log_errors(recover(set(health.assigned)), "state recovery"))

    async def retried(what: str, step: Any) -> Any:
        """Run ``step()`` with up to settings.error_retries retries; _BatchFailed after that."""
        for attempt in range(settings.error_retries + 1):
            try:
                return await step()
            except Exception as exc:  # noqa: BLE001 - decided below: retry, then on_error
                if attempt == settings.error_retries:
                    raise _BatchFailed(f"{what} failed {attempt + 1} times: {exc!r}") from exc
                metrics.inc("retries")
                log.warning("%s failed (attempt %d of %d), retrying: %r", what, attempt + 1,
                            settings.error_retries + 1, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    async def process(batch: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        metrics.inc("events_in", len(batch))
        metrics.batch(len(batch))
        valid: list[tuple[Event | EraseCommand, Any]] = []
        for ev in batch:
            msg = ev.message
            try:
                valid.append((decode_message(msg.value, msg.key, msg.timestamp, limits), msg))
            except BadInputError as exc:
                await to_dlq(msg, str(exc))
        if not valid:
            return
        await recover({msg.partition for _, msg in valid})
        rec = state.rec
        assert rec is not None
        weights = rec.model.config.weights
        touched: dict[str, UserHistory] = {}
        partition_of: dict[str, int] = {}
        erased: dict[str, int] = {}
        applied: list[Event] = []
        arrivals: list[float] = []
        for cmd, msg in valid:
            p, user = msg.partition, cmd.user_id
            h = touched.get(user)
            if h is None:
                h = UserHistory(user) if user in erased else store.get(p, user)
            if isinstance(cmd, EraseCommand):
                if h.seen((p, msg.offset)):
                    continue
                touched.pop(user, None)
                partition_of.pop(user, None)
                erased[user] = p
                continue
            if h.add(cmd, weights, state.foldin, (p, msg.offset)):
                touched[user] = h
                partition_of[user] = p
                applied.append(cmd)
                arrivals.append(msg.timestamp)
            else:
                metrics.inc("events_duplicate")
        if not touched and not erased:
            return
        try:
            if touched:
                rec, lists = await retried("compute", lambda: loop.run_in_executor(
                    state.executor, state.compute, applied, touched))
            else:
                lists = []
            now = time.time()

            async def publish() -> None:
                for (user, h), items in zip(touched.items(), lists):
                    out = Recommendation(user, items, rec.model_version, rec.index_version, h.events_applied,
                                         h.last_event_id, h.last_event_time, now)
                    await recs_topic.send(key=user.encode(), value=encode_recommendation(out),
                                          partition=partition_of[user])
                    await state_topic.send(key=user.encode(), value=h.encode(), partition=partition_of[user])
                for user, p in erased.items():
                    await recs_topic.send(key=user.encode(), value=None, partition=p)
                    await state_topic.send(key=user.encode(), value=None, partition=p)
                # state and lists are on the broker before these events can be committed as done
                await app.producer.flush()

            await retried("publish", publish)
        except _BatchFailed as exc:
            if settings.on_error == "stop":
                _fatal(f"{exc} (FRESHREC_ON_ERROR=stop)")
            metrics.inc("batches_failed")
            log.error("dead-lettering a batch of %d events: %s", len(valid), exc)
            for cmd, msg in valid:
                await to_dlq(msg, f"batch failed: {exc}")
            await app.producer.flush()
            return
        for user, h in touched.items():
            store.put(partition_of[user], user, h.encode())
        for user, p in erased.items():
            store.delete(p, user)
            log.info("erased user %r (partition %d)", user, p)
        metrics.inc("events_applied", len(applied))
        metrics.inc("lists_out", len(touched))
        metrics.inc("users_erased", len(erased))
        metrics.latencies([(now - t) * 1000.0 for t in arrivals])
        metrics.index_version = rec.index_version

    @app.agent(events_topic)
    async def update(stream: Any) -> None:
        health.agent_running = True
        try:
            async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
                await process(batch)
                health.progress()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a crashed agent never resumes: end the process
            log.exception("event agent crashed")
            _fatal(f"the event agent crashed: {exc!r}")
        finally:
            health.agent_running = False

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

    @app.page("/health")
    async def liveness(web: Any, request: Any) -> Any:
        ok, why = health.live(_lag(app, settings.events_topic))
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

    @app.page("/ready")
    async def readiness(web: Any, request: Any) -> Any:
        ok, why = health.ready(store)
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

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
        loader.shutdown(wait=False)
        log.info("shutting down: %s", metrics.log_line())

    return app


async def _log_errors(coro: Any, what: str) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - the agent retries the same step and decides
        log.warning("%s failed: %r", what, exc)


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
    state = WorkerState(settings, Path(model_root), foldin or FoldInConfig(), health=Health(settings.health_stall_s))
    state.load_initial()
    state.health.model_loaded = True
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

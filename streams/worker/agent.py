"""The event agent: decode -> state -> model -> publish, one micro-batch at a time.

Per micro-batch (``streams.worker.batching.take_batches``: one await per batch):

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
consumes nothing. ``Health`` is what ``/health`` and ``/ready`` report.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn

import faust

from model_core.errors import BadInputError
from model_core.events import Event
from model_core.state import UserHistory
from streams.codec import (
    EraseCommand,
    EventLimits,
    Recommendation,
    decode_message,
    dlq_record,
    encode_recommendation,
)
from streams.settings import Settings
from streams.worker.batching import take_batches
from streams.worker.publisher import Publisher
from streams.worker.userstate import UserStateStore

if TYPE_CHECKING:
    from streams.worker import WorkerState

__all__ = ["EXIT_FATAL", "EventAgent", "Health"]

DLQ_KEY_BYTES = 1024
"""Longest key a dead-letter record keeps (the record says where the original is)."""

log = logging.getLogger("freshrec.worker")

EXIT_FATAL = 70  # the worker stopped itself on an error it cannot contain (restart it)


def fatal(reason: str) -> NoReturn:
    """End the process with EXIT_FATAL: the orchestrator restarts it, and no event is lost
    (nothing unapplied was committed). Never leave a live process that consumes nothing."""
    log.critical("stopping the worker (exit %d): %s", EXIT_FATAL, reason)
    logging.shutdown()
    os._exit(EXIT_FATAL)


class Health:
    """What /health (liveness) and /ready (readiness) report."""

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


class EventAgent:
    """Wires the event agent and the state's rebalance hooks into a Faust app."""

    def __init__(self, app: faust.App, settings: Settings, state: WorkerState) -> None:
        self.app, self.settings, self.state = app, settings, state
        self.metrics, self.health = state.metrics, state.health
        self.events_topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
        self.out = Publisher(settings)
        self.store = UserStateStore(settings)
        self.limits = EventLimits.of(settings)
        self.loader = ThreadPoolExecutor(1, "freshrec-recovery")
        self._inflight: dict[int, asyncio.Future[dict[int, dict[str, bytes]]]] = {}
        app.agent(self.events_topic, name="freshrec.update")(self.run)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self.on_assigned)  # type: ignore[arg-type]

    async def run(self, stream: Any) -> None:
        """The agent: never lets an exception out (Faust would restart it, but its stream would not resume)."""
        self.health.agent_running = True
        try:
            async for batch in take_batches(stream, self.settings.batch_size, self.settings.batch_within_s,
                                            self.on_offset_gap):
                await self.process(batch)
                self.health.progress()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a crashed agent never resumes: end the process
            log.exception("event agent crashed")
            fatal(f"the event agent crashed: {exc!r}")
        finally:
            self.health.agent_running = False

    def on_offset_gap(self, tp: Any, expected: int, missing: int) -> None:
        """Messages skipped before the agent saw them: counted and logged, never silent."""
        self.metrics.inc("offset_gaps", missing)
        log.warning("offset gap on %s[%d]: expected offset %d, got %d: %d messages were skipped before this "
                    "worker saw them (a consumer fault at a rebalance, or retention deleted them unread)",
                    tp.topic, tp.partition, expected, expected + missing, missing)

    def to_dlq(self, dead: list[tuple[Any, str]]) -> None:
        """Queue dead-letter records (delivered with the batch's flush)."""
        for msg, reason in dead:
            key = msg.key[:DLQ_KEY_BYTES] if msg.key else msg.key  # a hostile key must not sink the record
            self.out.produce(self.settings.dlq_topic, key, dlq_record(
                msg.value, reason, topic=msg.topic, partition=msg.partition, offset=msg.offset))

    async def recover(self, partitions: set[int]) -> None:
        """Load the user state of these partitions where it is not in memory (blocking reads, in
        the recovery thread; one read per partition at a time). A partition dropped (revoked)
        while its read ran is read again; a read that failed is started again by the next caller.

        A read installs its result and leaves ``_inflight`` in a done-callback, the moment it
        completes, and callers wait with ``asyncio.wait``, which always yields: a caller never
        finds a finished read still listed as in flight and loops on it.
        """
        loop, store, inflight = asyncio.get_running_loop(), self.store, self._inflight
        while todo := sorted(p for p in partitions if not store.loaded(p)):
            waiting = {inflight[p] for p in todo if p in inflight}
            mine = [p for p in todo if p not in inflight]
            if mine:
                fut = loop.run_in_executor(self.loader, store.load, mine)
                fut.add_done_callback(functools.partial(self._loaded, mine, store.generations(mine)))
                inflight.update(dict.fromkeys(mine, fut))
                waiting.add(fut)
            await asyncio.wait(waiting)
            if mine and (exc := fut.exception()) is not None:
                raise exc  # the caller reports it

    def _loaded(self, parts: list[int], generations: dict[int, int],
                fut: asyncio.Future[dict[int, dict[str, bytes]]]) -> None:
        for p in parts:
            if self._inflight.get(p) is fut:
                del self._inflight[p]
        if not fut.cancelled() and fut.exception() is None:
            self.store.install(fut.result(), generations)

    async def on_revoked(self, app: Any, revoked: set[Any], **kwargs: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.settings.events_topic}
        self.health.assigned -= parts
        self.store.drop(parts)  # read in full again if they come back: another worker may change them meanwhile

    async def on_assigned(self, app: Any, assigned: set[Any], **kwargs: Any) -> None:
        self.health.assigned = {tp.partition for tp in assigned if tp.topic == self.settings.events_topic}
        self.store.drop(self.store.partitions - self.health.assigned)
        if self.health.assigned:
            asyncio.ensure_future(_log_errors(self.recover(set(self.health.assigned)), "state recovery"))

    async def retried(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``step()`` with up to settings.error_retries retries; _BatchFailed after that."""
        retries = self.settings.error_retries
        for attempt in range(retries + 1):
            try:
                return await step()
            except Exception as exc:
                if attempt == retries:
                    raise _BatchFailed(f"{what} failed {attempt + 1} times: {exc!r}") from exc
                self.metrics.inc("retries")
                log.warning("%s failed (attempt %d of %d), retrying: %r", what, attempt + 1, retries + 1, exc)
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    async def process(self, batch: list[Any]) -> None:
        """One micro-batch: decode, apply, compute, publish (see the module docstring)."""
        settings, state, store, metrics = self.settings, self.state, self.store, self.metrics
        loop = asyncio.get_running_loop()
        metrics.inc("events_in", len(batch))
        metrics.batch(len(batch))
        valid: list[tuple[Event | EraseCommand, Any]] = []
        dead: list[tuple[Any, str]] = []
        for ev in batch:
            msg = ev.message
            try:
                valid.append((decode_message(msg.value, msg.key, msg.timestamp, self.limits), msg))
            except BadInputError as exc:
                dead.append((msg, str(exc)))
        for msg, reason in dead:
            log.warning("DLQ %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
        if valid:
            await self.recover({msg.partition for _, msg in valid})
        assert state.rec is not None
        served = state.rec  # the model that makes this batch's lists (a swap may land meanwhile)
        touched: dict[str, UserHistory] = {}
        partition_of: dict[str, int] = {}
        erased: dict[str, int] = {}
        applied: list[Event] = []
        arrivals: list[float] = []
        arrived: dict[str, float] = {}  # user -> broker timestamp of the newest message applied
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
            if served.apply(h, cmd, (p, msg.offset)):
                touched[user] = h
                partition_of[user] = p
                applied.append(cmd)
                arrivals.append(msg.timestamp)
                arrived[user] = msg.timestamp
            else:
                metrics.inc("events_duplicate")
        lists: list[list[tuple[str, float]]] = []
        encoded = {user: h.encode() for user, h in touched.items()}
        recs_topic, state_topic = settings.recommendations_topic, settings.state_topic
        now = time.time()

        async def publish() -> None:
            self.to_dlq(dead)
            # tombstones first: a user erased and then active again in this batch ends with the new state
            for user, p in erased.items():
                self.out.produce(recs_topic, user.encode(), None, p)
                self.out.produce(state_topic, user.encode(), None, p)
            for (user, h), items in zip(touched.items(), lists):
                out = Recommendation(user, items, served.model_version, served.index_version, h.events_applied,
                                     h.last_event_id, h.last_event_time, now, arrived[user])
                key, p = user.encode(), partition_of[user]
                self.out.produce(recs_topic, key, encode_recommendation(out), p)
                self.out.produce(state_topic, key, encoded[user], p)
            # state, lists and dead letters are on the broker before the events can be committed
            await self.out.flush()

        try:
            if touched:
                started = time.perf_counter()
                served, lists = await self.retried("compute", lambda: loop.run_in_executor(
                    state.executor, state.compute, applied, touched))
                now = time.time()
                metrics.stage("compute", time.perf_counter() - started)
            if touched or erased or dead:
                started = time.perf_counter()
                await self.retried("publish", publish)
                metrics.stage("publish", time.perf_counter() - started)
        except _BatchFailed as exc:
            if settings.on_error == "stop":
                fatal(f"{exc} (FRESHREC_ON_ERROR=stop)")
            metrics.inc("batches_failed")
            log.error("dead-lettering a batch of %d events: %s", len(valid), exc)
            self.to_dlq([(msg, f"batch failed: {exc}") for _, msg in valid] + dead)
            await self.out.flush()  # PublishError here ends the agent, and so the process
            metrics.inc("dlq", len(valid) + len(dead))
            return
        metrics.inc("dlq", len(dead))
        for user, p in erased.items():
            store.delete(p, user)
            log.info("erased user %r (partition %d)", user, p)
        for user, value in encoded.items():
            store.put(partition_of[user], user, value)
        metrics.inc("events_applied", len(applied))
        metrics.inc("lists_out", len(touched))
        metrics.inc("users_erased", len(erased))
        metrics.latencies([(now - t) * 1000.0 for t in arrivals])
        metrics.index_version = served.index_version


async def _log_errors(coro: Awaitable[Any], what: str) -> None:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - the agent reads the same partitions again and decides
        log.warning("%s failed: %r", what, exc)

"""One micro-batch of the events topic: decode -> apply -> compute -> publish -> learn.

``BatchProcessor.process`` runs on the consumer thread (``streams.worker.consumer``),
which commits the batch's offsets only after it returned. Each step reads on its own:

1. ``decode``: every message is decoded and validated (``decode_message`` raises
   nothing but BadInputError); a bad one is dead-lettered with the reason and the
   batch goes on;
2. ``apply``: each user's ``UserHistory`` (``UserStateStore``) takes the events; a
   message at or before the user's last applied offset is a re-delivery and changes
   nothing (exactly-once effect, with or without ids); an erase command forgets the
   user, and the model forgets what it keeps under the user's id; each applied event is
   scored against the list this worker last published to its user (live quality,
   ``streams.worker.livequality``), counted once the batch is out;
3. ``compute`` (compute thread, retried): the touched users' new lists, learning
   nothing yet, so a retry changes nothing. If it still fails, the batch's events
   are dead-lettered (``on_error=dlq``: nothing of them was applied, so replaying the
   DLQ applies them once; erase commands are still applied) or the worker stops
   (``on_error=stop``);
4. ``publish``: one list per touched user, the users' state (with the owner's epoch,
   see ``streams.worker.userstate``), the batch's item-side delta (the ranker's examples,
   trending, item graphs, sessions, new items; with an erase's ``forget``), dead letters,
   flushed (retried). A flush that still fails stops the worker: part of the batch may be
   out, and the batch is read again after the restart, its effect applied once on the
   users' state (the item side may then learn part of it twice, or miss it);
5. nothing is learned here: every worker, this one included, learns the batch's delta when
   it reads it back from the deltas topic (``streams.worker.itemside``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from model_core.errors import BadInputError
from model_core.events import Event
from model_core.served.model import ServedModel, Step
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
from streams.worker.consumer import Settle
from streams.worker.health import Health
from streams.worker.livequality import PublishedLists
from streams.worker.metrics import Metrics
from streams.worker.model import WorkerModel
from streams.worker.publisher import Publisher
from streams.worker.userstate import UserStateStore

__all__ = ["EXIT_FATAL", "BatchProcessor", "fatal"]

DLQ_KEY_BYTES = 1024
"""Longest key a dead-letter record keeps (the record says where the original is)."""

EXIT_FATAL = 70  # the worker stopped itself on an error it cannot contain (restart it)

log = logging.getLogger("freshrec.worker")

T = TypeVar("T")


def fatal(reason: str) -> NoReturn:
    """End the process with EXIT_FATAL: the orchestrator restarts it, and no event is lost
    (nothing unapplied was committed). Never leave a live process that consumes nothing."""
    log.critical("stopping the worker (exit %d): %s", EXIT_FATAL, reason)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def broker_time(msg: Any) -> float:
    """A message's broker timestamp in Unix seconds (now when it has none)."""
    kind, ms = msg.timestamp()
    return ms / 1000.0 if kind and ms > 0 else time.time()


class BatchFailedError(Exception):
    """A batch step still failed after its retries."""


@dataclass
class Applied:
    """What ``apply`` made of a batch's valid messages."""

    touched: dict[str, UserHistory] = field(default_factory=dict)  # users with new events, state after them
    partition_of: dict[str, int] = field(default_factory=dict)
    erased: dict[str, tuple[int, int]] = field(default_factory=dict)  # user -> (partition, offset of the erase)
    events: list[Event] = field(default_factory=list)  # the events applied, in order
    arrived: dict[str, float] = field(default_factory=dict)  # user -> broker time of the newest event applied
    arrivals: list[float] = field(default_factory=list)  # broker time of every event applied
    state: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # user -> (partition, state record)
    scored: dict[str, list[int]] = field(default_factory=dict)  # live quality: model version -> [points, hits]
    lists: list[list[tuple[str, float]]] = field(default_factory=list)  # compute's lists, in ``touched`` order
    deltas: list[bytes] = field(default_factory=list)  # item-side delta records (model_core.served.shared)

    def seal(self) -> Applied:
        """Encode each user's final state record once (an erased user's keeps the erase's offset)."""
        for user, (p, offset) in self.erased.items():
            self.state[user] = (p, _erased(user, p, offset))
        for user, h in self.touched.items():
            self.state[user] = (self.partition_of[user], h.encode())
        return self

    def erasures(self) -> Applied:
        """The batch's erasures alone (what a batch whose compute failed still applies)."""
        return Applied(erased=dict(self.erased), state={u: (p, _erased(u, p, o)) for u, (p, o) in self.erased.items()},
                       deltas=list(self.deltas))


def _erased(user: str, partition: int, offset: int) -> bytes:
    """An erased user's state record: empty, keeping the erase's offset (earlier events stay applied)."""
    return UserHistory(user, position=(partition, offset)).encode()


class BatchProcessor:
    """Decode, apply, compute, publish and learn one batch (the consumer thread calls ``process``)."""

    def __init__(self, settings: Settings, model: WorkerModel, store: UserStateStore, out: Publisher,
                 health: Health) -> None:
        self.settings, self.model, self.store, self.out, self.health = settings, model, store, out, health
        self.metrics: Metrics = model.metrics
        self.limits = EventLimits.of(settings)
        self.published = PublishedLists(settings.live_quality_users)  # live quality's last list per user

    def process(self, messages: list[Any]) -> Callable[[], None] | None:
        """One batch, its output on the broker; returns what to do once its offsets are committed
        (synchronously), if anything."""
        return self.begin(messages)()

    def begin(self, messages: list[Any], while_computing: Callable[[], None] | None = None) -> Settle:
        """One batch up to its output queued; returns its ``settle``, which waits until the output is
        on the broker (retried; still failing stops the worker) and returns what to do once the
        batch's offsets are committed, if anything.

        ``while_computing`` runs on this thread while the compute thread makes the batch's lists:
        the consumer settles the previous batch there, so that batch's flush overlaps this one's
        compute. The batch is applied to the state store before ``settle`` returns (the next batch
        reads it); if its output then fails to reach the broker the worker stops, and the batch
        is read again after the restart.
        """
        self.metrics.inc("events_in", len(messages))
        self.metrics.batch(len(messages))
        valid, dead = self.decode(messages)
        work = self.apply(valid)
        rec, plan = self.model.rec, None
        if work.erased:  # this worker forgets at once; the delta makes every other forget too
            work.deltas += self._on_compute(self.model.forget, list(work.erased))
        if work.touched:
            try:
                rec, plan = self.compute(work, while_computing)
            except BatchFailedError as exc:
                self.dead_letter(valid, dead, work, exc)
                after = self._after_erase(work)
                return lambda: after
        elif while_computing is not None:
            while_computing()
        assert rec is not None
        flush = self.publish(work, rec, plan.lists if plan else [], dead, plan.sources if plan else None, wait=False)
        self.account(work, rec)
        self.health.progress()
        after = self._after_erase(work)

        def settle() -> Callable[[], None] | None:
            flush()
            return after

        return settle

    # -- the steps --------------------------------------------------------------------------------

    def decode(self, messages: list[Any]) -> tuple[list[tuple[Event | EraseCommand, Any]], list[tuple[Any, str]]]:
        """Valid (command, message) pairs and dead (message, reason) pairs."""
        valid: list[tuple[Event | EraseCommand, Any]] = []
        dead: list[tuple[Any, str]] = []
        for msg in messages:
            try:
                valid.append((decode_message(msg.value(), msg.key(), broker_time(msg), self.limits), msg))
            except BadInputError as exc:
                dead.append((msg, str(exc)))
                log.warning("DLQ %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
        return valid, dead

    def apply(self, valid: list[tuple[Event | EraseCommand, Any]]) -> Applied:
        """Apply the batch to copies of its users' state (the store changes only in ``account``)."""
        assert self.model.rec is not None
        served, store, work = self.model.rec, self.store, Applied()
        for cmd, msg in valid:
            p, offset, user = msg.partition(), msg.offset(), cmd.user_id
            h = work.touched.get(user)
            if h is None:
                h = UserHistory(user, position=work.erased[user]) if user in work.erased else store.get(p, user)
            if isinstance(cmd, EraseCommand):
                if h.seen((p, offset)):
                    continue
                work.touched.pop(user, None)
                work.partition_of.pop(user, None)
                work.erased[user] = (p, offset)
                continue
            # live quality: a point against the list this worker last published to the user (none
            # after an erase in this batch) when the item is new to the user
            last = None if user in work.erased else self.published.get(user, store.epoch(p))
            if last is not None and (cmd.item_id in h.entries or cmd.item_id in h.purchased):
                last = None
            if served.apply(h, cmd, (p, offset)):
                if last is not None:
                    counts = work.scored.setdefault(last[0], [0, 0])
                    counts[0] += 1
                    counts[1] += cmd.item_id in last[1]
                t = broker_time(msg)
                work.touched[user] = h
                work.partition_of[user] = p
                work.events.append(cmd)
                work.arrivals.append(t)
                work.arrived[user] = t
            else:
                self.metrics.inc("events_duplicate")
        return work.seal()

    def compute(self, work: Applied, meanwhile: Callable[[], None] | None = None) -> tuple[ServedModel, Step]:
        """The touched users' lists and the batch's delta records on the compute thread (retried;
        learns nothing). ``meanwhile`` runs on this thread while the first attempt computes."""

        def timed() -> tuple[tuple[ServedModel, Step, list[bytes]], float]:
            started = time.perf_counter()
            return self.model.plan(work.events, work.touched), time.perf_counter() - started

        first = [self.model.executor.submit(timed)]
        if meanwhile is not None:
            meanwhile()

        def attempt() -> tuple[tuple[ServedModel, Step, list[bytes]], float]:
            return first.pop().result() if first else self._on_compute(timed)

        (rec, plan, wire), seconds = self._retried("compute", attempt)
        self.metrics.stage("compute", seconds)
        work.lists = plan.lists  # what ``account`` remembers as published (live quality)
        work.deltas += wire
        return rec, plan

    def publish(self, work: Applied, rec: ServedModel, lists: list[list[tuple[str, float]]],
                dead: list[tuple[Any, str]], sources: list[list[tuple[str, ...]]] | None = None, *,
                wait: bool = True) -> Callable[[], None]:
        """Lists, state and dead letters, flushed (retried; still failing stops the worker).

        With ``wait=False`` they are only queued, and the flush is the returned step (a failed
        flush queues them all again, as a retry does); else the step has nothing left to do.
        """
        if not (work.touched or work.erased or dead or work.deltas):
            return lambda: None
        s, out, store = self.settings, self.out, self.store
        now = time.time()
        started = time.perf_counter()

        def queue() -> None:
            self.to_dlq(dead)
            # erasures first: a user erased and then active again in this batch ends with the new state
            for user, (p, _) in work.erased.items():
                out.produce(s.recommendations_topic, user.encode(), None, p)
            for n, ((user, h), items) in enumerate(zip(work.touched.items(), lists)):
                rec_out = Recommendation(user, items, rec.model_version, rec.index_version, h.events_applied,
                                         h.last_event_id, h.last_event_time, now, work.arrived[user],
                                         sources=sources[n] if sources else None)
                out.produce(s.recommendations_topic, user.encode(), encode_recommendation(rec_out),
                            work.partition_of[user])
            for user, (p, value) in work.state.items():
                out.produce(s.state_topic, user.encode(), value, p, store.headers(p))
            for delta in work.deltas:
                out.produce(s.deltas_topic, None, delta, 0)

        def send() -> None:
            queue()
            out.flush()  # state, lists and dead letters are on the broker before the events are committed

        attempts: list[Callable[[], None]] = []  # the first attempt, when it is not ``send``
        if not wait:
            try:
                queue()
                attempts.append(out.flush)
            except Exception as exc:  # noqa: BLE001 - the flush step's first attempt, retried there
                failed = exc

                def fail() -> None:
                    raise failed

                attempts.append(fail)
        queued_s = time.perf_counter() - started

        def flush() -> None:
            flushed = time.perf_counter()
            try:
                self._retried("publish", lambda: (attempts.pop() if attempts else send)())
            except BatchFailedError as exc:
                raise BatchFailedError(f"{exc}: stopping, part of the batch may be out; it is read again after "
                                       "the restart and its effect applied once") from exc
            self.metrics.stage("publish", queued_s + time.perf_counter() - flushed)
            self.metrics.latencies([(now - t) * 1000.0 for t in work.arrivals])

        if wait:
            flush()
            return lambda: None
        return flush

    def account(self, work: Applied, rec: ServedModel) -> None:
        """The batch is out: the store takes its state, live quality its lists, and the metrics its counts."""
        store, metrics, published = self.store, self.metrics, self.published
        for user, (p, value) in work.state.items():
            store.put(p, user, value)
        for user, (p, _) in work.erased.items():
            published.forget(user)
            log.info("erased user %r (partition %d)", user, p)
        # erasures first: a user erased and then active again in this batch keeps the new list
        for (user, _), items in zip(work.touched.items(), work.lists):
            published.put(user, rec.model_version, store.epoch(work.partition_of[user]), [i for i, _ in items])
        for version, (points, hits) in work.scored.items():
            metrics.live(version, points, hits)
        metrics.inc("events_applied", len(work.events))
        metrics.inc("lists_out", len(work.touched))
        metrics.inc("users_erased", len(work.erased))
        metrics.index_version = rec.index_version

    def dead_letter(self, valid: list[tuple[Event | EraseCommand, Any]], dead: list[tuple[Any, str]],
                    work: Applied, exc: BatchFailedError) -> None:
        """A batch whose compute failed: its events go to the DLQ with the reason, its erasures still
        apply, and nothing else of it changes any state (``on_error=stop``: the worker stops)."""
        if self.settings.on_error == "stop":
            fatal(f"{exc} (FRESHREC_ON_ERROR=stop)")
        events = [(msg, f"batch failed: {exc}") for cmd, msg in valid if not isinstance(cmd, EraseCommand)]
        self.metrics.inc("batches_failed")
        log.error("dead-lettering a batch of %d events (its erase commands are still applied): %s",
                  len(events), exc)
        erasures = work.erasures()
        assert self.model.rec is not None
        self.publish(erasures, self.model.rec, [], events + dead)
        self.account(erasures, self.model.rec)

    def to_dlq(self, dead: list[tuple[Any, str]]) -> None:
        """Queue dead-letter records (delivered with the batch's flush)."""
        for msg, reason in dead:
            key = msg.key()
            key = key[:DLQ_KEY_BYTES] if key else key  # a hostile key must not sink the record
            self.out.produce(self.settings.dlq_topic, key, dlq_record(
                msg.value(), reason, topic=msg.topic(), partition=msg.partition(), offset=msg.offset()))
        self.metrics.inc("dlq", len(dead))

    # -- helpers ----------------------------------------------------------------------------------

    def _after_erase(self, work: Applied) -> Callable[[], None] | None:
        """Once the erase commands' offsets are committed, the users' state records become tombstones."""
        if not work.erased:
            return None
        erased = {u: p for u, (p, _) in work.erased.items() if u not in work.touched}

        def tombstones() -> None:
            for user, p in erased.items():
                if self.store.loaded(p):
                    self.out.produce(self.settings.state_topic, user.encode(), None, p, self.store.headers(p))
                    self.store.delete(p, user)

        return tombstones

    def _on_compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the compute thread and wait (the consumer thread has nothing else to do)."""
        return self.model.executor.submit(fn, *args).result()

    def _retried(self, what: str, step: Callable[[], T]) -> T:
        """``step()`` with up to ``error_retries`` retries; BatchFailedError after that."""
        retries = self.settings.error_retries
        for attempt in range(retries + 1):
            try:
                return step()
            except Exception as exc:
                if attempt == retries:
                    raise BatchFailedError(f"{what} failed {attempt + 1} times: {exc!r}") from exc
                self.metrics.inc("retries")
                log.warning("%s failed (attempt %d of %d), retrying: %r", what, attempt + 1, retries + 1, exc)
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

"""The events topic's consumer: one thread owns a librdkafka consumer (confluent-kafka).

Its loop, and nothing else, reads the events topic::

    consume batch N -> decode and apply it, start its compute -> meanwhile: flush batch N-1, commit
    its offsets -> N's lists ready: queue its output -> consume batch N+1 -> ...

One batch is in flight at a time: its output is queued (librdkafka sends it at once)
but not yet known to be on the broker; its flush waits while the next batch computes,
and its offsets are committed only after that flush. Rebalance callbacks run inside
``consume()``, on this thread, and settle the batch in flight first (flush, commit),
so never in the middle of a batch: when one runs, the previous batch has been
flushed and committed, and the next one has not been taken. There is no read offset to
keep, no queue to clear, no generation stamp and no seek:

- ``on_assign``: each newly assigned partition starts exactly at its committed
  offset (or at the log start when it has none); the owner's state for it is
  loaded first (``PartitionHooks.assigned``);
- ``on_revoke``: the partitions' processed offsets are committed synchronously,
  then their state is dropped (``PartitionHooks.revoked``);
- ``on_lost`` (the group moved on without us: a session that expired): state is
  dropped and nothing is committed.

Messages taken for a batch before a callback changed their partition's
assignment are dropped unprocessed: the partition's owner reads them again from
the committed offset.

Within an assignment a partition's messages have consecutive offsets (the events
topic is neither compacted nor written transactionally by freshrec). A message
past the expected offset is a fault: if the log start moved past the expected
offset, retention deleted events before they were read (logged, counted,
``freshrec_events_expired_total``); otherwise ``OffsetGapError`` stops the worker
(exit 70), because going on would commit past events never applied.
``offset_gaps=allow`` accepts gaps, for topics that other producers write with
transactions (their commit markers take offsets).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from model_core.errors import FreshrecError
from streams.kafka import client_config, is_error
from streams.settings import Settings
from streams.worker.metrics import Metrics

__all__ = ["EventConsumer", "OffsetGapError", "PartitionHooks", "Settle"]

Settle = Callable[[], Callable[[], None] | None]
"""A batch's last step: wait until its output is on the broker, then say what to run once its
offsets are committed (None: nothing)."""

log = logging.getLogger("freshrec.consumer")


class OffsetGapError(FreshrecError):
    """A partition's messages skipped offsets that were neither read nor deleted by retention."""


class PartitionHooks(Protocol):
    """What the consumer tells the worker about its partitions (called on the consumer thread)."""

    def assigned(self, partitions: Collection[int]) -> None:
        """Partitions this worker now owns: load their state before their first batch."""

    def revoked(self, partitions: Collection[int], lost: bool) -> None:
        """Partitions this worker no longer owns (``lost``: the group moved on without it)."""


class EventConsumer:
    """Reads the events topic for the worker's consumer group, one batch at a time.

    ``begin(messages, meanwhile)`` handles a batch of confluent-kafka messages up to its
    output queued, calling ``meanwhile()`` (this consumer settling the previous batch)
    while the batch computes, and returns the batch's ``settle``; it raises only for
    a fault that must stop the worker. ``settle()`` returns once the output is on the
    broker; only then are the batch's offsets committed: asynchronously, or
    synchronously when ``settle`` returned an action to run once they are (then the
    action runs). ``run`` is the thread's body; ``stop`` asks it to finish the batch
    in hand, commit and leave the group.
    """

    def __init__(self, settings: Settings, begin: Callable[[list[Any], Callable[[], None]], Settle],
                 hooks: PartitionHooks,
                 metrics: Metrics | None = None, *, group: str | None = None) -> None:
        from confluent_kafka import Consumer

        self.settings, self.begin, self.hooks = settings, begin, hooks
        self.metrics = metrics
        self.topic = settings.events_topic
        self.cooperative = settings.assignment == "cooperative-sticky"
        self._consumer = Consumer(client_config(settings, "consumer", **{
            "group.id": group or settings.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "partition.assignment.strategy": settings.assignment,
        }))
        # The embedded broker wedges its group for good when a member leaves while another one is
        # joining (docs/broker.md): there the worker stops without leaving, and the group moves
        # its partitions once the session times out, as after a kill.
        self.leave_on_close = settings.profile != "embedded"
        self.assigned: set[int] = set()
        self._next: dict[int, int] = {}  # partition -> offset its next message must have
        self._done: dict[int, int] = {}  # partition -> offset after the last processed message
        self._touched: set[int] = set()  # partitions whose assignment changed during a consume()
        self._pending: tuple[list[Any], Settle] | None = None  # the batch in flight and its settle
        self._stop = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._lag: int | None = None
        self._lag_at = 0.0

    # -- rebalance callbacks (inside consume(), on this thread) ----------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._settle()
        parts = sorted(tp.partition for tp in partitions if tp.topic == self.topic)
        self._touched.update(parts)
        if parts:
            log.info("assigned %s[%s] (%s)", self.topic, ",".join(map(str, parts)),
                     "incremental" if self.cooperative else "eager")
        self.hooks.assigned(parts)
        committed = consumer.committed([TopicPartition(self.topic, p) for p in parts], timeout=30) if parts else []
        start = []
        for tp in committed:
            if tp.offset >= 0:
                self._next[tp.partition] = tp.offset
                start.append(TopicPartition(self.topic, tp.partition, tp.offset))
            else:  # never committed: the log start, which the first message must be at
                low, _ = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=30)
                self._next[tp.partition] = max(low, 0)
                start.append(TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING))
            self._done.pop(tp.partition, None)
        self.assigned.update(parts)
        if self.cooperative:
            consumer.incremental_assign(start)
        else:
            consumer.assign(start)
        for tp in start:
            log.info("%s[%d] starts at offset %d (%s)", self.topic, tp.partition, self._next[tp.partition],
                     "committed" if tp.offset >= 0 else "log start: nothing committed yet")

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._release(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._release(consumer, partitions, lost=True)

    def _release(self, consumer: Any, partitions: list[Any], lost: bool) -> None:
        self._settle()  # the batch in flight is flushed and committed first: never across a rebalance
        parts = sorted(tp.partition for tp in partitions if tp.topic == self.topic)
        self._touched.update(parts)
        if parts and not lost:
            self._commit(parts, asynchronous=False)
        if parts:
            log.info("%s %s[%s]%s", "lost" if lost else "revoked", self.topic, ",".join(map(str, parts)),
                     ": the group moved on without this worker; nothing committed" if lost else "")
        self.assigned.difference_update(parts)
        for p in parts:
            self._next.pop(p, None)
            self._done.pop(p, None)
        self.hooks.revoked(parts, lost)
        if self.cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    # -- the loop ---------------------------------------------------------------------------------

    def _commit(self, parts: Collection[int] | None = None, *, asynchronous: bool = False) -> bool:
        """Commit the processed offsets (of ``parts``, or all); False when a synchronous commit failed."""
        from confluent_kafka import KafkaException, TopicPartition

        done = self._done if parts is None else {p: o for p, o in self._done.items() if p in parts}
        if not done:
            return True
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(done.items())]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return True
            failed = [tp for tp in self._consumer.commit(offsets=offsets, asynchronous=False) if tp.error]
            if not failed:
                return True
            why = "; ".join(f"[{tp.partition}] {tp.error.str()}" for tp in failed)  # type: ignore[union-attr]
        except KafkaException as exc:
            why = exc.args[0].str()
        # the next commit (or the partition's next owner, reading again) covers it
        log.warning("commit of %s failed: %s (those events are read again by the partition's owner; their "
                    "effect is applied once: state records the offsets it applied)",
                    {tp.partition: tp.offset for tp in offsets}, why)
        return False

    def _take(self) -> list[Any]:
        """One micro-batch: up to ``batch_size`` messages, within ``batch_within_s`` of the first."""
        s = self.settings
        batch = [m for m in self._consumer.consume(1, 0.5) if not is_error(m, self.topic)]
        self._touched.clear()  # a callback in that call ran before its message was fetched
        if batch:
            deadline = time.monotonic() + s.batch_within_s
            while len(batch) < s.batch_size and (left := deadline - time.monotonic()) > 0:
                got = self._consumer.consume(s.batch_size - len(batch), left)
                if self._touched:  # a rebalance ran: what was taken for those partitions is re-read
                    batch = [m for m in batch if m.partition() not in self._touched]
                    self._touched.clear()
                batch.extend(m for m in got if not is_error(m, self.topic))
                if not got:
                    break
        return [m for m in batch if m.partition() in self.assigned]

    def _check_offsets(self, batch: list[Any]) -> None:
        """Note each message's offset; a gap stops the worker unless retention explains it."""
        from confluent_kafka import TopicPartition

        for m in batch:
            p, offset = m.partition(), m.offset()
            expected = self._next.get(p)
            self._next[p] = max(offset + 1, expected or 0)
            if expected is None or offset == expected:
                continue
            if offset < expected:  # cannot happen without a seek; never applied twice anyway (state offsets)
                log.warning("%s[%d]: offset %d arrived after %d", self.topic, p, offset, expected - 1)
                continue
            missing = offset - expected
            low, _ = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            if low >= offset and self.settings.offset_gaps != "allow":
                if self.metrics is not None:
                    self.metrics.inc("events_expired", missing)
                log.error("%s[%d]: %d events (offsets %d-%d) were deleted by retention before this worker "
                          "read them; the topic's retention is shorter than the worker's lag", self.topic, p,
                          missing, expected, offset - 1)
                continue
            if self.settings.offset_gaps == "allow":
                log.info("%s[%d]: offsets %d-%d skipped (FRESHREC_OFFSET_GAPS=allow)", self.topic, p, expected,
                         offset - 1)
                continue
            raise OffsetGapError(
                f"offset gap on {self.topic}[{p}]: expected offset {expected}, got {offset}: {missing} messages "
                f"were skipped before this worker saw them (log start {low}); stopping rather than commit past "
                "them")

    def _settle(self) -> None:
        """The batch in flight: wait until its output is on the broker, then commit its offsets
        (and run its after-commit action)."""
        if self._pending is None:
            return
        batch, settle = self._pending
        self._pending = None
        after = settle()
        for m in batch:
            self._done[m.partition()] = m.offset() + 1
        if after is None:
            self._commit(asynchronous=True)
        elif self._commit(asynchronous=False):
            after()

    def run(self) -> None:
        """The consumer thread: batches until ``stop``; then a last commit and a clean leave."""
        c = self._consumer
        try:
            c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self._stop.is_set():
                batch = self._take()
                self._note_lag()
                if not batch:
                    self._settle()
                    continue
                self._check_offsets(batch)
                self._pending = (batch, self.begin(batch, self._settle))
            self._settle()
            self._commit(asynchronous=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the worker, which stops the process
            self.error = exc
        finally:
            try:
                if self.leave_on_close:
                    c.close()  # leaves the group (on_revoke runs: a last synchronous commit)
            except Exception as exc:  # noqa: BLE001 - closing after a fault: report the fault, not this
                log.warning("closing the events consumer: %r", exc)
            self.stopped.set()

    def stop(self) -> None:
        self._stop.set()

    def lag(self) -> int | None:
        """Events on this worker's partitions not yet read, as of the consumer's last turn.

        Computed on the consumer thread (``_note_lag``): a call into the consumer from another
        thread can deadlock with librdkafka's callbacks, which need the GIL.
        """
        return self._lag

    def _note_lag(self) -> None:
        """From the last fetches' high watermarks (no broker request)."""
        from confluent_kafka import TopicPartition

        now = time.monotonic()
        if now < self._lag_at:
            return
        self._lag_at = now + 0.5
        try:
            total = 0
            for p in self.assigned:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
                nxt = self._next.get(p)
                if high is not None and high >= 0 and nxt is not None:
                    total += max(0, high - nxt)
            self._lag = total
        except Exception:  # noqa: BLE001 - metrics must never break the worker
            self._lag = None

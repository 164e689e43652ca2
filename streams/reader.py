"""One bounded topic reader for every command and worker part that reads a topic itself.

The trainer, the archive, the workers' state recovery and catalog listener, and the
recommendation client all read through :class:`TopicReader`; they differ only in
its parameters::

    which partitions   partitions=None (all) or a set
    where to start     start="beginning" | "end" | {partition: offset} | Since(unix_s)
                       (with group=: the group's committed offsets, start where none)
    where to stop      until="follow"   never (until close() or a stop event)
                             "drain"    no record for idle_s seconds
                             "marker"   a marker record the reader writes first to each
                                        partition came back (needs no end offset)
                             "end"      the end offsets captured when the read began

Without ``group`` the reader assigns its partitions itself: no group join, a
throwaway group id, nothing committed. Error events are handled in one place
(``streams.kafka.is_error``: skipped, or BrokerUnavailableError when fatal or the
topic is gone), a bounded read raises BrokerUnavailableError past ``timeout_s``, and
a long bounded read logs its progress every 10 s. Records come in batches, raw:
callers decode them, and count what they could not use with :meth:`TopicReader.skip`.

::

    with TopicReader(settings, settings.state_topic, partitions=[0], until="marker") as reader:
        for batch in reader.batches():
            for r in batch:
                state[r.key] = r.value

The embedded broker under-reports end offsets (docs/broker.md), so ``until="end"``
there reads on past the reported ends until a record written after the read began
arrives, or nothing arrives for ``idle_s``; ``until="marker"`` is exact on every broker
but writes to the topic (a record with key :data:`MARKER_KEY`, never yielded).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, Union

from streams.errors import BrokerUnavailableError, ConfigError
from streams.kafka import client_config, is_error
from streams.settings import Settings

__all__ = ["MARKER_KEY", "Record", "Since", "Start", "TopicReader", "Until"]

log = logging.getLogger("freshrec.reader")

MARKER_KEY = b"\x00freshrec-recovery-marker"
"""Key of the records that end a marker read (never a user id: user ids are valid text);
a reader never yields them."""

PROGRESS_EVERY_S = 10.0
_PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF

Until = Literal["follow", "drain", "marker", "end"]


@dataclass(frozen=True)
class Since:
    """Start at the first record written at or after ``unix_s`` (seconds since the epoch)."""

    unix_s: float


Start = Union[Literal["beginning", "end"], Mapping[int, int], Since]
"""Where a read starts: the beginning or end of each partition, an offset per partition
(partitions not named start at the beginning), or a time (``offsets_for_times``)."""


class Record(NamedTuple):
    """One record as stored: ``timestamp`` in seconds since the epoch, None when it has none."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: float | None
    headers: list[tuple[str, bytes]] | None = None


class TopicReader:
    """Reads ``topic`` from ``start`` until ``until``; see the module docstring.

    ``idle_s``: quiet time that ends a drain (and, on the embedded broker, an ``end`` read).
    ``timeout_s``: a bounded read (not ``follow``) that has not finished by then raises
    BrokerUnavailableError; None: no bound. ``stall_s``: so does one that receives nothing
    for this long. ``batch``: most records per batch; ``poll_s``: how long one poll waits.
    ``name`` appears in the throwaway group id and in log lines. ``fetch_wait_ms``: the
    consumer's ``fetch.wait.max.ms`` (default: the profile's). The constructor connects,
    (writes the markers,) and assigns; BrokerUnavailableError when the broker does not
    answer within ``connect_timeout_s`` or the topic does not exist.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        partitions: Collection[int] | None = None,
        start: Start = "beginning",
        until: Until = "follow",
        group: str | None = None,
        idle_s: float = 2.0,
        timeout_s: float | None = 300.0,
        stall_s: float | None = None,
        connect_timeout_s: float = 10.0,
        batch: int = 5000,
        poll_s: float = 0.2,
        name: str = "reader",
        eof: bool = False,
        fetch_wait_ms: int | None = None,
    ) -> None:
        if until not in ("follow", "drain", "marker", "end"):
            raise ConfigError(f"until={until!r} is not one of follow, drain, marker, end")
        if group is not None and (until in ("marker", "end") or partitions is not None
                                  or start not in ("beginning", "end")):
            raise ConfigError("a group reader takes all partitions from the group and starts at its "
                              "committed offsets (start: 'beginning' or 'end' where none); it cannot "
                              "read to a marker or to the end offsets")
        if idle_s <= 0 or batch < 1 or poll_s < 0:
            raise ConfigError("idle_s must be > 0, batch >= 1 and poll_s >= 0")
        self.settings, self.topic, self.until, self.group = settings, topic, until, group
        self.idle_s, self.timeout_s, self.stall_s, self.batch, self.poll_s = idle_s, timeout_s, stall_s, batch, poll_s
        self.name = name
        self.records = 0
        """Records yielded so far."""
        self.skipped = 0
        """Records the caller could not use (:meth:`skip`)."""
        self.reasons: Counter[str] = Counter()
        """Why they were skipped (first 120 characters of each reason)."""
        self.errors = 0
        """Non-fatal error events skipped."""
        self.expected: int | None = None
        """``until="end"``: records between the start and the end offsets (as reported)."""
        self.last_record_at: float | None = None
        """``time.monotonic()`` of the last poll that returned a record."""
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._last_activity = self._t0
        self._next_note = self._t0 + PROGRESS_EVERY_S
        self._pending: set[int] = set()  # marker / end: partitions not finished
        self.markers: dict[int, int] = {}  # marker: partition -> offset of the marker this read wrote
        self._ends: dict[int, int] = {}  # end: the end offset of each partition at the start
        self._passed_end: set[int] = set()
        self._exact_ends = settings.profile != "embedded"
        self._since_ms: int | None = None
        self._nonce = uuid.uuid4().hex.encode()
        self._closed = False
        self._assigned = group is None
        self.eof = eof
        self.fetch_wait_ms = fetch_wait_ms
        self.at_end: dict[int, bool] = {}
        """``eof=True``: partition -> whether it reported its end since its last record."""
        self.done = False
        """True once a bounded read has finished (nothing more is yielded)."""
        self._consumer = self._open(partitions, start, connect_timeout_s)

    # ------------------------------------------------------------------ opening

    def _open(self, partitions: Collection[int] | None, start: Start, connect_timeout_s: float) -> Any:
        from confluent_kafka import Consumer, KafkaException

        extra: dict[str, Any] = {"enable.partition.eof": self.eof}
        if self.fetch_wait_ms is not None:
            extra["fetch.wait.max.ms"] = self.fetch_wait_ms
        if self.group is None:
            extra.update({"group.id": f"freshrec-{self.name.replace(' ', '-')}-{uuid.uuid4().hex[:12]}",
                          "enable.auto.commit": False})
        else:
            extra.update({"group.id": self.group, "auto.offset.reset": "earliest" if start == "beginning" else "latest"})
        try:
            consumer = Consumer(client_config(self.settings, "consumer", **extra))
        except KafkaException as exc:
            raise BrokerUnavailableError(f"cannot read {self.topic}: {exc.args[0]}") from None
        try:
            if self.group is not None:
                self._metadata(consumer, connect_timeout_s)
                consumer.subscribe([self.topic], on_assign=self._on_assign)
            else:
                self._assign(consumer, partitions, start, connect_timeout_s)
        except BaseException:
            consumer.close()
            raise
        return consumer

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._assigned = True  # a drain's quiet time counts from the group join
        self._last_activity = time.monotonic()
        if self.eof:
            self.at_end.update({tp.partition: False for tp in partitions})

    def _metadata(self, consumer: Any, timeout: float) -> list[int]:
        """The topic's partitions; BrokerUnavailableError when no broker answers or it does not exist."""
        from confluent_kafka import KafkaException

        try:
            md = consumer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {self.settings.brokers} within {timeout:.0f}s "
                f"(reading {self.topic}): {exc.args[0]}") from None
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise BrokerUnavailableError(f"topic {self.topic} does not exist at {self.settings.brokers}")
        return sorted(tmd.partitions)

    def _assign(self, consumer: Any, partitions: Collection[int] | None, start: Start, timeout: float) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

        # metadata first: assigned before the partition leaders are known, librdkafka waits a
        # fixed 500 ms before it looks up the start offsets
        existing = self._metadata(consumer, timeout)
        parts = existing if partitions is None else sorted(set(partitions))
        missing = sorted(set(parts) - set(existing))
        if missing:
            raise ConfigError(f"{self.topic} has no partitions {missing} (it has {len(existing)})")
        if isinstance(start, Since):
            self._since_ms = int(start.unix_s * 1000)
            starts = {p: OFFSET_BEGINNING for p in parts}
            try:
                found = consumer.offsets_for_times([TopicPartition(self.topic, p, self._since_ms) for p in parts],
                                                   timeout=timeout)
            except KafkaException as exc:  # the timestamp filter in poll() still bounds the read
                log.warning("offsets of %s not found by time (%s); reading from the start", self.topic, exc)
            else:
                # -1: nothing that recent; a follow or drain read starts at the end there
                starts.update({tp.partition: tp.offset if tp.offset >= 0 else OFFSET_END for tp in found})
        elif start == "beginning":
            starts = {p: OFFSET_BEGINNING for p in parts}
        elif start == "end":
            starts = {p: OFFSET_END for p in parts}
        elif isinstance(start, Mapping):
            starts = {p: int(start.get(p, OFFSET_BEGINNING)) for p in parts}
        else:
            raise ConfigError(f"start={start!r} is not 'beginning', 'end', offsets or Since(...)")

        if self.until == "marker":
            self._write_markers(parts, timeout)
        if self.until == "end":
            for p in parts:
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout)
                except KafkaException as exc:
                    raise BrokerUnavailableError(f"cannot read the end offsets of {self.topic}: {exc.args[0]}") from None
                first = {OFFSET_BEGINNING: low, OFFSET_END: high}.get(starts[p], starts[p])
                if high > max(first, low):
                    self._ends[p], starts[p] = high, max(first, low)
            self.expected = sum(self._ends[p] - starts[p] for p in self._ends)
            parts = sorted(self._ends)
            if not parts:
                self.done = True
                log.info("%s: %s holds no records to read", self.name, self.topic)
        if self.until in ("marker", "end"):
            self._pending = set(parts)
        if parts:
            consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in parts])
            if self.eof:
                self.at_end = dict.fromkeys(parts, False)

    def _write_markers(self, parts: list[int], timeout: float) -> None:
        from confluent_kafka import Producer

        from streams.kafka import produce

        # not idempotent: a repeated marker is harmless, and a new idempotent producer waits
        # ~0.5 s for its producer id (librdkafka retries the request on a 500 ms timer)
        producer = Producer(client_config(self.settings, "producer", **{"enable.idempotence": False}))

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.markers[msg.partition()] = msg.offset()

        for p in parts:
            produce(producer, self.topic, self._nonce, MARKER_KEY, partition=p, on_delivery=delivered)
        if producer.flush(self.timeout_s or timeout) != 0 or len(self.markers) < len(parts):
            raise BrokerUnavailableError(f"cannot write read markers to {self.topic} partitions {parts}")

    # ------------------------------------------------------------------ reading

    def poll(self, timeout: float | None = None) -> list[Record]:
        """The records one fetch returns within ``timeout`` seconds (default ``poll_s``),
        at most ``batch``; [] when none came or the read is done. Raises
        BrokerUnavailableError on a fatal error or when a bounded read runs out of time."""
        if self._closed:
            raise BrokerUnavailableError(f"the reader of {self.topic} is closed")
        if self.done:
            return []
        # librdkafka's consume(n, t) waits all of t unless n messages come: wait for the first one
        # only, then take what is already fetched
        msgs = self._consumer.consume(1, timeout=self.poll_s if timeout is None else max(0.0, timeout))
        if msgs and self.batch > 1:
            msgs += self._consumer.consume(self.batch - 1, timeout=0)
        now = time.monotonic()
        bounded = self.until in ("marker", "end")
        out: list[Record] = []
        for msg in msgs:
            err = msg.error()
            if err is not None and err.code() == _PARTITION_EOF:
                self.at_end[int(msg.partition())] = True
                continue
            if is_error(msg, self.topic):
                self.errors += 1
                log.warning("%s: reading %s: %s", self.name, self.topic, msg.error().str())
                continue
            self._last_activity = now
            p, off, key = int(msg.partition()), int(msg.offset()), msg.key()
            if self.eof:
                self.at_end[p] = False
            _, ts_ms = msg.timestamp()
            if bounded and p not in self._pending:
                continue  # finished: what follows is beyond this read
            if self.until == "end":
                if ts_ms > self.started_at * 1000:  # written after the read began: it ends there
                    self._pending.discard(p)
                    continue
                if off >= self._ends[p] - 1:
                    self._passed_end.add(p)
                    if self._exact_ends:
                        self._pending.discard(p)
            if key == MARKER_KEY:
                if self.until == "marker" and msg.value() == self._nonce:
                    self._pending.discard(p)
                continue
            if self._since_ms is not None and 0 < ts_ms < self._since_ms:
                continue  # older than asked for (offsets_for_times failed, or an out-of-order time)
            out.append(Record(key, msg.value(), p, off, ts_ms / 1000.0 if ts_ms > 0 else None, msg.headers()))
        if out:
            self.records += len(out)
            self.last_record_at = now
        self._check(now)
        return out

    @property
    def caught_up(self) -> bool:
        """``eof=True``: every assigned partition reported its end since its last record. (On the
        embedded broker, which under-reports end offsets, an end can come early: wait for quiet too.)"""
        return bool(self.at_end) and all(self.at_end.values())

    def lag(self) -> int | None:
        """Records not read yet on the assigned partitions: the high watermarks of the last fetch
        responses minus the positions (no broker request; call it on the reading thread). None
        before the first fetch."""
        total, known = 0, False
        for tp in self._consumer.position(self._consumer.assignment()):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                total += max(0, high - tp.offset)
                known = True
        return total if known else None

    def _check(self, now: float) -> None:
        """Decide whether a bounded read is done, has run out of time, or should say how far it is."""
        if self.until == "follow":
            return
        if self.until in ("marker", "end") and not self._pending:
            self.done = True
        elif self.until == "drain" and self._assigned and now - self._last_activity > self.idle_s:
            self.done = True
        elif (self.until == "end" and not self._exact_ends and self._passed_end >= self._pending
              and now - self._last_activity > self.idle_s):
            self.done = True  # embedded: everything up to the (under-reported) ends, and then quiet
        if self.done:
            return
        if self.timeout_s is not None and now - self._t0 > self.timeout_s:
            raise BrokerUnavailableError(f"reading {self.topic}: not finished within {self.timeout_s:.0f}s "
                                         f"({self.records} records read{self._to_go()})")
        if self.stall_s is not None and now - self._last_activity > self.stall_s:
            raise BrokerUnavailableError(f"reading {self.topic}: nothing arrived for {self.stall_s:.0f}s "
                                         f"({self.records} records read{self._to_go()})")
        if now > self._next_note:
            log.info("%s: read %d records of %s%s", self.name, self.records, self.topic, self._to_go())
            self._next_note = now + PROGRESS_EVERY_S

    def _to_go(self) -> str:
        return f", partitions {sorted(self._pending)} to go" if self._pending else ""

    def batches(self, stop: threading.Event | None = None) -> Iterator[list[Record]]:
        """One list per poll until the read is done (or ``stop`` is set, or :meth:`close`).
        A list may be empty (nothing came within ``poll_s``): callers with periodic work
        (rolling a file) get a tick."""
        while not self.done and not self._closed and not (stop is not None and stop.is_set()):
            yield self.poll()

    def __iter__(self) -> Iterator[Record]:
        """Every record until the read is done."""
        for batch in self.batches():
            yield from batch

    def skip(self, record: Record, reason: str) -> None:
        """Count a record the caller could not use (undecodable, invalid) and why."""
        self.skipped += 1
        self.reasons[reason[:120]] += 1
        log.debug("%s: skipped %s[%d]@%d: %s", self.name, self.topic, record.partition, record.offset, reason)

    @property
    def seconds(self) -> float:
        """Seconds since the reader was created."""
        return time.monotonic() - self._t0

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Release the consumer (leave the group, if any); safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> TopicReader:  # noqa: PYI034
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""Replay a historical event log into the events topic.

Every format :func:`model_core.offline.logs.read_events` reads (freshrec JSON lines,
RetailRocket, YooChoose, Diginetica, Taobao, MovieLens, mapped CSV; plain or gzip)
goes to ``settings.events_topic`` through a confluent-kafka producer, key = user_id
(so one user's events stay in one partition, in file order), value =
:func:`streams.codec.encode_event`. Malformed rows are counted in the
:class:`~model_core.offline.logs.ReadReport` and never sent.

Pace: full speed by default; ``rate`` = a steady number of events per second;
``speedup`` = the log's own event-time gaps divided by X (only positive gaps are
slept, so logs grouped by session rather than sorted by time replay fine).

**Event ids.** An event that has no ``event_id`` in the log (RetailRocket, YooChoose,
Taobao, MovieLens, csv without an id column, ...) gets::

    event_id = "r-" + sha1(f"{ordinal}:{canonical}").hexdigest()[:20]

where ``ordinal`` is the event's 1-based data-row number in the file (rows as counted
by the reader, malformed rows included, header and blank lines not) and
``canonical`` is the event's JSON with sorted keys and no ``event_id``. The id depends
only on the file's content, not its name, path or compression: replaying the same file
twice gives the same ids, so the worker's dedupe applies each event once, while two
identical rows at different positions (a user viewing an item twice) stay two events.
Ids the log has are kept as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model_core.errors import BadInputError, ConfigError
from model_core.events import Event
from model_core.offline.logs import ReadReport, read_events
from streams.codec import encode_event
from streams.kafka import check_brokers, client_config, ensure_topics, produce
from streams.settings import Settings, add_kafka_flags

__all__ = ["ReplayStats", "add_parser", "replay", "replay_event_id", "run", "wait_until"]

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 60.0


@dataclass
class ReplayStats:
    """What one replay did. ``sent`` = handed to the producer; ``delivered``/``failed`` as
    the broker acknowledged them; ``skipped`` = malformed rows of the log (not sent)."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    topic: str = ""

    @property
    def events_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """``replayed 200 events to freshrec.events in 0.31s (645 ev/s): 200 delivered, 0 failed, 3 skipped``."""
        return (f"replayed {self.sent} events to {self.topic or 'the events topic'} in {self.seconds:.2f}s "
                f"({self.events_per_s:.0f} ev/s): {self.delivered} delivered, {self.failed} failed, "
                f"{self.skipped} skipped")


def replay_event_id(event: Event, ordinal: int) -> str:
    """The deterministic id of the ``ordinal``-th data row of a log (see the module doc)."""
    d = event.to_dict()
    d.pop("event_id", None)
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "r-" + hashlib.sha1(f"{ordinal}:{canonical}".encode()).hexdigest()[:20]


def wait_until(producer: Any, target: float) -> None:
    """Serve ``producer``'s delivery callbacks until ``time.monotonic()`` reaches ``target``.

    librdkafka's ``poll`` counts whole milliseconds: a shorter timeout returns at once.
    A pacing loop of such polls spins a core, and at 1,000 events/s nearly every wait is
    shorter than a millisecond; the rest of a wait is slept instead.
    """
    while (left := target - time.monotonic()) > 0:
        if left >= 0.001:
            producer.poll(min(left, 0.1))
        else:
            time.sleep(left)


class _Pacer:
    """Sleeps (while serving the producer's callbacks) to keep a rate or an event-time speed-up."""

    def __init__(self, producer: Any, rate: float | None, speedup: float | None) -> None:
        self.producer, self.rate, self.speedup = producer, rate, speedup
        self.start = time.monotonic()
        self.deadline = self.start
        self.n = 0
        self.prev_time: float | None = None

    def restart(self) -> None:
        """Start the clock again (after the producer's first delivery)."""
        self.start = self.deadline = time.monotonic()

    def wait(self, event: Event) -> None:
        if self.rate:
            target = self.start + self.n / self.rate
        elif self.speedup:
            if self.prev_time is not None and event.time > self.prev_time:
                self.deadline = max(self.deadline, time.monotonic() - 0.05) + \
                    (event.time - self.prev_time) / self.speedup
            self.prev_time = event.time
            target = self.deadline
        else:
            return
        self.n += 1
        wait_until(self.producer, target)


def replay(
    path: str | Path,
    settings: Settings,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    type_map: dict[str, str] | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = False,
    report: ReadReport | None = None,
    connect_timeout: float = 10.0,
) -> ReplayStats:
    """Send the events of one log file to ``settings.events_topic``; see the module doc.

    Raises BrokerUnavailableError if no broker answers within ``connect_timeout``
    seconds (checked before reading), BadInputError/ConfigError for an unreadable log
    or bad arguments. Delivery failures are counted in ``ReplayStats.failed``, not raised.
    """
    if rate is not None and speedup is not None:
        raise ConfigError("give rate or speedup, not both")
    if rate is not None and not rate > 0:
        raise ConfigError(f"rate {rate} must be > 0 events/s")
    if speedup is not None and not speedup > 0:
        raise ConfigError(f"speedup {speedup} must be > 0")
    rep = report if report is not None else ReadReport(str(path))
    events = read_events(path, format, columns=columns, type_map=type_map, report=rep)  # checks the file now
    check_brokers(settings, timeout=connect_timeout)
    ensure_topics(settings, timeout=max(connect_timeout, 5.0))

    from confluent_kafka import Producer

    stats = ReplayStats(topic=settings.events_topic)
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            stats.delivered += 1
        else:
            stats.failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    producer = Producer(client_config(settings, "producer"))
    pacer = _Pacer(producer, rate, speedup)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="ev", file=sys.stderr, desc="replay", dynamic_ncols=True)
    topic = settings.events_topic
    t0 = time.monotonic()
    try:
        for event in events:
            if event.event_id is None:
                event = replace(event, event_id=replay_event_id(event, rep.rows))
            value = encode_event(event)
            key = event.user_id.encode()
            pacer.wait(event)
            produce(producer, topic, value, key, on_delivery=on_delivery)
            stats.sent += 1
            if stats.sent == 1 and (rate or speedup):
                # a new producer holds its first messages ~0.5 s (it is getting its producer id);
                # pace from the first delivery, not from creation, or a burst follows
                producer.flush(connect_timeout)
                pacer.restart()
            producer.poll(0)
            if bar is not None:
                bar.update(1)
        deadline = time.monotonic() + _FLUSH_TIMEOUT_S
        remaining = len(producer)
        while remaining and time.monotonic() < deadline:
            remaining = producer.flush(min(1.0, deadline - time.monotonic()))
        if remaining:
            log.warning("%d events not acknowledged after %.0fs", remaining, _FLUSH_TIMEOUT_S)
            stats.failed += remaining
    finally:
        if bar is not None:
            bar.close()
        if len(producer):
            producer.purge()
            producer.flush(0)
        stats.seconds = time.monotonic() - t0
        stats.skipped = rep.skipped
    if errors:
        log.warning("%d events failed delivery, e.g. %s", stats.failed, "; ".join(errors))
    (log.warning if rep.skipped else log.info)("read %s", rep.summary())
    return stats


# ---------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``freshrec replay --log FILE [--format F] [--rate N | --speedup X | --max]``."""
    from model_core.offline.logs import FORMATS

    p = sub.add_parser(
        "replay", help="replay a historical event log into the events topic",
        description="Send the events of a log file (any format freshrec reads, plain or gzip) to "
        "the events topic, key = user_id, in file order. Malformed rows are counted and skipped. "
        "Events without an id get a deterministic one (a hash of the row number and the event), "
        "so replaying the same file twice is applied once by the workers.",
        epilog="Environment: FRESHREC_BROKERS, FRESHREC_PROFILE, FRESHREC_TOPIC_PREFIX, "
        "FRESHREC_PARTITIONS (flags win).",
    )
    p.add_argument("--log", required=True, metavar="FILE", help="event log (plain or gzip)")
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS), metavar="FORMAT",
                   help="log layout: auto (the default: detect the known layouts) or one of "
                   + ", ".join(FORMATS))
    p.add_argument("--columns", default=None, metavar="MAP",
                   help="for --format csv: user=COL,item=COL,time=COL[,type=COL,event_id=COL,...]")
    p.add_argument("--types", default=None, metavar="MAP",
                   help="map the file's event names, e.g. pv=view,buy=purchase")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, metavar="N", help="steady N events per second")
    pace.add_argument("--speedup", type=float, default=None, metavar="X",
                      help="keep the log's event-time gaps, divided by X (e.g. 3600: an hour a second)")
    pace.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    add_kafka_flags(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a broker (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from model_core.offline.logs import parse_columns, parse_type_map

    columns = parse_columns(args.columns) if args.columns else None
    types = parse_type_map(args.types) if args.types else None
    report = ReadReport(str(args.log))
    stats = replay(
        args.log, settings, format=args.format, columns=columns, type_map=types,
        rate=args.rate, speedup=args.speedup,
        progress=settings.progress and not args.quiet and sys.stderr.isatty(),
        report=report, connect_timeout=getattr(args, "timeout", 10.0),
    )
    if report.events == 0:
        raise BadInputError(f"{args.log}: no valid events ({report.summary()})")
    print(stats.summary())
    return 0 if stats.failed == 0 else 1

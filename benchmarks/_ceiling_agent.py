"""The ingest ceiling of a freshrec worker: its own events consumer, with a ``process`` that only counts.

    FRESHREC_...=... python -m benchmarks._ceiling_agent GROUP N STATUS_FILE [stock]

Default: ``streams.worker.consumer.EventConsumer`` (the worker's librdkafka consumer, one
thread: ``_take`` a micro-batch of up to ``settings.batch_size`` messages within
``settings.batch_within_s``, the offset checks, ``process``, an asynchronous commit)
in group GROUP, with a ``process`` that counts the messages and nothing else: no
decoding, no state, no model, no output. This is what the worker's stream side
can take in per process, the bound that its consumer puts on a worker.

With ``stock``: a plain Faust app (Faust's own ``kafka://`` transport, aiokafka) built
here with the settings the worker's Faust app had before it stopped reading Kafka
(d85f748's ``streams.app.make_app(stock=True)``), an agent with
``stream.take_events(batch_size, within=batch_within_s)`` that only counts: what a
stock Faust agent gets on the same backlog, for comparison.

STATUS_FILE gets a JSON line ``{"count", "first", "last", "first_batch", "assigned"}``
(wall-clock seconds of the first and the latest batch, and of the assignment: own consumer only) about every 0.5 s and at once when N events
have been consumed (``"done": true``). Runs until SIGTERM/SIGINT. Started by
``benchmarks/e2e_throughput.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from typing import Any


class Status:
    """The counts, written to STATUS_FILE (atomically) for the benchmark to poll."""

    def __init__(self, path: str, target: int) -> None:
        self.path, self.target = path, target
        self.st: dict[str, Any] = {"count": 0, "first": None, "last": None, "first_batch": 0, "done": False}
        self.written = 0.0

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.st))
        os.replace(tmp, self.path)
        self.written = time.time()

    def batch(self, n: int) -> None:
        st, now = self.st, time.time()
        if st["first"] is None:
            st["first"], st["first_batch"] = now, n
        st["count"] += n
        st["last"] = now
        if not st["done"] and st["count"] >= self.target:
            st["done"] = True
            self.write()
        elif now - self.written > 0.5:
            self.write()


class NoHooks:
    """No state to load or drop: the counting ``process`` keeps none. Notes when the partitions
    were assigned (``status.st["assigned"]``): fetching starts there, so a rate from it includes
    the fetch, where a rate from the first batch may drain what was fetched before it."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def assigned(self, partitions: Collection[int]) -> None:
        if partitions and self.status.st.get("assigned") is None:
            self.status.st["assigned"] = time.time()

    def revoked(self, partitions: Collection[int], lost: bool) -> None:
        pass


def own(settings: Any, group: str, status: Status) -> int:
    """The worker's ``EventConsumer`` on this thread, counting, until SIGTERM/SIGINT."""
    from streams.worker.consumer import EventConsumer

    def count(messages: list[Any], meanwhile: Callable[[], None]) -> Callable[[], None]:
        meanwhile()  # the previous batch settles (its offsets committed), as in the worker
        status.batch(len(messages))
        return lambda: None

    consumer = EventConsumer(settings, count, NoHooks(status), None, group=group)

    def stop(signum: int, frame: object) -> None:
        consumer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status.write()
    consumer.run()
    if consumer.error is not None:
        print(f"the consumer stopped on {consumer.error!r}", file=sys.stderr, flush=True)
    # as the worker does on the embedded broker: no close at exit (it would leave the group)
    sys.stderr.flush()
    os._exit(1 if consumer.error is not None else 0)


def stock(settings: Any, group: str, status: Status) -> int:
    """A plain Faust agent (Faust's ``kafka://`` transport and ``take_events``), counting."""
    import faust

    extra: dict[str, Any] = {}
    if settings.profile == "embedded":
        extra.update(broker_session_timeout=6, broker_heartbeat_interval=1, broker_rebalance_timeout=10)
    app = faust.App(
        group,
        broker=[f"kafka://{hp.strip()}" for hp in settings.brokers.split(",")],
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
    topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")

    async def ceiling(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            status.batch(len(batch))

    app.agent(topic, name="freshrec.ceiling")(ceiling)
    status.write()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: list[str]) -> int:
    from streams.settings import load_settings

    group, target, status_path = argv[0], int(argv[1]), argv[2]
    settings = load_settings()
    status = Status(status_path, target)
    return (stock if argv[3:] == ["stock"] else own)(settings, group, status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One streaming worker: events in, fresh lists out.

The worker's parts, one concern a module:

- ``consumer``: the events topic's librdkafka consumer, one thread (batch, process, commit;
  rebalance callbacks between batches);
- ``batch``: one micro-batch (decode, apply, compute, publish);
- ``userstate``: per-user state in memory and in its changelog, with owner epochs;
- ``model``: the served model, its swaps and the compute thread;
- ``itemside``: the item side every worker shares (the deltas topic, snapshots);
- ``publisher``: the one librdkafka producer; ``catalog``: the catalog listener;
- ``app``: the Faust app (web pages, timers, lifecycle); ``health``, ``metrics``, ``debug``;
  ``livequality``: the lists this worker published, against its users' next events.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import faust

from model_core.config import FoldInConfig
from streams.codec import encode_trending
from streams.errors import BrokerUnavailableError
from streams.heap import freeze_long_lived, log_slow_collections
from streams.kafka import client_config, ensure_topics, produce
from streams.settings import Settings
from streams.worker.batch import EXIT_FATAL, BatchProcessor, fatal
from streams.worker.catalog import CATALOG_EVENTS, CatalogListener
from streams.worker.consumer import EventConsumer
from streams.worker.health import Health
from streams.worker.itemside import ItemSide, snapshot_dir
from streams.worker.metrics import Metrics
from streams.worker.model import WorkerModel
from streams.worker.publisher import Publisher
from streams.worker.userstate import UserStateStore

__all__ = ["CATALOG_EVENTS", "EXIT_FATAL", "WorkerModel", "Worker", "run_worker"]

log = logging.getLogger("freshrec.worker")


class Worker:
    """The parts of one worker, wired: model, state, output, the batch step and the consumer."""

    def __init__(self, settings: Settings, model_root: str | Path, foldin: FoldInConfig | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(settings.health_stall_s)
        self.model = WorkerModel(settings, Path(model_root), foldin or settings.foldin, self.metrics)
        self.store = UserStateStore(settings)
        self.out = Publisher(settings)
        self.batches = BatchProcessor(settings, self.model, self.store, self.out, self.health)
        self.consumer = EventConsumer(settings, self.batches.begin, self, self.metrics)
        self.itemside = ItemSide(settings, self.model, self.metrics, snapshot_dir(settings, Path(model_root)),
                                 owns_snapshots=lambda: 0 in self.health.assigned)
        self.catalog: CatalogListener | None = None
        self._trending_out: Any = None
        self._stopping = threading.Event()

    # PartitionHooks: the consumer thread, between batches
    # (``health.assigned`` is replaced, never changed in place: /ready reads it on the event loop)
    def assigned(self, partitions: Collection[int]) -> None:
        self.health.assigned = self.health.assigned | set(partitions)
        self.store.recover(self.health.assigned)
        freeze_long_lived(f"recovering partitions {sorted(partitions)}")

    def revoked(self, partitions: Collection[int], lost: bool) -> None:
        self.health.assigned = self.health.assigned - set(partitions)
        if lost or self.consumer.cooperative:
            self.store.drop(partitions)  # another worker owns them now
        else:
            self.store.park(partitions)  # eager: kept if the next assignment gives them back

    def publish_trending(self, model_version: str, items: list[tuple[str, float]]) -> None:
        """The global trending list, for ``freshrec serve``'s fallback (its own producer: a failed
        delivery of it never fails a batch)."""
        from confluent_kafka import Producer

        if self._trending_out is None:
            self._trending_out = Producer(client_config(self.settings, "producer"))
        produce(self._trending_out, self.settings.trending_topic, encode_trending(items, model_version, time.time()),
                b"global")
        self._trending_out.poll(0)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the consumer thread (which starts the catalog listener once the item side is restored)."""
        self.catalog = CatalogListener(self.settings, loop, self.model.executor, self.model.catalog, self.metrics)
        threading.Thread(target=self.consume, name="freshrec-consumer", daemon=True).start()

    def consume(self) -> None:
        """The consumer thread's body: the item side restored and caught up, then the catalog
        listener and the events consumer; a fault that escapes it stops the process (exit 70)."""
        try:
            self.itemside.restore()  # before any catalog update: a snapshot loads into an empty item side
            assert self.catalog is not None
            self.catalog.start()
            self.itemside.catch_up()
        except BrokerUnavailableError as exc:
            fatal(f"cannot catch up on the item side's deltas: {exc}")
        if self._stopping.is_set():  # stopped while catching up: nothing consumed, nothing to commit
            self.consumer.stopped.set()
            return
        self.itemside.start()
        self.model.executor.submit(self.model.warm_up).result()
        freeze_long_lived("start")
        self.health.consuming = True
        try:
            self.consumer.run()
        finally:
            self.health.consuming = False
        if self.consumer.error is not None:
            log.error("events consumer stopped on %r", self.consumer.error, exc_info=self.consumer.error)
            fatal(f"the events consumer stopped: {self.consumer.error}")
        if not self._stopping.is_set():
            fatal("the events consumer stopped by itself")

    def stop(self) -> None:
        """Finish the batch in hand and commit it, close the consumer (it leaves the group, except on
        the embedded broker: ``EventConsumer.leave_on_close``); then stop the other threads."""
        self._stopping.set()
        self.itemside.stopping.set()
        self.consumer.stop()
        if not self.consumer.stopped.wait(60):
            log.warning("the events consumer did not stop within 60s")
        if self.catalog is not None:
            self.catalog.stopping.set()
        self.out.close()
        log.info("shutting down: %s", self.metrics.log_line())


def _limit_compute_threads(n: int) -> None:
    """BLAS and OpenMP (FAISS) thread pools of this process: only the compute thread uses them."""
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    faiss.omp_set_num_threads(n)
    log.info("compute thread: %d BLAS/OpenMP thread(s) (FRESHREC_COMPUTE_THREADS)", n)


def run_worker(settings: Settings, model_root: str | Path, *, foldin: FoldInConfig | None = None) -> int:
    """Create topics, load the model, and run one worker until SIGTERM/SIGINT.

    For a worker that looks stuck: ``kill -QUIT <pid>`` writes every thread's stack to stderr
    (from the signal itself: it works while the event loop is blocked); ``kill -USR1 <pid>`` logs
    every asyncio task (Faust's own dump) and ``kill -USR2 <pid>`` where each live async
    generator is waiting.
    """
    from streams.worker.app import build_app

    faulthandler.register(signal.SIGQUIT, all_threads=True)
    log_slow_collections()
    ensure_topics(settings)
    worker = Worker(settings, model_root, foldin)
    _limit_compute_threads(settings.compute_threads)
    worker.model.load_initial()
    worker.health.model_loaded = True
    app = build_app(settings, worker)
    runner = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False,
                          override_logging=False)
    code = 0
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:  # faust exits the process on shutdown; report our own code
        code = int(exc.code or 0)
    finally:
        worker.model.executor.shutdown(wait=False)
    if not worker.consumer.leave_on_close:  # embedded: no consumer close at exit (it would leave the group)
        logging.shutdown()
        os._exit(code)
    return code

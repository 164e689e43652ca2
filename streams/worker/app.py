"""The Faust app of a worker: its web server (/health, /ready, /metrics), timers and lifecycle.

Faust does not read Kafka here (``BootStrategy(enable_kafka=False)``): the events
topic is read by the worker's own consumer (``streams.worker.consumer``), the
catalog by ``streams.worker.catalog``, and everything is written by
``streams.worker.publisher``. The app runs the consumer thread as a task, polls
for newer model versions, logs the metrics line, serves the pages and stops it
all cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST

from model_core.errors import FreshrecError
from streams.settings import Settings

__all__ = ["build_app", "make_app"]

log = logging.getLogger("freshrec.worker")


class _NoKafka(BootStrategy):
    enable_kafka = False  # no Faust consumer or producer: no group join, no leader topic


def make_app(settings: Settings) -> faust.App:
    """A Faust app with a web server and timers, and no Kafka clients of its own."""
    app = faust.App(
        f"{settings.group}-app",
        broker=f"kafka://{settings.brokers.split(',')[0].strip()}",  # never connected: no Kafka boot
        store="memory://",
        datadir=settings.data_dir,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",
        topic_disable_leader=True,
    )
    app.boot_strategy = _NoKafka(app)
    return app


def build_app(settings: Settings, worker: Any) -> faust.App:
    """The app around one ``streams.worker.Worker``: its consumer thread, model swaps, metrics and
    health pages."""
    app = make_app(settings)
    model, metrics, health = worker.model, worker.metrics, worker.health

    @app.task
    async def consume() -> None:
        # after mode's own handlers: its SIGUSR2 would enter pdb (and raise BdbQuit without a tty)
        from streams.worker.debug import dump_async_generators

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_async_generators)
        worker.start(asyncio.get_running_loop())
        log.info("worker ready: consuming %s (group %s, %s), publishing %s", settings.events_topic, settings.group,
                 settings.assignment, settings.recommendations_topic)

    @app.timer(settings.model_poll_s)
    async def watch_model() -> None:
        path = model.newer_version()
        if path is None:
            return
        loop = asyncio.get_running_loop()
        try:
            old, fresh = await loop.run_in_executor(model.executor, model.swap_to, path)
        except FreshrecError as exc:
            model.bad_versions.add(path.name)
            metrics.inc("model_errors")
            log.error("model %s not loaded, still serving %s: %s", path.name, model.rec.model_version, exc)
            return
        metrics.inc("model_swaps")
        log.info("swapped model %s -> %s without a restart", old.model_version, fresh.model_version)

    @app.timer(settings.trending_every_s)
    async def publish_trending() -> None:
        version, items = await asyncio.get_running_loop().run_in_executor(model.executor, model.trending, 100)
        if items:
            worker.publish_trending(version, items)

    @app.timer(settings.metrics_interval_s)
    async def report() -> None:
        metrics.lag = worker.consumer.lag()
        log.info("%s", metrics.log_line())

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        metrics.lag = worker.consumer.lag()
        return web.bytes(metrics.prometheus(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def liveness(web: Any, request: Any) -> Any:
        ok, why = health.live(worker.consumer.lag())
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

    @app.page("/ready")
    async def readiness(web: Any, request: Any) -> Any:
        ok, why = health.ready(worker.store)
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

    @app.on_before_shutdown.connect  # type: ignore[misc, arg-type]
    def stop_worker(app_: Any, **kwargs: Any) -> None:
        worker.stop()

    return app

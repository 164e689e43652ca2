"""``freshrec serve``: answer the newest lists over HTTP (``streams.serve`` does the work)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from streams.heap import log_slow_collections
from streams.settings import Settings

__all__ = ["add_parser", "run", "start_server"]

log = logging.getLogger("freshrec.serve")


class _JoinAction(argparse.Action):
    """A repeatable flag whose values (each may be comma-separated) join into one comma string."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        old = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{old},{values}" if old else str(values))


def add_parser(sub: Any) -> None:
    """``freshrec serve [--port 8000] [--partitions 0,1] [--worker-metrics URL]``."""
    from streams.settings import add_kafka_flags

    p = sub.add_parser(
        "serve", help="answer the newest lists over HTTP (API, dashboard, /metrics)",
        description="Read the recommendations topic (every partition, or --partitions; no consumer group), "
        "the catalog and the trending topic into memory and answer GET /v1/users/{id}/recommendations, the "
        "batch form /v1/recommendations, /health, /ready (caught up with the topics), /metrics and a "
        "dashboard at /. API documentation at /docs. Replicas each read the whole topic.",
        epilog="Environment: FRESHREC_BROKERS, FRESHREC_PROFILE, FRESHREC_TOPIC_PREFIX, FRESHREC_SERVE_* "
        "(flags win); see deploy/README.md.",
    )
    add_kafka_flags(p)
    p.add_argument("--host", dest="serve_host", default=None,
                   help="address to listen on (FRESHREC_SERVE_HOST; default 127.0.0.1)")
    p.add_argument("--port", dest="serve_port", type=int, default=None,
                   help="port (FRESHREC_SERVE_PORT; default 8000)")
    p.add_argument("--partitions", dest="serve_partitions", default=None, metavar="P,P",
                   help="hold only these partitions of the recommendations topic (default: all)")
    p.add_argument("--worker-metrics", dest="serve_worker_metrics", action=_JoinAction, default=None,
                   metavar="URL", help="a worker's Prometheus /metrics URL for the dashboard's live quality; "
                   "repeat for several")
    p.add_argument("--recent-events", dest="serve_recent_events", type=int, default=None, metavar="N",
                   help="newest events-topic messages kept for the user lookup; 0 = none (default 10000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a broker (default 10)")
    p.add_argument("--quiet", action="store_true", help="(no effect; accepted like the other commands)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def start_server(settings: Settings, connect_timeout: float = 10.0) -> tuple[Any, Any]:
    """The uvicorn server (not started) and the topic reader (started) for ``settings``."""
    import contextlib
    import signal
    import threading
    from collections.abc import Iterator

    import uvicorn

    from streams.serve import Store, StoreReader, build_app

    class Server(uvicorn.Server):
        """uvicorn's server, but SIGTERM / SIGINT end it with exit 0 (uvicorn re-raises the signal)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in old.items():
                    signal.signal(s, handler)

    store = Store(recent_events=settings.serve_recent_events)
    reader = StoreReader(settings, store, connect_timeout=connect_timeout)
    reader.start()
    app = build_app(settings, store, reader)
    config = uvicorn.Config(app, host=settings.serve_host, port=settings.serve_port, access_log=False,
                            log_level="warning", loop="auto", http="auto", lifespan="off")
    return Server(config), reader


def run(args: argparse.Namespace, settings: Settings) -> int:
    log.info("settings: %s", settings.describe())
    log_slow_collections()
    server, reader = start_server(settings, getattr(args, "timeout", 10.0))
    try:
        log.info("serve listening on http://%s:%d (dashboard /, API docs /docs, /metrics)",
                 settings.serve_host, settings.serve_port)
        server.run()  # until SIGINT / SIGTERM
    finally:
        reader.stop()
    if not server.started:
        log.error("serve could not listen on %s:%d", settings.serve_host, settings.serve_port)
        return 1
    return 0

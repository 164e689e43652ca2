"""Shared fixtures: one real embedded broker (Tansu) per test session, fresh topics per test,
and worker processes (integration and fault tests).

An unstartable broker fails the tests (BrokerUnavailableError); it never skips them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings, load_settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The session's embedded broker on a free loopback port (its log in the session tmp dir)."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path).start(timeout=30.0) as b:
        yield b


@pytest.fixture
def settings(broker: EmbeddedBroker) -> Settings:
    """Settings for this test: the session broker, embedded profile, topics of its own
    (``t<8 hex>.events``, ...), 2 partitions, no web server. The environment is ignored."""
    return load_settings(environ={}).with_(
        brokers=broker.bootstrap, profile="embedded", topic_prefix=f"t{uuid.uuid4().hex[:8]}",
        partitions=2, web_port=0,
    )


class WorkerProcess:
    """One `freshrec worker` process with its log file."""

    def __init__(self, settings: Settings, models: Path, log: Path) -> None:
        env = dict(os.environ, FRESHREC_DEVICE="cpu", **{
            f"FRESHREC_{name.upper()}": str(getattr(settings, name)) for name in (
                "brokers", "profile", "topic_prefix", "partitions", "web_port", "group", "k", "model_poll_s",
                "metrics_interval_s", "data_dir", "batch_within_s")})
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--model", str(models)],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        deadline = time.time() + timeout
        while self.log_text().count(text) < count:
            assert self.proc.poll() is None, f"worker exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}"
            assert time.time() < deadline, f"no {text!r} in {timeout:.0f}s:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one still running is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, models: Path, name: str = "worker") -> WorkerProcess:
        w = WorkerProcess(settings, models, tmp_path / f"{name}.log")
        started.append(w)
        w.wait_for_log("worker ready")
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL)

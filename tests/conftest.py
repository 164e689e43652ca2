"""Shared fixtures: one real embedded broker (Tansu) per test session, fresh topics per test,
and worker processes (integration and fault tests).

An unstartable broker fails the tests (BrokerUnavailableError); it never skips them.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workers import WorkerProcess

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

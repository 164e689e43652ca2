"""A worker that dies loses nothing: its users' state comes back from the changelog."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from workers import fault_settings, small_model

from streams.broker import EmbeddedBroker
from streams.kafka import client_config
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings

USERS = [f"f{i}" for i in range(24)]
T0 = time.time() - 86400  # event times inside the accepted window (not after the broker time)


def _settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return fault_settings(broker.bootstrap, tmp_path, "f")


def _model(tmp_path: Path) -> Path:
    return small_model(tmp_path)


def _send(settings: Settings, round_: int, n: int) -> None:
    p = Producer(client_config(settings, "producer"))
    for user in USERS:
        for j in range(n):
            ev = {"user_id": user, "item_id": f"i{(round_ * 7 + j) % 60}", "type": "view",
                  "time": T0 + round_ * 100 + j, "event_id": f"{user}-{round_}-{j}"}
            p.produce(settings.events_topic, key=user.encode(), value=json.dumps(ev).encode())
    assert p.flush(10) == 0


def _applied(settings: Settings, expected: int, timeout: float = 60.0) -> dict[str, int]:
    """Newest events_applied per user once every user's list reached ``expected`` (or the timeout)."""
    with RecommendationClient(settings) as client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            client.poll(0.2)
            if len(client.latest) == len(USERS) and all(r.events_applied >= expected for r in client.latest.values()):
                break
        return {u: r.events_applied for u, r in client.latest.items()}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_restarted_worker_recovers_every_users_state(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable, how: signal.Signals
) -> None:
    settings, models = _settings(broker, tmp_path), _model(tmp_path)
    first = start_worker(settings, models, "first")
    _send(settings, 0, 3)
    assert _applied(settings, 3) == dict.fromkeys(USERS, 3)
    time.sleep(4)  # past Faust's offset commit interval
    first.stop(how)
    second = start_worker(settings, models, "second")
    _send(settings, 1, 1)
    assert _applied(settings, 4) == dict.fromkeys(USERS, 4), second.log_text()[-2000:]


def test_surviving_worker_takes_over_with_the_state(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable
) -> None:
    settings, models = _settings(broker, tmp_path), _model(tmp_path)
    a = start_worker(settings, models, "a")
    b = start_worker(settings, models, "b")
    b.wait_for_log("starts at offset", timeout=90)  # rebalanced to share the partitions
    _send(settings, 0, 2)
    assert _applied(settings, 2) == dict.fromkeys(USERS, 2)
    time.sleep(4)
    a.stop(signal.SIGKILL)
    _send(settings, 1, 1)
    assert _applied(settings, 3, timeout=90) == dict.fromkeys(USERS, 3), b.log_text()[-2000:]

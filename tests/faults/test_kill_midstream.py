"""kill -9 (and SIGTERM) while events flow: every event is applied exactly once, with or without ids.

A producer streams events at a steady rate while workers are killed (SIGKILL)
at random moments and restarted; at the end every user's ``events_applied``
must equal the number of distinct events sent to that user: nothing lost,
nothing counted twice. The kill moments are random (the seed is printed; set
FRESHREC_FAULT_SEED to repeat one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.offline.synth import SynthConfig, generate_events
from streams.broker import EmbeddedBroker
from streams.kafka import client_config
from streams.settings import Settings, load_settings
from streams.tail import RecommendationClient
from workers import WorkerProcess

USERS = [f"k{i}" for i in range(40)]
PER_USER = 150  # 6,000 events
RATE = 200.0  # events/s: the stream lasts ~30 s, across every kill
KILLS = 4


def _settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return load_settings(environ={}).with_(
        brokers=broker.bootstrap, profile="embedded", topic_prefix=f"m{uuid.uuid4().hex[:8]}", partitions=2,
        web_port=0, group=f"g{uuid.uuid4().hex[:8]}", k=5, metrics_interval_s=1.0, data_dir=str(tmp_path / "d"))


def _model(tmp_path: Path) -> Path:
    synth = SynthConfig(users=100, items=60, events=3000, clusters=3, seed=5)
    train_als(generate_events(synth), ALSConfig(factors=8, iterations=4), device="cpu").save(tmp_path / "models")
    return tmp_path / "models"


def _stream(settings: Settings, with_ids: bool, done: threading.Event, errors: list[BaseException]) -> None:
    """PER_USER events per user, round robin, at RATE events/s (event time: the last hour)."""
    try:
        p = Producer(client_config(settings, "producer"))
        t0, start = time.time() - 3600, time.monotonic()
        n = 0
        for j in range(PER_USER):
            for user in USERS:
                ev: dict[str, object] = {"user_id": user, "item_id": f"i{(hash(user) + j * 7) % 90}",
                                         "type": "view", "time": t0 + j}
                if with_ids:
                    ev["event_id"] = f"{user}-{j}"
                p.produce(settings.events_topic, key=user.encode(), value=json.dumps(ev).encode())
                n += 1
                ahead = n / RATE - (time.monotonic() - start)
                if ahead > 0:
                    p.poll(0)
                    time.sleep(ahead)
        assert p.flush(30) == 0
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
    finally:
        done.set()


def _final_counts(settings: Settings, timeout: float) -> dict[str, int]:
    """Newest events_applied per user once every user reached PER_USER (or the timeout), after
    another 3 s in which a double count would show."""
    with RecommendationClient(settings) as client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            client.poll(0.2)
            if len(client.latest) == len(USERS) and all(
                    r.events_applied >= PER_USER for r in client.latest.values()):
                break
        settle = time.time() + 3
        while time.time() < settle:
            client.poll(0.2)
        return {u: r.events_applied for u, r in client.latest.items()}


@pytest.mark.parametrize("workers, with_ids, how", [
    (1, False, signal.SIGKILL), (2, False, signal.SIGKILL), (2, True, signal.SIGKILL), (1, False, signal.SIGTERM)],
    ids=["one-worker-no-ids", "two-workers-no-ids", "two-workers-ids", "one-worker-sigterm"])
def test_kill_9_while_events_flow_applies_every_event_once(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess], workers: int,
    with_ids: bool, how: signal.Signals,
) -> None:
    seed = int(os.environ.get("FRESHREC_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    settings, models = _settings(broker, tmp_path), _model(tmp_path)
    running = [start_worker(settings, models, f"w{i}") for i in range(workers)]
    done, errors = threading.Event(), []
    producer = threading.Thread(target=_stream, args=(settings, with_ids, done, errors), daemon=True)
    producer.start()
    killed = []
    for n in range(KILLS):
        time.sleep(rng.uniform(0.5, 3.0))
        victim = rng.randrange(len(running))
        running[victim].stop(how)
        killed.append((round(time.time(), 2), victim, done.is_set()))
        running[victim] = start_worker(settings, models, f"w{victim}-{n}")
    producer.join(120)
    assert not errors, errors
    counts = _final_counts(settings, timeout=120)
    logs = "\n".join(w.log_text()[-1500:] for w in running)
    assert sum(1 for _, _, after in killed if not after) >= 3, f"kills mostly after the stream ended: {killed}"
    wrong = {u: c for u, c in counts.items() if c != PER_USER}
    assert len(counts) == len(USERS) and not wrong, (
        f"seed {seed}: users with events_applied != {PER_USER}: {wrong} "
        f"(lost {sum(max(0, PER_USER - c) for c in wrong.values())}, "
        f"twice {sum(max(0, c - PER_USER) for c in wrong.values())}); kills {killed}\n{logs}")

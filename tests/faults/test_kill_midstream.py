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
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from workers import WorkerProcess, fault_settings, small_model

from streams.broker import EmbeddedBroker
from streams.kafka import client_config
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings

USERS = [f"k{i}" for i in range(40)]
RATE = 200.0  # events/s, round robin over the users, until the last restarted worker is up
KILLS = 4


def _settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    return fault_settings(broker.bootstrap, tmp_path, "m")


def _model(tmp_path: Path) -> Path:
    return small_model(tmp_path)


def _stream(settings: Settings, with_ids: bool, stop: threading.Event, sent: dict[str, int],
            errors: list[BaseException]) -> None:
    """Events round robin over the users at RATE events/s until ``stop``; ``sent`` counts them."""
    try:
        p = Producer(client_config(settings, "producer"))
        t0, start = time.time() - 3600, time.monotonic()
        n = 0
        while not stop.is_set():
            j = n // len(USERS)
            user = USERS[n % len(USERS)]
            ev: dict[str, object] = {"user_id": user, "item_id": f"i{(n * 7) % 90}", "type": "view",
                                     "time": t0 + j}
            if with_ids:
                ev["event_id"] = f"{user}-{j}"
            p.produce(settings.events_topic, key=user.encode(), value=json.dumps(ev).encode())
            sent[user] = sent.get(user, 0) + 1
            n += 1
            ahead = n / RATE - (time.monotonic() - start)
            if ahead > 0:
                p.poll(0)
                time.sleep(ahead)
        assert p.flush(30) == 0
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _final_counts(settings: Settings, sent: dict[str, int], timeout: float) -> dict[str, int]:
    """Newest events_applied per user once every user reached its sent count (or the timeout),
    after another 3 s in which a double count would show."""
    with RecommendationClient(settings) as client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            client.poll(0.2)
            if len(client.latest) == len(sent) and all(
                    r.events_applied >= sent[u] for u, r in client.latest.items()):
                break
        settle = time.time() + 3
        while time.time() < settle:
            client.poll(0.2)
        return {u: r.events_applied for u, r in client.latest.items()}


def _dump_stacks(workers: list[WorkerProcess]) -> str:
    """The running workers' logs, ending with their thread stacks (SIGQUIT), asyncio tasks
    (SIGUSR1) and async generators (SIGUSR2)."""
    for sig in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(sig)
        time.sleep(1.0)
    return "\n".join(f"--- {w.log.name} (exit {w.proc.poll()}) ---\n{w.log_text()[-12000:]}" for w in workers)


def _no_offset_gaps(tmp_path: Path) -> None:
    """No worker, live or killed, saw a gap in a partition's offsets (events skipped unapplied)."""
    gaps = [f"{log.name}: {line}" for log in sorted(tmp_path.glob("*.log"))
            for line in log.read_text(errors="replace").splitlines() if "offset gap" in line]
    assert not gaps, "\n".join(gaps)


def _run(broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess], workers: int,
         with_ids: bool, disrupt: Callable[[random.Random, list[WorkerProcess], Settings, Path],
                                           list[tuple[float, str]]]) -> None:
    """Stream events while ``disrupt`` does its worst; then every user's events_applied must equal
    the events sent to it, and no worker may have seen an offset gap."""
    seed = int(os.environ.get("FRESHREC_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    settings, models = _settings(broker, tmp_path), _model(tmp_path)
    running = [start_worker(settings, models, f"w{i}") for i in range(workers)]
    stop, sent, errors = threading.Event(), {}, []
    producer = threading.Thread(target=_stream, args=(settings, with_ids, stop, sent, errors), daemon=True)
    producer.start()
    try:
        done = disrupt(rng, running, settings, models)  # every disruption lands while events flow
        time.sleep(2)
    finally:
        stop.set()
        producer.join(60)
    assert not errors, errors
    counts = _final_counts(settings, sent, timeout=120)
    wrong = {u: (counts.get(u), n) for u, n in sent.items() if counts.get(u) != n}
    logs = "\n".join(w.log_text()[-1500:] for w in running) if not wrong else _dump_stacks(running)
    assert not wrong, (
        f"seed {seed}: users with events_applied != events sent: {wrong} "
        f"(lost {sum(max(0, n - (c or 0)) for c, n in wrong.values())}, "
        f"twice {sum(max(0, (c or 0) - n) for c, n in wrong.values())}); disruptions {done}\n{logs}")
    _no_offset_gaps(tmp_path)


def _kills(start_worker: Callable[..., WorkerProcess], how: signal.Signals,
           kills: int) -> Callable[[random.Random, list[WorkerProcess], Settings, Path], list[tuple[float, str]]]:
    def disrupt(rng: random.Random, running: list[WorkerProcess], settings: Settings,
                models: Path) -> list[tuple[float, str]]:
        done = []
        for n in range(kills):
            time.sleep(rng.uniform(0.5, 3.0))
            victim = rng.randrange(len(running))
            running[victim].stop(how)
            done.append((round(time.time(), 2), f"{how.name} w{victim}"))
            running[victim] = start_worker(settings, models, f"w{victim}-{n}")
        return done
    return disrupt


@pytest.mark.parametrize("workers, with_ids, how, kills", [
    (1, False, signal.SIGKILL, KILLS), (2, False, signal.SIGKILL, KILLS), (2, True, signal.SIGKILL, KILLS),
    (3, False, signal.SIGKILL, KILLS + 1), (1, False, signal.SIGTERM, KILLS), (2, False, signal.SIGTERM, KILLS)],
    ids=["one-worker-no-ids", "two-workers-no-ids", "two-workers-ids", "three-workers-two-partitions",
         "one-worker-sigterm", "two-workers-sigterm-batches-in-flight"])
def test_kill_9_while_events_flow_applies_every_event_once(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess], workers: int,
    with_ids: bool, how: signal.Signals, kills: int,
) -> None:
    _run(broker, tmp_path, start_worker, workers, with_ids, _kills(start_worker, how, kills))


def test_a_zombie_paused_past_its_session_never_rolls_state_back(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess],
) -> None:
    """SIGSTOP a worker past the session timeout while events flow: the group gives its partitions
    to the other worker; resumed, the zombie finishes the batch it held and writes it with its old
    epoch, and loses its partitions at its next poll."""
    def disrupt(rng: random.Random, running: list[WorkerProcess], *_: object) -> list[tuple[float, str]]:
        time.sleep(rng.uniform(6.0, 9.0))  # both own a partition and batches are in flight
        zombie = running[rng.randrange(2)]
        zombie.proc.send_signal(signal.SIGSTOP)
        paused = rng.uniform(9.0, 14.0)  # the embedded profile's session timeout is 6 s
        time.sleep(paused)
        zombie.proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(4.0, 8.0))
        return [(round(time.time(), 2), f"SIGSTOP {zombie.log.name} for {paused:.1f}s")]

    _run(broker, tmp_path, start_worker, 2, False, disrupt)


def test_the_broker_paused_mid_stream_loses_and_doubles_nothing(
    broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess],
) -> None:
    """The broker stops answering (SIGSTOP) past every session timeout, then comes back: every
    worker loses its partitions at once, rejoins and recovers. (The embedded broker keeps its data
    in memory, so a real restart would empty it: this is the outage a restart causes, without the
    data loss. On Apache Kafka, a restarted broker keeps its log.)"""
    def disrupt(rng: random.Random, running: list[WorkerProcess], *_: object) -> list[tuple[float, str]]:
        time.sleep(rng.uniform(6.0, 9.0))
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        paused = rng.uniform(7.0, 10.0)
        try:
            time.sleep(paused)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        time.sleep(rng.uniform(6.0, 10.0))
        return [(round(time.time(), 2), f"broker SIGSTOP for {paused:.1f}s")]

    _run(broker, tmp_path, start_worker, 2, False, disrupt)

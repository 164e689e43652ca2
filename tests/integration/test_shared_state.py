"""One item side across the fleet: every worker applies every worker's deltas, and a worker that
starts restores the snapshot and the deltas after it (``streams.worker.itemside``)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer
from workers import WorkerProcess, fault_settings, small_model

from model_core.offline.fleet import partition_of
from streams.broker import EmbeddedBroker
from streams.kafka import client_config
from streams.reader import TopicReader
from streams.settings import Settings

T0 = time.time() - 86400


def _send(settings: Settings, users: list[str], n: int, round_: int = 0) -> None:
    p = Producer(client_config(settings, "producer"))
    for user in users:
        for j in range(n):
            ev = {"user_id": user, "item_id": f"i{(hash(user) + j + round_) % 60}", "type": "view",
                  "time": T0 + round_ * 100 + j}
            p.produce(settings.events_topic, key=user.encode(), value=json.dumps(ev).encode())
    assert p.flush(10) == 0


EVENTS, DELTAS = r" applied=(\d+) dup=", r"deltas applied=(\d+)"


def _metric(worker: WorkerProcess, pattern: str) -> int:
    """The newest value ``pattern`` finds in the worker's metrics lines (-1 before the first)."""
    found = re.findall(pattern, worker.log_text())
    return int(found[-1]) if found else -1


def _deltas_on_topic(settings: Settings) -> list[int]:
    """The offsets of the delta records on the deltas topic (marker records take offsets too)."""
    with TopicReader(settings, settings.deltas_topic, until="marker", timeout_s=30) as reader:
        return [r.offset for b in reader.batches() for r in b]


def _settled(workers: list[WorkerProcess], settings: Settings, events: int, timeout: float = 90.0) -> int:
    """Wait until the workers applied ``events`` events between them and every worker applied
    every delta on the topic; returns that number of deltas."""
    deadline = time.time() + timeout
    while True:
        applied = sum(max(0, _metric(w, EVENTS)) for w in workers)
        total = len(_deltas_on_topic(settings))
        seen = [_metric(w, DELTAS) for w in workers]
        if applied == events and total > 0 and all(s == total for s in seen):
            return total
        assert time.time() < deadline, f"applied {applied} of {events} events; deltas {seen} of {total}"
        time.sleep(1.0)


def test_two_workers_serve_from_one_item_side_and_a_restart_restores_it(
        broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    settings = fault_settings(broker.bootstrap, tmp_path, "s").with_(snapshot_every_s=1.0)
    models = small_model(tmp_path)
    users = [f"s{i}" for i in range(40)]
    assert {partition_of(u, 2) for u in users} == {0, 1}
    a = start_worker(settings, models, "a")
    a.wait_for_log(f"assigned {settings.events_topic}[")
    b = start_worker(settings, models, "b")
    b.wait_for_log(f"assigned {settings.events_topic}[")  # the group shares the partitions now
    _send(settings, users, 4)
    total = _settled([a, b], settings, 4 * len(users))
    # each worker published only its own partitions' deltas, and applied all of them
    assert 0 < _metric(a, EVENTS) < 4 * len(users) and 0 < _metric(b, EVENTS) < 4 * len(users)
    assert _metric(a, DELTAS) == _metric(b, DELTAS) == total
    # the owner of events partition 0 snapshots the item side
    snapshots = models / "online-state" / settings.group
    deadline = time.time() + 30
    while not list(snapshots.glob("snapshot-*.npz")):
        assert time.time() < deadline, f"no snapshot in {snapshots}:\n{a.log_text()[-2000:]}\n{b.log_text()[-2000:]}"
        time.sleep(0.5)
    # a worker that starts loads it and catches up on the deltas after it, then serves
    a.stop(signal.SIGKILL)
    c = start_worker(settings, models, "c")
    c.wait_for_log("item side: restored")
    c.wait_for_log("item side: caught up")
    c.wait_for_log("worker ready")
    b_before = _metric(b, EVENTS)
    _send(settings, users, 2, round_=1)
    deadline = time.time() + 120
    while True:
        offsets = _deltas_on_topic(settings)
        restored_at = int(re.findall(r"deltas from offset (\d+)", c.log_text())[0])
        after = [o for o in offsets if o >= restored_at]
        served = _metric(b, EVENTS) - b_before + max(0, _metric(c, EVENTS))
        if (served == 2 * len(users) and _metric(b, DELTAS) == len(offsets) and _metric(c, DELTAS) == len(after)
                and len(after) < len(offsets)):
            break  # the second round is served; c applied only the deltas its snapshot did not hold
        assert time.time() < deadline, (len(offsets), restored_at, _metric(b, DELTAS), _metric(c, DELTAS))
        time.sleep(1.0)
    assert _metric(c, EVENTS) > 0  # c took over a's partitions and serves them


def test_records_on_the_deltas_topic_that_are_not_deltas_are_skipped_and_the_item_side_goes_on(
        broker: EmbeddedBroker, tmp_path: Path, start_worker: Callable[..., WorkerProcess]) -> None:
    """Whatever else writes the deltas topic (garbage, a delta with numbers no event makes) is
    counted and skipped; the worker keeps applying the real deltas and serving."""
    import numpy as np

    from model_core.served.shared import ItemDelta, encode_delta

    settings = fault_settings(broker.bootstrap, tmp_path, "h")
    w = start_worker(settings, small_model(tmp_path), "w")
    w.wait_for_log(f"assigned {settings.events_topic}[")
    p = Producer(client_config(settings, "producer"))
    hostile = [b"", b"\x00" * 10, b"not zlib", encode_delta(ItemDelta(items=[("i1", float("inf"), 1.0, None)])),
               encode_delta(ItemDelta(new_items=[("i1", "k", 1.0)], new_vectors=np.full((1, 8), np.nan, np.float32)))]
    for value in hostile:
        p.produce(settings.deltas_topic, value=value, partition=0)
    assert p.flush(10) == 0
    users = [f"h{i}" for i in range(10)]
    _send(settings, users, 3)
    deadline = time.time() + 90
    while not (_metric(w, EVENTS) == 3 * len(users) and _metric(w, DELTAS) == len(_deltas_on_topic(settings))
               - len(hostile)):
        assert time.time() < deadline, (_metric(w, EVENTS), _metric(w, DELTAS), w.log_text()[-2000:])
        time.sleep(1.0)
    assert w.log_text().count("item side: skipped deltas record") == len(hostile)
    assert w.proc.poll() is None

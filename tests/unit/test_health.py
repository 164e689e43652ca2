"""What /health and /ready answer (streams.worker.agent.Health)."""

from __future__ import annotations

import time

from streams.worker.agent import Health

from streams.settings import load_settings
from streams.worker.userstate import UserStateStore


def test_liveness_fails_when_events_wait_and_nothing_moves() -> None:
    h = Health(stall_s=0.05)
    assert h.live(lag=0) == (False, "the event agent is not running")
    h.agent_running = True
    assert h.live(lag=0)[0] and h.live(lag=5)[0]  # just made progress
    time.sleep(0.1)
    assert h.live(lag=0)[0]  # idle with nothing to do is healthy
    ok, why = h.live(lag=5)
    assert not ok and "5 events wait" in why
    h.progress()
    assert h.live(lag=5)[0]


def test_readiness_needs_the_model_and_every_assigned_partition() -> None:
    store = UserStateStore(load_settings(environ={}))
    h = Health(stall_s=60)
    assert h.ready(store) == (False, "no model loaded")
    h.model_loaded = True
    h.assigned = {0, 1}
    ok, why = h.ready(store)
    assert not ok and "[0, 1]" in why
    store.install({0: {}, 1: {"u": b"{}"}}, store.generations([0, 1]))
    assert h.ready(store) == (True, "ok")


def test_a_partition_dropped_while_it_was_read_is_not_installed() -> None:
    store = UserStateStore(load_settings(environ={}))
    before = store.generations([0])
    store.drop([0])  # revoked while the read ran
    store.install({0: {"u": b"{}"}}, before)
    assert not store.loaded(0)

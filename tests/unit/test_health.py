"""What /health and /ready answer (streams.worker.health.Health)."""

from __future__ import annotations

import time

from streams.settings import load_settings
from streams.worker.health import Health
from streams.worker.userstate import UserStateStore


def test_liveness_fails_when_events_wait_and_nothing_moves() -> None:
    h = Health(stall_s=0.05)
    assert h.live(lag=0) == (False, "the events consumer is not running")
    h.consuming = True
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
    store._install(0, {}, 7)
    store._install(1, {"u": b"{}"}, 9)
    assert h.ready(store) == (True, "ok")

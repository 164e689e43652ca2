"""freeze_long_lived: survivors leave the collector's scans, and garbage cycles are still found."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

from streams.heap import freeze_long_lived, log_slow_collections


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_survivors_are_frozen_and_cycles_among_frozen_objects_are_collected_at_the_next_freeze() -> None:
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        kept = _Node()
        freeze_long_lived("the test's setup")
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        assert not any(o is kept for o in gc.get_objects())  # frozen: no generation lists it
        del a, b
        gc.collect()  # a full pass skips frozen objects: the cycle survives it
        assert gone() is not None
        freeze_long_lived("the test's second step")  # unfreezes first: the cycle is found
        assert gone() is None
        assert kept.other is None
    finally:
        gc.unfreeze()


def test_slow_collections_are_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from streams import heap

    monkeypatch.setattr(heap, "SLOW_COLLECTION_MS", -1.0)  # every pass counts as slow
    log_slow_collections()
    log_slow_collections()  # once per process, however often it is asked
    try:
        assert gc.callbacks.count(heap._time_collection) == 1
        with caplog.at_level(logging.WARNING, logger="freshrec.heap"):
            gc.collect()
        assert any("generation-2 garbage collection stalled every thread" in r.message for r in caplog.records)
    finally:
        gc.callbacks.remove(heap._time_collection)

"""freeze_long_lived: survivors leave the collector's scans, and garbage cycles are still found."""

from __future__ import annotations

import gc
import weakref

from streams.heap import freeze_long_lived


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

"""The events consumer's loop without a broker: batch N's flush overlaps batch N+1's compute, and
N's offsets are committed only after its flush, before any rebalance and at the end
(streams.worker.consumer). librdkafka's consumer is replaced by a scripted fake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streams.settings import load_settings
from streams.worker.consumer import EventConsumer, Settle


class Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def topic(self) -> str:
        return "t.events"

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out scripted batches; a revoke of every partition before the batch after ``revoke_at``."""

    def __init__(self, owner: EventConsumer, batches: list[list[Msg]], log: list[str],
                 revoke_at: int | None = None) -> None:
        self.owner, self.batches, self.log, self.revoke_at = owner, batches, log, revoke_at
        self.served = 0

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks
        self.owner.assigned.update({0, 1})

    def consume(self, n: int, timeout: float) -> list[Msg]:
        if self.served == self.revoke_at:
            self.revoke_at = None
            self.log.append("revoke")
            self.callbacks["on_revoke"](self, [])  # no partition of ours listed: only the settle matters
        if n == 1 and self.served < len(self.batches):  # the first call of a batch: the whole batch
            batch = self.batches[self.served]
            self.served += 1
            return batch
        if self.served >= len(self.batches):
            self.owner.stop()
        return []

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        self.log.append("commit " + ",".join(f"{tp.partition}:{tp.offset}" for tp in offsets))
        return []

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return 0, 100

    def close(self) -> None:
        self.log.append("close")

    def incremental_unassign(self, partitions: list[Any]) -> None:
        pass

    def unassign(self) -> None:
        pass


def run(batches: list[list[Msg]], revoke_at: int | None = None, fail_flush: int | None = None) -> list[str]:
    log: list[str] = []
    settings = load_settings(environ={}).with_(topic_prefix="t", batch_within_s=1e-6)

    def begin(messages: list[Msg], meanwhile: Callable[[], None]) -> Settle:
        n = messages[0].offset()
        log.append(f"compute {n} starts")
        meanwhile()
        log.append(f"compute {n} done, queued")

        def settle() -> None:
            if n == fail_flush:
                raise RuntimeError("flush failed")
            log.append(f"flushed {n}")
            return None

        return settle

    consumer = EventConsumer(settings, begin, hooks=_NoHooks())
    fake = FakeConsumer(consumer, batches, log, revoke_at)
    consumer._consumer = fake
    consumer.leave_on_close = False
    consumer.run()
    if consumer.error is not None:
        log.append(f"error {consumer.error}")
    return log


class _NoHooks:
    def assigned(self, partitions: Any) -> None:
        pass

    def revoked(self, partitions: Any, lost: bool) -> None:
        pass


def test_a_batch_flushes_while_the_next_computes_and_commits_only_after_its_flush() -> None:
    log = run([[Msg(0, 0), Msg(1, 0)], [Msg(0, 1)], [Msg(1, 1)]])
    assert log == [
        "compute 0 starts", "compute 0 done, queued",
        "compute 1 starts", "flushed 0", "commit 0:1,1:1", "compute 1 done, queued",
        "compute 1 starts", "flushed 1", "commit 0:2,1:1", "compute 1 done, queued",
        "flushed 1", "commit 0:2,1:2",  # the last batch: settled when no more come
        "commit 0:2,1:2",  # and the clean stop's synchronous commit
    ]


def test_a_rebalance_settles_the_batch_in_flight_first() -> None:
    log = run([[Msg(0, 0)], [Msg(0, 1)]], revoke_at=1)
    assert log.index("flushed 0") < log.index("commit 0:1") < log.index("compute 1 starts")
    assert log[log.index("revoke") + 1] == "flushed 0"  # inside the callback, before anything else


@pytest.mark.parametrize("failing", [0, 1])
def test_a_batch_whose_flush_fails_is_never_committed(failing: int) -> None:
    log = run([[Msg(0, 0)], [Msg(0, 1)], [Msg(0, 2)]], fail_flush=failing)
    assert log[-1] == "error flush failed"
    assert f"flushed {failing}" not in log
    assert all(c == "commit 0:1" for c in log if c.startswith("commit"))  # nothing at or after the failed batch

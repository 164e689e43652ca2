"""The agent's state recovery when several callers want the same partitions (no broker: the
changelog read is replaced by one that waits for the test)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from streams.settings import load_settings
from streams.worker.agent import EventAgent
from streams.worker.userstate import UserStateStore


class GatedStore(UserStateStore):
    """``load`` returns one user per partition once ``gate`` is set; a caller that polls
    ``loaded`` without end fails instead of hanging the test."""

    def __init__(self) -> None:
        super().__init__(load_settings(environ={}))
        self.gate, self.finished = threading.Event(), threading.Event()
        self.loads, self.polls = 0, 0
        self.fail = False

    def loaded(self, partition: int) -> bool:
        self.polls += 1
        if self.polls > 10_000:
            raise RuntimeError("recover() is spinning")
        return super().loaded(partition)

    def load(self, partitions: Collection[int]) -> dict[int, dict[str, bytes]]:
        self.loads += 1
        self.gate.wait(5)
        self.finished.set()
        if self.fail:
            raise ConnectionError("broker away")
        return {p: {f"u{p}": b"{}"} for p in partitions}


@pytest.fixture
def loader() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _agent(store: UserStateStore, loader: ThreadPoolExecutor) -> EventAgent:
    agent = EventAgent.__new__(EventAgent)  # only what recover() uses: no Faust app, no broker
    agent.store, agent._inflight, agent.loader = store, {}, loader
    return agent


def test_a_second_caller_arriving_as_the_first_read_completes_does_not_spin(loader: ThreadPoolExecutor) -> None:
    """The read is done but its first caller has not resumed yet when the agent asks for the
    same partition: it must wait (yield), not spin on the finished read and block the loop."""
    store = GatedStore()
    agent = _agent(store, loader)

    async def main() -> None:
        first = asyncio.ensure_future(agent.recover({0, 1}))  # on_partitions_assigned
        await asyncio.sleep(0)  # its read is in flight
        store.gate.set()
        store.finished.wait(5)  # the read is done; the loop has not seen it yet
        second = asyncio.ensure_future(agent.recover({0}))  # the agent's first batch
        await asyncio.wait_for(asyncio.gather(first, second), 5)

    asyncio.run(main())
    assert store.loads == 1 and store.loaded(0) and store.loaded(1) and not agent._inflight
    assert store.get(1, "u1").user_id == "u1"


def test_a_failed_read_raises_to_its_caller_and_the_next_caller_reads_again(loader: ThreadPoolExecutor) -> None:
    store = GatedStore()
    store.fail = True
    agent = _agent(store, loader)

    async def main() -> None:
        store.gate.set()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(agent.recover({0}), 5)
        assert not agent._inflight and not store.loaded(0)
        store.fail = False
        await asyncio.wait_for(agent.recover({0}), 5)

    asyncio.run(main())
    assert store.loads == 2 and store.loaded(0)

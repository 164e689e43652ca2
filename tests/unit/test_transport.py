"""streams.transport's consumer loop, driven without a broker: what a rebalance's seek does to a fetch
in flight."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP

from streams.app import make_app
from streams.settings import load_settings

TOPIC = TP("events", 0)


def _msg(offset: int) -> Any:
    return SimpleNamespace(topic=TOPIC.topic, partition=TOPIC.partition, offset=offset)


def test_a_fetch_that_a_seek_overtakes_is_fetched_again_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch issued before a rebalance comes back after the new assignment's seek to the committed
    offset (12), holding 20-22 from the old read position; 12-19 were in the agents' queues, which the
    revocation cleared. Delivering 20-22 would move the read offset past 12-19, and the fetch from the
    committed offset would then skip them as read already: they would never be applied."""
    loop = asyncio.new_event_loop()  # the app's: Faust binds its services to the current loop
    asyncio.set_event_loop(loop)
    try:
        _drain_across_a_rebalance(monkeypatch, loop)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _drain_across_a_rebalance(monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop) -> None:
    consumer = make_app(load_settings({}).with_(brokers="127.0.0.1:1", profile="embedded")).consumer
    seeks: list[int] = []

    async def seek_to_committed(self: Any) -> None:  # Faust's perform_seek, without a broker
        seeks.append(12)
        self._read_offset[TOPIC] = 12

    monkeypatch.setattr(faust_consumer.Consumer, "perform_seek", seek_to_committed)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    fetches = [
        ("rebalance", [20, 21, 22]),  # in flight while the group rebalanced and the new assignment seeked
        (None, list(range(12, 23))),  # from the committed offset
    ]

    async def getmany(timeout: float) -> Any:
        if not fetches:
            fetcher._stopped.set()
            return
        event, offsets = fetches.pop(0)
        if event == "rebalance":
            await consumer.perform_seek()
        for offset in offsets:
            yield TOPIC, _msg(offset)

    delivered: list[int] = []

    async def callback(message: Any) -> None:
        delivered.append(message.offset)

    consumer.getmany = getmany
    consumer.callback = callback
    try:
        loop.run_until_complete(consumer._drain_messages(fetcher))
    finally:
        consumer._thread.thread_loop.close()  # the consumer thread's loop, never started here
    assert delivered == list(range(12, 23))
    assert len(seeks) == 2  # the rebalance's, and the one that fetches the overtaken records again

"""Micro-batches straight from a Faust agent's channel: one await per batch, not per event.

``Stream.take_events`` runs Faust's whole per-event path for every message (a
loop turn with ``sleep(0)``, flow-control and generation checks, sensors, an
awaited buffer processor, a context variable, an ack) and costs more Python per
event than the rest of a worker's hot path. ``take_batches`` drains the same
channel queue in bulk and keeps what matters for delivery guarantees:

- messages of an older consumer generation (left over from before a rebalance)
  and messages that arrive while flow control is paused are dropped unprocessed
  and unacked, exactly as Faust's stream does, so they are delivered again to the
  partition's owner;
- every message is tracked as unacked when taken and acked only after the
  caller processed the batch (when it asks for the next one), never when the
  caller raised or was cancelled, so Faust commits an offset only once its batch
  is done (unlike ``take_events``, which acks in a ``finally``) and a rebalance
  waits for the batch in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["OffsetWatch", "take_batches"]

log = logging.getLogger("freshrec.worker")


class OffsetWatch:
    """The offset each partition's next message should have, to notice messages skipped upstream.

    Within one consumer generation, a partition's messages reach the agent with consecutive
    offsets: the first one at the committed offset the assignment sought to, then each one
    past the last. A message further on means messages were skipped before the agent saw
    them (by the consumer, or by retention deleting them before they were read). One
    missing offset is allowed: a transaction's commit marker takes one.
    """

    def __init__(self) -> None:
        self._next: dict[Any, int] = {}
        self._generation: int | None = None

    def check(self, tp: Any, offset: int, generation: int, committed: int | None) -> tuple[int, int] | None:
        """Note a message; (expected offset, missing count) when messages were skipped before it."""
        if generation != self._generation:
            self._next.clear()
            self._generation = generation
        expected = self._next.get(tp, committed)
        self._next[tp] = offset + 1
        if expected is None or offset <= expected + 1:
            return None
        return expected, offset - expected


async def take_batches(stream: Any, max_: int, within: float,
                       on_gap: Callable[[Any, int, int], None] | None = None) -> AsyncIterator[list[Any]]:
    """Yield lists of up to ``max_`` events, each within ``within`` seconds of its first event.

    ``stream`` is the agent's stream (``async def agent(stream)``); the events are
    Faust events (``event.message`` has key, value, topic, partition, offset,
    timestamp). Events are acked when the consumer of this generator asks for the
    next batch; a batch whose loop body raised is never acked. ``on_gap(tp, expected,
    missing)`` is called for a message that arrives past the offset its partition's
    next message should have had (``OffsetWatch``).
    """
    watch = OffsetWatch()
    app = stream.app
    consumer = app.consumer
    channel = stream.channel
    queue = channel.queue
    errors = queue._errors
    flow = app.flow_control
    acking_topics = app.topics.acking_topics
    loop = asyncio.get_running_loop()
    stream.enable_acks = False  # acks are ours: after the batch is processed
    while not stream.should_stop:
        if errors:
            raise errors.popleft()
        try:
            first = await channel.get()
        except StopAsyncIteration:  # Faust stops a stream's channel this way on shutdown
            return
        batch = [first]
        deadline = loop.time() + within
        while len(batch) < max_:
            while len(batch) < max_ and not queue.empty():
                batch.append(queue.get_nowait())
            if len(batch) >= max_:
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(channel.get(), left))
            except (asyncio.TimeoutError, StopAsyncIteration):
                break
        generation = app.consumer_generation_id
        active = flow.is_active()
        events = []
        dropped = 0
        for event in batch:
            message = event.message
            if not active or message.generation_id != generation:
                dropped += 1  # from before a rebalance: the partition's owner reads it again
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                consumer.unacked.add(message)
            if on_gap is not None:
                tp = message.tp
                gap = watch.check(tp, message.offset, generation, consumer._committed_offset.get(tp))
                if gap is not None:
                    on_gap(tp, *gap)
            events.append(event)
        if dropped:
            log.info("dropped %d of %d messages taken during a rebalance (flow %s, generation %s, "
                     "the batch's first %s): they are read again from the committed offsets", dropped,
                     len(batch), "active" if active else "paused", generation, batch[0].message.generation_id)
        if not events:
            continue
        yield events
        # only a batch the caller finished is acked: if it raised or was cancelled (a SIGTERM
        # mid-batch), the generator is closed at the yield and nothing is acked or committed
        for event in events:
            event.message.ack(consumer)

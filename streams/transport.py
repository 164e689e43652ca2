"""freshrec's Faust transport: Faust's aiokafka driver with a cheaper message loop.

Faust's consumer loop (``Consumer._drain_messages``) hands every message to the
agents through ``Service.wait_first(callback(message), suspend_flow.wait())``:
four asyncio tasks and an ``asyncio.wait`` per message, so that a rebalance can
abort a delivery that is blocked on a full agent queue: a large share of an empty
agent's CPU time per event (docs/profile_ceiling.txt). Here a message is
delivered with a plain ``await callback(message)`` while flow is running, and
through ``wait_first`` only while flow is suspended (a rebalance in progress).
A delivery blocked on a full queue when a rebalance starts is released when
Faust clears the agents' queues, and the message it delivers carries the old
consumer generation, so the agent drops it unprocessed and unacked
(``streams.batching.take_batches``, like Faust's own streams).

One more difference: a fetch that a rebalance's seek to the committed offsets
overtook is dropped, and the consumer seeks again. Faust stamps a fetch's records
with the consumer generation current when the fetch *returns*, so a fetch issued
before a rebalance could deliver records of the old read position under the new
generation, and the events Faust cleared from the agents' queues at the
revocation were then never applied (``FastConsumer._restart_after_stale_fetch``).

Everything else is Faust's: offset gaps, commits every ``broker_commit_every``
messages, the read offsets and the diagnostics flags. Two schemes are
registered: ``kafka-freshrec://`` (production) and ``kafka-embedded://`` (the
same, with a short fetch wait for the embedded broker; see streams.embedded).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

__all__ = ["EMBEDDED_FETCH_WAIT_MS", "transport_scheme"]

EMBEDDED_FETCH_WAIT_MS = 20
"""Fetch wait on the embedded broker, which answers a fetch only when its wait expires: each hop
waits up to this long (Faust hard-codes 1500 ms, ~0.4 s a hop; 20 ms keeps freshness under 100 ms)."""


def transport_scheme(embedded: bool) -> str:
    """Register (once) and name the transport for the profile."""
    from faust.transport import drivers

    for scheme, cls in (("kafka-freshrec", "_Transport"), ("kafka-embedded", "_EmbeddedTransport")):
        if scheme not in drivers.TRANSPORTS.data:
            drivers.TRANSPORTS.data[scheme] = f"{__name__}:{cls}"
    return "kafka-embedded" if embedded else "kafka-freshrec"


def _make_transports() -> tuple[Any, Any]:
    from faust.transport.consumer import CONSUMER_FETCHING
    from faust.transport.drivers import aiokafka as driver

    class FastConsumer(driver.Consumer):  # type: ignore[misc]
        fetch_max_wait_ms: int | None = None
        _seeks = 0  # +1 when a seek to the committed offsets starts, +1 when it ends

        async def perform_seek(self) -> None:
            self._seeks += 1
            try:
                await super().perform_seek()
            finally:
                self._seeks += 1

        def _new_consumer_thread(self) -> Any:
            wait_ms = self.fetch_max_wait_ms
            if wait_ms is None:
                return super()._new_consumer_thread()

            class Thread(driver.AIOKafkaConsumerThread):  # type: ignore[misc]
                def _create_worker_consumer(self, transport: Any) -> Any:
                    consumer = super()._create_worker_consumer(transport)
                    consumer._fetch_max_wait_ms = wait_ms
                    return consumer

            return Thread(self, loop=self.loop, beacon=self.beacon)

        async def _restart_after_stale_fetch(self, stale: int) -> None:
            """Drop a fetch that a rebalance's seek overtook, and seek to the committed offsets again.

            A fetch issued before a rebalance can come back after the new assignment's seek,
            holding records from the old read position, past the messages Faust cleared
            from the agents' queues at the revocation. Delivered, they would be applied
            ahead of those messages, and they would move the read offset past them, so the
            fetch from the committed offsets would skip them as read already: a whole
            queue's worth of events never applied. Nothing from such a fetch is delivered,
            and a seek back to the committed offsets fetches all of it again, in order.
            """
            self.log.info("dropped %d records of a fetch that a seek overtook; seeking to the committed "
                          "offsets again", stale)
            await self.perform_seek()

        async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in workers
            callback = self.callback
            getmany = self.getmany
            consumer_should_stop = self._stopped.is_set
            fetcher_should_stop = fetcher._stopped.is_set
            suspended = self.suspend_flow.is_set
            get_read_offset = self._read_offset.__getitem__
            set_read_offset = self._read_offset.__setitem__
            acks_enabled_for = self.app.topics.acks_enabled_for
            commit_every = self._commit_every
            since_yield = 0
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    self.diag.set_flag(CONSUMER_FETCHING)
                    seeks = self._seeks
                    stale = 0
                    ait = cast(Any, getmany(timeout=1.0))
                    await asyncio.sleep(0)
                    if self.should_stop:
                        continue
                    async for tp, message in ait:
                        if self._seeks != seeks:
                            stale += 1  # fetched across a seek (see _restart_after_stale_fetch)
                            continue
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # read already (a seek went back): Faust drops these too
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended():
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)
                        set_read_offset(tp, offset)
                    if stale:
                        await self._restart_after_stale_fetch(stale)
                    self.diag.unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    self.log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    self.log.info("Consumer shutting down for user cancel.")
                    return
                raise
            except Exception:
                self.log.exception("Drain messages raised")
                raise
            finally:
                self.diag.unset_flag(CONSUMER_FETCHING)

    class EmbeddedConsumer(FastConsumer):
        fetch_max_wait_ms = EMBEDDED_FETCH_WAIT_MS

    class Transport(driver.Transport):  # type: ignore[misc]
        Consumer = FastConsumer

    class EmbeddedTransport(driver.Transport):  # type: ignore[misc]
        Consumer = EmbeddedConsumer

    return Transport, EmbeddedTransport


_Transport, _EmbeddedTransport = _make_transports()

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
(``streams.worker.batching.take_batches``, like Faust's own streams).

Everything else is Faust's: offset gaps, commits every ``broker_commit_every``
messages, the read offsets and the diagnostics flags. Two schemes are
registered: ``kafka-freshrec://`` (production) and ``kafka-embedded://`` (the
same, with a short fetch wait for the embedded broker; see streams.worker.embedded).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

__all__ = ["EMBEDDED_FETCH_WAIT_MS", "transport_scheme"]

from streams.kafka import EMBEDDED_FETCH_WAIT_MS


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
                    ait = cast(Any, getmany(timeout=1.0))
                    await asyncio.sleep(0)
                    if self.should_stop:
                        continue
                    async for tp, message in ait:
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

"""Workarounds for the embedded broker (Tansu), in one place, each naming the gap it covers.

Tansu's gaps (measured in shared/BROKER.md) and what freshrec does about them:

- **Fetches are answered only when their wait expires.** Faust hard-codes a
  1,500 ms fetch wait, so each hop waited ~0.4 s: ``kafka-embedded://``
  (``streams.worker.transport``) and the confluent-kafka clients wait 20 ms.
- **Group joins wait for the whole session timeout.** The embedded profile
  shortens Faust's session, heartbeat and rebalance timeouts (``streams.worker.app``)
  and confluent-kafka's (``streams.kafka.client_config``).
- **End offsets are under-reported** (start of the last stored batch + 1).
  Consumer lag reads low (``lag`` says so); state recovery does not use end
  offsets at all (``streams.worker.userstate`` reads up to a marker it writes).
- **No exactly-once producer** (aiokafka's ``InitProducerId`` v0): freshrec is
  at-least-once with exactly-once effect on state on every broker.
"""

from __future__ import annotations

import faust

__all__ = ["lag"]


def lag(app: faust.App, topic: str) -> int | None:
    """Events not yet read on this worker's partitions of ``topic`` (best effort).

    On the embedded broker end offsets are under-reported, so this reads low there.
    """
    try:
        consumer = app.consumer
        total = 0
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            high = consumer.highwater(tp)
            pos = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
            if high is not None:
                total += max(0, high - 1 - (pos if pos is not None else -1))
        return total
    except Exception:  # noqa: BLE001 - metrics must never break the worker
        return None

"""The embedded broker's CPU for one tailing consumer, by how many batches its partition stores.

    python benchmarks/tansu_fetch_cost.py [--batches 15000] [--rate 200] [--seconds 4]

Three fresh embedded brokers (Tansu), each with topics ``a`` and ``b`` of one partition:
nothing stored; ``--batches`` one-message batches stored in ``a``; the same stored in ``b``.
Then a consumer tails ``b`` (fetch wait 20 ms, the embedded profile's) while a producer sends
``--rate`` messages/s to it, and the broker's CPU (utime + stime from /proc) over
``--seconds`` is printed. If a fetch walks every batch stored in its partition, only the
third case costs more (docs/broker.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streams.broker import EmbeddedBroker  # noqa: E402
from streams.kafka import EMBEDDED_FETCH_WAIT_MS  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(fill: str | None, batches: int, rate: float, seconds: float) -> float:
    """The broker's CPU share while ``b`` is tailed, after ``batches`` were stored in ``fill``."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    with EmbeddedBroker() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for topic in ("a", "b"):
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
        for _ in range(batches if fill else 0):
            producer.produce(fill, b"x" * 200)
            producer.flush()  # one message per batch
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe",
                             "fetch.wait.max.ms": EMBEDDED_FETCH_WAIT_MS, "enable.auto.commit": False})
        _, end = consumer.get_watermark_offsets(TopicPartition("b", 0), timeout=10)
        consumer.assign([TopicPartition("b", 0, end)])
        consumer.poll(0.5)
        assert broker.pid is not None
        cpu0, t0 = _cpu_s(broker.pid), time.monotonic()
        due = t0
        while (now := time.monotonic()) - t0 < seconds:
            if now >= due:
                producer.produce("b", b"z" * 100)
                producer.poll(0)
                due += 1.0 / rate
            consumer.poll(0.001)
        share = (_cpu_s(broker.pid) - cpu0) / (time.monotonic() - t0)
        consumer.close()
        return share


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=15_000, help="one-message batches stored (default 15000)")
    ap.add_argument("--rate", type=float, default=200.0, help="messages/s sent to the tailed partition")
    ap.add_argument("--seconds", type=float, default=4.0, help="how long the tail is measured")
    args = ap.parse_args()
    for fill, label in ((None, "nothing stored"), ("a", f"{args.batches:,} batches in another topic"),
                        ("b", f"{args.batches:,} batches in the tailed partition")):
        share = measure(fill, args.batches, args.rate, args.seconds)
        print(f"{label:45s} broker CPU {share:.0%} of a core", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

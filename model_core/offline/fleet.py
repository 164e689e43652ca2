"""The served model replayed the way a fleet of workers serves it.

``freshrec evaluate`` and the trainer's promotion gate (``compare_on_holdout``) score
the served model through this, not through a one-event-at-a-time adapter:

- **users split as the producer splits them**: a user's events go to partition
  ``murmur2(user_id) % partitions`` (the Java client's partitioner, which freshrec's
  producer uses), and partition ``p`` to worker ``p % workers``;
- **one item side for the fleet** (``shared``, the worker's way): each batch's
  ``ItemDelta`` goes through its wire form (``model_core.served.shared``) and is applied to the
  item side every worker serves from, as every worker applies the deltas topic. The
  delta's trip through the broker (milliseconds) is not modelled: the next batch sees it.
  With ``shared=False`` each worker learns from its own users' events only (what workers
  without the deltas topic would serve, kept to measure what sharing is worth);
- **micro-batches as the worker forms them**: a worker's batch closes at ``batch``
  events or once the stream's event time is more than ``within_s`` past the batch's
  first event (every worker's clock runs, whether its partitions get events or not), as
  a worker that reads the log at its real pace does;
  ``within_s=inf`` gives batches of exactly ``batch`` events (a backfill at full speed);
- **the worker's own calls**: each event goes into its user's ``UserHistory`` through
  ``ServedModel.apply`` with its (partition, offset), then ``step`` once per
  batch, and each touched user's list is replaced by the one ``step`` returned;
- **scored against what was served**: an event is a point when its user is known and
  its item new to them, and a hit when the item is in the list that user was last
  published (the list before the event's batch);
- **a restart** (``restart``): every worker starts again with what a start restores:
  the user histories (the changelog) and, shared, the item side from a snapshot
  (``model_core.served.shared.snapshot``, through its bytes) plus the deltas after it; not
  shared, nothing of the online state. Published lists stay.

Only user ids, events and the model core are used: no broker is involved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from model_core.errors import ConfigError
from model_core.events import Event
from model_core.reco import Ranked
from model_core.served.model import ServedModel
from model_core.served.shared import decode_delta, encode_delta, restore, snapshot
from model_core.state import UserHistory

__all__ = ["Deployment", "ServedFleet", "murmur2", "partition_of"]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[4 * n4 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(user_id: str, partitions: int) -> int:
    """The partition freshrec's producer (``murmur2_random``) sends a user's events to."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Deployment:
    """How the served model is deployed, for scoring it as it is served.

    The defaults are the worker's (``batch_size`` 256, ``batch_within_s`` 0.005, 4
    partitions) with one worker.
    """

    batch: int = 256
    within_s: float = 0.005
    workers: int = 1
    partitions: int = 4
    restart_at: float | None = None  # fraction of the scored events where every worker restarts
    shared: bool = True  # one item side for all workers (the deltas topic), as the worker runs

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch} must be >= 1")
        if not self.within_s >= 0:
            raise ConfigError(f"batch_within_s={self.within_s} must be >= 0")
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} must be >= 1")
        if self.partitions < 1:
            raise ConfigError(f"partitions={self.partitions} must be >= 1")
        if self.restart_at is not None and not 0 <= self.restart_at <= 1:
            raise ConfigError(f"restart_at={self.restart_at} must be between 0 and 1")

    @property
    def moment_s(self) -> float:
        """Events this close (event time) happened together: the batch window, 0 for a backfill."""
        return self.within_s if math.isfinite(self.within_s) else 0.0

    @property
    def live_workers(self) -> int:
        """Workers that own a partition (a worker beyond the partition count idles)."""
        return min(self.workers, self.partitions)

    def describe(self) -> str:
        within = "full speed" if math.isinf(self.within_s) else f"within {self.within_s:g}s"
        restart = f", restart at {self.restart_at:g}" if self.restart_at is not None else ""
        alone = "" if self.shared or self.live_workers == 1 else ", each learning alone"
        return (f"{self.workers} worker(s) on {self.partitions} partitions, batches of <= {self.batch} "
                f"({within}){restart}{alone}")


class ServedFleet:
    """Workers serving one model version: events arrive in time order, lists come out."""

    def __init__(self, make: Callable[[], ServedModel], deployment: Deployment, k: int = 20) -> None:
        self.make, self.deployment, self.k = make, deployment, k
        n = deployment.live_workers
        self.recs = [make()] * n if deployment.shared else [make() for _ in range(n)]
        self.deltas = 0  # deltas applied, and their wire size in bytes
        self.delta_bytes = 0
        self.histories: dict[str, UserHistory] = {}
        self.lists: dict[str, Ranked] = {}
        self.batches = 0
        self._pending: list[list[tuple[Event, int, int]]] = [[] for _ in self.recs]
        self._first: list[float] = [0.0] * len(self.recs)
        self._open: dict[int, None] = {}  # workers with an open batch, oldest first
        self._offsets = [0] * deployment.partitions
        self._partition: dict[str, int] = {}

    def served(self, user_id: str) -> Ranked:
        """The list last published for the user (empty before the first)."""
        return self.lists.get(user_id, [])

    def arrive(self, events: Iterable[Event]) -> None:
        """Events as the brokers deliver them, in time order: batched and stepped per worker."""
        dep = self.deployment
        for ev in events:
            p = self._partition.get(ev.user_id)
            if p is None:
                p = self._partition[ev.user_id] = partition_of(ev.user_id, dep.partitions)
            self.advance(ev.time)
            w = p % len(self.recs)
            pending = self._pending[w]
            if len(pending) >= dep.batch:
                self._flush(w)
            if not pending:
                self._first[w] = ev.time
                self._open[w] = None
            pending.append((ev, p, self._offsets[p]))
            self._offsets[p] += 1

    def advance(self, now: float) -> None:
        """The stream's clock reached ``now``: every batch opened more than ``within_s`` before it
        has closed (whichever worker holds it), and its lists are out. Call it before asking
        ``served`` at an event's time."""
        while self._open and now - self._first[next(iter(self._open))] > self.deployment.within_s:
            self._flush(next(iter(self._open)))

    def flush(self) -> None:
        """Close every worker's open batch."""
        for w in range(len(self.recs)):
            self._flush(w)

    def restart(self) -> None:
        """Every worker starts again: histories come back, online state starts empty."""
        self.flush()
        if self.deployment.shared:
            fresh = self.make()
            restore(fresh, snapshot(self.recs[0], self.deltas))
            self.recs = [fresh] * len(self.recs)
        else:
            self.recs = [self.make() for _ in self.recs]

    def _flush(self, w: int) -> None:
        pending = self._pending[w]
        self._open.pop(w, None)
        if not pending:
            return
        rec, histories = self.recs[w], self.histories
        touched: dict[str, UserHistory] = {}
        applied: list[Event] = []
        for ev, p, offset in pending:
            h = touched.get(ev.user_id) or histories.get(ev.user_id)
            if h is None:
                h = histories[ev.user_id] = UserHistory(ev.user_id)
            if rec.apply(h, ev, (p, offset)):
                touched[ev.user_id] = h
                applied.append(ev)
        pending.clear()
        if touched:
            plan = rec.plan_step(applied, touched, self.k)
            for user, lst in zip(touched, plan.lists):
                self.lists[user] = lst
            if self.deployment.shared:
                wire = encode_delta(plan.delta)
                self.deltas += 1
                self.delta_bytes += len(wire)
                rec.learn(decode_delta(wire))
            else:
                rec.learn(plan.delta)
        self.batches += 1


"""The item side every worker of the group shares: a replicated log of deltas, and snapshots.

The served model's item side (trending, item graphs, session kNN, the ranker, new items'
vectors; ``model_core.served.shared``) is learned from the whole stream, not from the
partitions a worker owns:

- each batch's ``ItemDelta`` is queued with the batch's lists and state and flushed with
  them, to ``P.deltas.<group>`` (one partition: one order for everyone);
- every worker reads that topic (no group: all of it) on its own thread and applies each
  record on the compute thread, in order, its own deltas too, only once read back: two
  workers that applied up to the same offset hold the same item side;
- at start a worker loads the newest snapshot, applies the deltas after it up to a marker
  record it writes (``TopicReader(until="marker")``), and only then reads events;
- the worker that owns events partition 0 writes a snapshot every ``snapshot_every_s``
  (``<snapshot dir>/snapshot-<offset>.npz``, atomically; the newest two are kept).

A record whose bytes are not a delta is skipped, logged and counted (``deltas_bad``), a
delta whose learning raises too (``learn_errors``); a run of offsets deleted by retention
before this worker read them is logged (the item side misses them; a snapshot newer than
the retention avoids it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from model_core.errors import BadInputError, ModelIncompatibleError
from model_core.served.shared import decode_delta, pack, restore, snapshot_arrays
from streams.errors import BrokerUnavailableError
from streams.reader import Record, TopicReader
from streams.settings import Settings
from streams.worker.batch import fatal
from streams.worker.metrics import Metrics
from streams.worker.model import WorkerModel

__all__ = ["ItemSide", "snapshot_dir"]

log = logging.getLogger("freshrec.itemside")

_KEEP = 2  # snapshots kept


def snapshot_dir(settings: Settings, model_root: Path) -> Path:
    """``FRESHREC_SNAPSHOT_DIR``, else ``<model dir>/online-state/<group>``."""
    return Path(settings.snapshot_dir) if settings.snapshot_dir else model_root / "online-state" / settings.group


class ItemSide(threading.Thread):
    """Restores, catches up and then follows the deltas topic (see the module docstring)."""

    def __init__(self, settings: Settings, model: WorkerModel, metrics: Metrics, directory: Path,
                 owns_snapshots: Callable[[], bool]) -> None:
        super().__init__(name="freshrec-itemside", daemon=True)
        self.settings, self.model, self.metrics, self.directory = settings, model, metrics, directory
        self.owns_snapshots = owns_snapshots
        self.position = 0  # the next deltas offset to apply (compute thread)
        self.stopping = threading.Event()
        self._last_snapshot = time.monotonic()

    # -- start ------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the newest readable snapshot into the served model (before anything is learned)."""
        for path in sorted(self.directory.glob("snapshot-*.npz"), reverse=True):
            started = time.perf_counter()
            try:
                data = path.read_bytes()
                rec = self.model.rec
                assert rec is not None
                self.position = self.model.executor.submit(restore, rec, data).result()
            except (OSError, ModelIncompatibleError) as exc:
                log.warning("item side: cannot use snapshot %s (%s); trying an older one", path, exc)
                continue
            log.info("item side: restored %s (%.1f MB, %d items, deltas from offset %d) in %.1fs", path,
                     len(data) / 1e6, len(rec.signals.ids), self.position, time.perf_counter() - started)
            return
        log.info("item side: no snapshot in %s; applying the deltas topic from its start", self.directory)

    def catch_up(self) -> None:
        """Apply every delta written before now (to a marker this worker writes), on the compute thread."""
        started, first = time.perf_counter(), self.position
        with TopicReader(self.settings, self.settings.deltas_topic, partitions=[0], start={0: self.position},
                         until="marker", timeout_s=None, stall_s=120.0, name="deltas-catch-up") as reader:
            for batch in reader.batches(self.stopping):
                self.model.executor.submit(self.apply, batch).result()
        log.info("item side: caught up, %d deltas applied (offsets %d..%d) in %.1fs", self.metrics.count("deltas_applied"),
                 first, self.position, time.perf_counter() - started)

    # -- the follower thread ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            with TopicReader(self.settings, self.settings.deltas_topic, partitions=[0], start={0: self.position},
                             until="follow", name="deltas") as reader:
                while not self.stopping.is_set():
                    batch = reader.poll()
                    if batch:
                        self.model.executor.submit(self.apply, batch)  # FIFO with the batches' compute
                    self.maybe_snapshot()
        except BrokerUnavailableError as exc:  # a worker whose item side stopped learning must not serve on
            fatal(f"the item side's deltas follower stopped: {exc}")

    def apply(self, records: list[Record]) -> None:
        """Apply deltas in offset order (compute thread); one already applied is skipped."""
        rec = self.model.rec
        assert rec is not None
        started = time.perf_counter()
        applied = 0
        for r in records:
            if r.offset < self.position:
                continue
            if r.offset > self.position and self.position > 0:
                log.warning("item side: deltas %d..%d were deleted before this worker applied them "
                            "(FRESHREC_DELTAS_RETENTION_S; snapshots every FRESHREC_SNAPSHOT_EVERY_S)",
                            self.position, r.offset - 1)
            self.position = r.offset + 1
            try:  # this worker's own records are learned from memory: the same delta, no decoding
                delta = self.model.own_delta(r.value or b"") or decode_delta(r.value or b"")
            except BadInputError as exc:
                self.metrics.inc("deltas_bad")
                log.warning("item side: skipped deltas record %d: %s", r.offset, exc)
                continue
            try:
                rec.learn(delta)
            except Exception as exc:  # a delta this model cannot learn must not stop the others
                self.metrics.inc("learn_errors")
                log.error("item side: learning deltas record %d failed (skipped): %r", r.offset, exc)
                continue
            applied += 1
        if applied:
            self.metrics.inc("deltas_applied", applied)
            self.metrics.stage("deltas", time.perf_counter() - started)

    # -- snapshots ---------------------------------------------------------------------------------

    def maybe_snapshot(self) -> None:
        """Write a snapshot when due and this worker owns events partition 0 (follower thread)."""
        if time.monotonic() - self._last_snapshot < self.settings.snapshot_every_s or not self.owns_snapshots():
            return
        self._last_snapshot = time.monotonic()
        try:
            self.write_snapshot()
        except OSError as exc:
            log.error("item side: cannot write a snapshot to %s: %s (a restart applies the deltas kept "
                      "since the last one)", self.directory, exc)

    def write_snapshot(self) -> Path:
        """Copy the item side on the compute thread, compress and write it here."""
        started = time.perf_counter()

        def copy() -> tuple[dict[str, object], int]:
            rec = self.model.rec
            assert rec is not None
            return snapshot_arrays(rec, self.position), self.position  # type: ignore[return-value]

        arrays, position = self.model.executor.submit(copy).result()
        copied = time.perf_counter() - started
        data = pack(arrays)  # type: ignore[arg-type]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"snapshot-{position:020d}.npz"
        tmp = self.directory / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        for old in sorted(self.directory.glob("snapshot-*.npz"), reverse=True)[_KEEP:]:
            old.unlink(missing_ok=True)
        self.metrics.inc("snapshots")
        log.info("item side: snapshot %s (%.1f MB; %.2fs on the compute thread, %.1fs in all)", path.name,
                 len(data) / 1e6, copied, time.perf_counter() - started)
        return path


"""``freshrec archive``: the events topic to rolling, compressed JSON-lines files.

For shops that keep more history than the topic's retention: every ``--log``
command (train, evaluate, replay) reads the files. Each file is
``OUT/events-<UTC time of the roll>-<random>.jsonl.gz``, written as a hidden
``.part`` file and renamed when complete, so a reader never sees half a file.
``OUT/offsets.json`` (replaced atomically after each rename) holds the next
offset of every partition: a restarted archiver continues there (a killed run's
unfinished file is deleted and read again), so no event is archived twice or
skipped, with or without event ids. One archiver per directory (a lock file).

Records are validated like the worker validates them; what the worker would
dead-letter is skipped and counted. Erase commands are not events: they are
written to ``OUT/erasures.jsonl`` (user id, time), which is the list of users to
remove from older files when a privacy request must reach the archive too.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import logging
import os
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model_core.errors import ConfigError
from model_core.events import event_to_json
from streams.codec import EraseCommand, EventLimits, decode_message
from streams.reader import TopicReader
from streams.settings import Settings

__all__ = ["Archiver", "add_parser", "run"]

log = logging.getLogger("freshrec.archive")

OFFSETS = "offsets.json"


class Archiver:
    """Consumes the events topic into ``out``; ``run`` returns when caught up (or stopped)."""

    def __init__(self, settings: Settings, out: str | Path, *, roll_bytes: int = 256 << 20,
                 roll_s: float = 3600.0) -> None:
        if roll_bytes < 1 or roll_s <= 0:
            raise ConfigError("--roll-mb and --roll-every must be > 0")
        self.settings, self.out = settings, Path(out)
        self.roll_bytes, self.roll_s = roll_bytes, roll_s
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / ".lock", "w")  # noqa: SIM115 - held for the archiver's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ConfigError(f"another `freshrec archive` is writing {self.out}") from None
        for stale in self.out.glob(".events-*.part"):  # a killed run's unfinished file: its offsets
            stale.unlink()                              # were never recorded, so it is read again
        self.limits = EventLimits.of(settings)
        self.events = self.skipped = self.erases = self.files = 0
        self._next: dict[int, int] = {int(p): int(o) for p, o in self._read_offsets().items()}
        self._pending: dict[int, int] = {}  # offsets of what the open file holds
        self._file: gzip.GzipFile | None = None
        self._raw: Any = None
        self._part: Path | None = None
        self._opened = 0.0
        self._in_file = 0

    def close(self) -> None:
        """Release the directory (``run`` does when it returns)."""
        self._lock.close()

    def _read_offsets(self) -> dict[str, int]:
        path = self.out / OFFSETS
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            return {str(p): int(o) for p, o in data["next_offsets"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not an archive offsets file ({exc}); move it away to start over") from None

    def _open(self) -> None:
        self._part = self.out / f".events-{uuid.uuid4().hex[:8]}.jsonl.gz.part"
        self._raw = open(self._part, "wb")  # noqa: SIM115 - closed in _roll
        self._file = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        self._opened = time.monotonic()

    def _roll(self) -> None:
        """Close the open file, make it visible, then record its offsets."""
        if self._file is None or self._part is None:
            return
        self._file.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = None
        if self._in_file:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            final = self.out / f"events-{stamp}-{uuid.uuid4().hex[:8]}.jsonl.gz"  # sorts by time, never clashes
            os.replace(self._part, final)
            self.files += 1
            log.info("archived %s (%d events so far, %d skipped)", final.name, self.events, self.skipped)
        else:  # only invalid records: nothing to keep, but they are consumed
            self._part.unlink(missing_ok=True)
        self._next.update(self._pending)
        tmp = self.out / f".{OFFSETS}.tmp"
        tmp.write_text(json.dumps({"topic": self.settings.events_topic, "next_offsets": self._next}, indent=1))
        os.replace(tmp, self.out / OFFSETS)
        self._file = self._raw = self._part = None
        self._in_file = 0
        self._pending = {}

    def run(self, *, follow: bool = False, stop: threading.Event | None = None, idle_s: float = 2.0) -> int:
        """Archive until caught up (no new record for ``idle_s``), or until ``stop`` with ``follow``."""
        reader = TopicReader(self.settings, self.settings.events_topic, start=dict(self._next),
                             until="follow" if follow else "drain", idle_s=idle_s, timeout_s=None,
                             connect_timeout_s=30.0, poll_s=0.5, name="archive")
        erasures = open(self.out / "erasures.jsonl", "a")  # noqa: SIM115 - closed below
        try:
            for batch in reader.batches(stop):  # an empty batch too: the file rolls on time
                if self._file is not None and (time.monotonic() - self._opened > self.roll_s or
                                               self._raw.tell() >= self.roll_bytes):
                    self._roll()
                for r in batch:
                    if self._file is None:
                        self._open()
                    self._pending[r.partition] = r.offset + 1
                    try:
                        item = decode_message(r.value, r.key, r.timestamp, self.limits)
                    except Exception as exc:  # noqa: BLE001 - BadInputError: the worker dead-letters it
                        reader.skip(r, str(exc))
                        self.skipped += 1
                        continue
                    if isinstance(item, EraseCommand):
                        self.erases += 1
                        erasures.write(json.dumps({"user_id": item.user_id, "time": r.timestamp or 0.0}) + "\n")
                        erasures.flush()
                        continue
                    assert self._file is not None
                    self._file.write(event_to_json(item).encode() + b"\n")
                    self.events += 1
                    self._in_file += 1
            self._roll()
        finally:
            erasures.close()
            reader.close()
            self.close()
            if self._file is not None:  # stopped by an error: the part file is not archived
                self._file.close()
                self._raw.close()
                if self._part is not None:
                    self._part.unlink(missing_ok=True)
        return self.events


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``freshrec archive --out DIR [--follow] [--roll-mb N] [--roll-every DURATION]``."""
    from streams.settings import add_kafka_flags

    p = sub.add_parser(
        "archive", help="copy the events topic to rolling, compressed JSON-lines files",
        description="Copy the events topic into OUT/events-*.jsonl.gz files that every --log command reads "
        "(keep history beyond the topic's retention). Continues where the last run stopped (OUT/offsets.json). "
        "Without --follow: until caught up; with it: until SIGTERM.")
    add_kafka_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="archive directory")
    p.add_argument("--follow", action="store_true", help="keep archiving new events until stopped")
    p.add_argument("--roll-mb", type=float, default=256.0, help="start a new file after this many MB (256)")
    p.add_argument("--roll-every", default="1h", metavar="DURATION", help="... or after this long (1h)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.cli.trainer import parse_duration

    archiver = Archiver(settings, args.out, roll_bytes=int(args.roll_mb * (1 << 20)),
                        roll_s=parse_duration(args.roll_every))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    n = archiver.run(follow=args.follow, stop=stop)
    print(f"archived {n} events into {archiver.files} file(s) in {args.out} "
          f"({archiver.skipped} invalid records skipped, {archiver.erases} erase commands to erasures.jsonl)")
    return 0

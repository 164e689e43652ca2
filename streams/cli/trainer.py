"""Retrain from the events topic: ``freshrec train --from-topic`` and ``freshrec trainer --every``.

The topic is read once, partition by partition, from ``--since`` ago (or from
the earliest offset) up to where it ended when the read started, with the
worker's validation: a record the worker would dead-letter is skipped and
counted here (the worker has already dead-lettered it). Erase commands are
honoured: a user's events before the command are not trained on.

Memory stays bounded by the model's (user, item) cells, not by the events: an
event goes straight into the interaction sums, except for the most recent
``holdout`` events newer than anything the serving version trained on, kept
aside in a heap by event time, and the ``warmup`` events just before them.
Those two slices are the gate: the new version and the serving one are each scored prequentially (HR@k) on the held-out slice, which
the new version did not train on: served exactly as a worker serves them
(``incremental``, online state warmed on the warm-up slice), and by their factors
alone. The new version is published under ``--out`` (the workers swap it in)
only if it does not score worse either way (paired sign tests, 5% overall: equal
within noise is not worse, ``model_core.offline.evaluate.compare_on_holdout``);
otherwise it is written to ``--out/rejected/`` with the comparison in its
``metadata.json`` and the workers keep what they serve.
"""

from __future__ import annotations

import heapq
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_core.config import ALSConfig
from model_core.errors import BadInputError, ConfigError, FreshrecError, ModelIncompatibleError
from model_core.events import Event
from streams.codec import EraseCommand, EventLimits, decode_message
from streams.errors import BrokerUnavailableError
from streams.kafka import check_brokers
from streams.reader import Since, Start, TopicReader
from streams.settings import Settings

__all__ = ["TopicRead", "TrainOptions", "parse_duration", "read_events_topic", "run_trainer", "train_from_topic"]

log = logging.getLogger("freshrec.trainer")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d``, ``2w`` -> seconds (> 0); ConfigError otherwise."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    number = t[:-1] if unit is not None else t
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f"duration {text!r} is not a number with an optional s, m, h, d or w") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"duration {text!r} must be > 0")
    return value


@dataclass
class TopicRead:
    """What a read of the events topic found."""

    topic: str = ""
    records: int = 0
    events: int = 0
    erases: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last] offset read
    seconds: float = 0.0

    def summary(self) -> str:
        top = "; ".join(f"{n}x {r}" for r, n in self.reasons.most_common(3))
        return (f"{self.records} records from {self.topic} in {self.seconds:.1f}s: {self.events} events, "
                f"{self.erases} erase commands, {self.skipped} skipped" + (f" ({top})" if top else ""))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = dict(self.reasons.most_common(10))
        return d


def read_events_topic(
    settings: Settings,
    *,
    since_s: float | None = None,
    report: TopicRead | None = None,
    progress: bool = False,
    idle_s: float = 2.0,
    timeout_s: float = 30.0,
) -> Iterator[tuple[Event | EraseCommand, int, int]]:
    """(event or erase command, partition, offset) for every valid record of the events topic
    written from ``since_s`` seconds ago (None: from the earliest offset) until the read began.

    Each partition is read up to its end offset at the start (``TopicReader(until="end")``;
    on the embedded broker, which under-reports end offsets, until a record newer than the
    start of the read or ``idle_s`` of quiet). BrokerUnavailableError when nothing arrives
    for ``timeout_s`` with partitions unfinished.
    """
    rep = report if report is not None else TopicRead()
    topic = rep.topic = settings.events_topic
    if topic not in check_brokers(settings, timeout=timeout_s):
        raise BadInputError(f"topic {topic} does not exist at {settings.brokers} (nothing was ever sent to it?)")
    limits = EventLimits.of(settings)
    start: Start = "beginning" if since_s is None else Since(time.time() - since_s)
    reader = TopicReader(settings, topic, start=start, until="end", idle_s=idle_s, timeout_s=None,
                         stall_s=timeout_s, connect_timeout_s=timeout_s, name="train")
    bar = None
    try:
        if reader.expected == 0:
            log.info("%s holds no records%s", topic, f" from the last {since_s:.0f}s" if since_s else "")
        elif progress:
            from tqdm import tqdm

            bar = tqdm(total=reader.expected, unit="rec", desc="read topic", dynamic_ncols=True, mininterval=1.0)
        for batch in reader.batches():
            if bar is not None:
                bar.update(len(batch))
            for r in batch:
                rep.records += 1
                span = rep.offsets.setdefault(r.partition, [r.offset, r.offset])
                span[1] = r.offset
                try:
                    item = decode_message(r.value, r.key, r.timestamp, limits)
                except BadInputError as exc:
                    reader.skip(r, str(exc))
                    continue
                if isinstance(item, EraseCommand):
                    rep.erases += 1
                else:
                    rep.events += 1
                yield item, r.partition, r.offset
    finally:
        reader.close()
        if bar is not None:
            bar.close()
        rep.skipped, rep.reasons, rep.seconds = reader.skipped, reader.reasons, reader.seconds


@dataclass(frozen=True)
class TrainOptions:
    """How ``train_from_topic`` reads, holds out, gates and keeps versions."""

    since_s: float | None = None  # None: from the earliest offset
    gate: bool = True
    holdout: int = 5000  # most recent events held out for the gate (at most 10% of what was read)
    warmup: int = 20000  # events before the holdout that warm both models' online state
    k: int = 20
    warm_start: bool = False
    keep: int = 5  # newest versions kept under --out (and under --out/rejected); 0 = all

    def __post_init__(self) -> None:
        if self.holdout < 1 and self.gate:
            raise ConfigError(f"holdout={self.holdout} must be >= 1 when the gate is on")
        if self.warmup < 0 or self.keep < 0 or self.k < 1:
            raise ConfigError("warmup and keep must be >= 0 and k >= 1")


def _serving(out: Path) -> Any:
    from model_core.als import ALSModel, latest_model_dir

    try:
        return ALSModel.load(latest_model_dir(out))
    except ModelIncompatibleError as exc:
        if any(out.glob("*/manifest.json")):
            log.warning("the serving model under %s cannot be read (%s); the gate compares with nothing", out, exc)
        return None


def train_from_topic(settings: Settings, als: ALSConfig, out: str | Path, options: TrainOptions = TrainOptions(),
                     *, progress: bool = False) -> dict[str, Any]:
    """Read the events topic, train a version, gate it against the serving one, save it.

    Returns a summary: ``version``, ``path``, ``promoted``, ``gate`` (the comparison,
    also in the version's metadata), ``read`` (a ``TopicRead`` as a dict), ``removed``.
    With nothing newer than the serving version on the topic, nothing is trained:
    ``version`` and ``path`` are None.
    Raises BadInputError when the topic holds nothing to train on.
    """
    from model_core.als import REJECTED_DIR, InteractionsBuilder, prune_versions, train_als
    from model_core.offline.evaluate import compare_on_holdout

    out = Path(out)
    t0 = time.monotonic()
    serving = _serving(out)
    builder = InteractionsBuilder(als)
    held: list[tuple[float, int, int, Event]] = []  # min-heap by event time: the most recent events
    warm: deque[tuple[int, Event]] = deque(maxlen=options.warmup)
    erased_at: dict[str, int] = {}  # user -> offset of the user's latest erase command (one partition per user)
    cap = options.holdout if options.gate and serving is not None else 0
    # only events the serving version did not train on can judge it against the new one
    seen_until = float((serving.metadata.get("event_time_range") or [0.0, float("-inf")])[1]) if cap else 0.0

    def train_on(off: int, ev: Event) -> None:
        if erased_at.get(ev.user_id, -1) > off:
            return  # sent before the user's erasure
        builder.add(ev)
        warm.append((off, ev))

    read = TopicRead()
    seq = 0
    for item, _p, off in read_events_topic(settings, since_s=options.since_s, report=read, progress=progress):
        if isinstance(item, EraseCommand):
            erased_at[item.user_id] = off
            builder.forget_user(item.user_id)
            continue
        seq += 1
        if cap and item.time > seen_until:
            heapq.heappush(held, (item.time, seq, off, item))
            if len(held) > cap:
                _, _, o, ev = heapq.heappop(held)
                train_on(o, ev)
        else:
            train_on(off, item)
    log.info("read %s", read.summary())
    if read.events == 0:
        raise BadInputError(f"no valid events to train on in {read.topic} ({read.summary()})")
    # at most a tenth of what was read is held out; the rest goes back to training, oldest first
    while held and len(held) > max(1, read.events // 10):
        _, _, o, ev = heapq.heappop(held)
        train_on(o, ev)
    holdout = sorted((ev for _, _, o, ev in held if erased_at.get(ev.user_id, -1) < o), key=lambda e: e.time)
    warm_events = [ev for o, ev in warm if erased_at.get(ev.user_id, -1) < o]
    if cap and not holdout:  # nothing newer than the serving version: no training, no version
        why = (f"no events newer than what serving {serving.version} trained on "
               "(nothing to compare on, and nothing new to learn)")
        log.warning("no new version: %s", why)
        return {"version": None, "path": None, "promoted": False, "gate": {"promoted": False, "why": why},
                "read": read.to_dict(), "removed": [], "seconds": round(time.monotonic() - t0, 2)}

    data = builder.build()
    start = None
    if options.warm_start and serving is not None:
        if serving.config.factors == als.factors:
            start = serving
        else:
            log.warning("not warm-starting: the serving model has %d factors, this one %d",
                        serving.config.factors, als.factors)
    model = train_als(data, als, device=settings.device, progress=progress, warm_start=start)
    model.metadata["serving"] = {"foldin": settings.foldin.to_dict(), "index": settings.index}
    model.metadata["source"] = {"topic": read.to_dict(), "since_s": options.since_s,
                                "held_out_events": len(holdout), "warmup_events": len(warm_events)}

    gate: dict[str, Any]
    if not options.gate:
        gate = {"promoted": True, "why": "gate off"}
    elif serving is None:
        gate = {"promoted": True, "why": "no serving version to compare with"}
    else:
        g0 = time.monotonic()
        gate = compare_on_holdout(model, serving, warm_events, holdout, k=options.k, foldin=settings.foldin,
                                  device=settings.device, progress=progress)
        gate["seconds"] = round(time.monotonic() - g0, 2)
    model.metadata["gate"] = gate
    path = model.save(out if gate["promoted"] else out / REJECTED_DIR)
    removed = prune_versions(out, options.keep) if options.keep else []
    summary = {"version": model.version, "path": str(path), "promoted": gate["promoted"], "gate": gate,
               "read": read.to_dict(), "n_users": model.metadata["n_users"], "n_items": model.metadata["n_items"],
               "train_seconds": model.metadata["train_seconds"], "warm_start": model.metadata.get("warm_start"),
               "removed": removed, "seconds": round(time.monotonic() - t0, 2)}
    (log.info if gate["promoted"] else log.warning)(
        "model %s %s: %s", model.version, "promoted" if gate["promoted"] else "NOT promoted (kept in rejected/)",
        gate["why"])
    return summary


def run_trainer(settings: Settings, als: ALSConfig, out: str | Path, options: TrainOptions, every_s: float,
                *, stop: threading.Event | None = None, progress: bool = False) -> int:
    """Train from the topic every ``every_s`` seconds until SIGTERM/SIGINT (or ``stop``).

    A round that fails (broker away, nothing to train on) is logged and the next one
    runs on schedule: a trainer outlives broker restarts.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    rounds = 0
    while not stop.is_set():
        t = time.monotonic()
        try:
            summary = train_from_topic(settings, als, out, options, progress=progress)
            rounds += 1
            log.info("round %d: version %s %s in %.1fs", rounds, summary["version"] or "(none)",
                     "promoted" if summary["promoted"] else "kept back", summary["seconds"])
        except (BrokerUnavailableError, BadInputError) as exc:
            log.error("training round failed, next one in %.0fs: %s", every_s, exc)
        except FreshrecError as exc:
            log.error("training round failed: %s", exc)
            return 2
        stop.wait(max(0.0, every_s - (time.monotonic() - t)))
    log.info("trainer stopping after %d rounds", rounds)
    return 0

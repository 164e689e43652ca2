"""A user's bounded, event-time-decayed history: the only per-user state the model needs.

It is a plain value so a stream processor can keep it in a changelog
(``encode`` / ``decode``: compact JSON bytes; ``to_dict`` / ``from_dict``); the
model folds a batch of histories into embeddings (see ``model_core.foldin``).

Exactly-once effect: ``add`` takes the event's position in its stream
(partition, offset) and skips any event at or before the last applied one of
the same partition, so an at-least-once stream re-delivering after a crash
changes nothing, with or without event ids. Event ids catch the other kind of
duplicate, a producer sending one event twice: the last ``DEDUPE_WINDOW`` ids
(as 48-bit hashes) are remembered.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from model_core.config import EventWeights, FoldInConfig
from model_core.events import Event, EventType

__all__ = ["UserHistory", "DEDUPE_WINDOW"]

DEDUPE_WINDOW = 32  # event ids remembered per user against producer-side duplicates


def _decay(age_s: float, half_life_s: float) -> float:
    """0.5 ** (age / half-life) for age > 0, else 1 (never overflows; underflows to 0)."""
    if half_life_s <= 0 or not age_s > 0:
        return 1.0
    return math.pow(0.5, min(age_s / half_life_s, 2000.0))


def _id_hash(event_id: str) -> str:
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


@dataclass
class UserHistory:
    """The last ``history_size`` distinct items of one user with decayed weights.

    ``entries`` maps item id -> ``[weight, time]``: ``weight`` is the item's summed
    event weight decayed to ``time`` (the newest event time on that item).
    Insertion order is recency order (oldest first). ``position`` is the
    (partition, offset) of the last applied message, when the caller gives one.
    """

    user_id: str
    entries: dict[str, list[float]] = field(default_factory=dict)
    purchased: list[str] = field(default_factory=list)
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=DEDUPE_WINDOW))
    events_applied: int = 0
    last_event_id: str | None = None
    last_event_time: float | None = None
    position: tuple[int, int] | None = None

    def seen(self, position: tuple[int, int]) -> bool:
        """True when the message at ``position`` (partition, offset) was already applied."""
        return self.position is not None and self.position[0] == position[0] and position[1] <= self.position[1]

    def add(self, event: Event, weights: EventWeights, config: FoldInConfig,
            position: tuple[int, int] | None = None) -> bool:
        """Apply one event; returns False (and changes nothing) for an event already applied.

        Already applied: its ``position`` is at or before the last applied one
        in the same partition, or its event id is among the last ``DEDUPE_WINDOW``.
        """
        if position is not None:
            if self.seen(position):
                return False
            self.position = position
        if event.event_id is not None:
            h = _id_hash(event.event_id)
            if h in self.recent_ids:
                return False
            self.recent_ids.append(h)
        w = weights.of(event)
        hl = config.half_life_s
        entry = self.entries.pop(event.item_id, None)
        if entry is None:
            entry = [w, event.time]
        elif event.time >= entry[1]:
            entry = [entry[0] * _decay(event.time - entry[1], hl) + w, event.time]
        else:  # out of order within the item: decay the new event to the entry's time
            entry = [entry[0] + w * _decay(entry[1] - event.time, hl), entry[1]]
        self.entries[event.item_id] = entry  # re-insert: most recent now
        while len(self.entries) > config.history_size:
            del self.entries[next(iter(self.entries))]
        if event.type is EventType.PURCHASE and event.item_id not in self.purchased:
            self.purchased.append(event.item_id)
            if len(self.purchased) > 4 * config.history_size:
                del self.purchased[0]
        self.events_applied += 1
        if self.last_event_time is None or event.time >= self.last_event_time:
            self.last_event_time = event.time
            self.last_event_id = event.event_id
        return True

    def weighted_items(self, config: FoldInConfig) -> tuple[list[str], list[float]]:
        """Items (newest first) and their weights decayed to the user's newest event."""
        now = self.last_event_time or 0.0
        items: list[str] = []
        out: list[float] = []
        rank_factor = 1.0
        for item, (w, t) in reversed(self.entries.items()):
            items.append(item)
            out.append(w * _decay(now - t, config.half_life_s) * rank_factor)
            rank_factor *= config.position_decay
        return items, out

    def exclude(self) -> set[str]:
        """Items not to recommend back: everything in the history and everything bought."""
        return set(self.entries).union(self.purchased)

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready dict (short keys: it is stored once per user in the changelog)."""
        d: dict[str, Any] = {"e": [[k, v[0], v[1]] for k, v in self.entries.items()], "n": self.events_applied}
        if self.purchased:
            d["b"] = list(self.purchased)
        if self.recent_ids:
            d["d"] = list(self.recent_ids)
        if self.last_event_id is not None:
            d["i"] = self.last_event_id
        if self.last_event_time is not None:
            d["t"] = self.last_event_time
        if self.position is not None:
            d["o"] = list(self.position)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], user_id: str) -> "UserHistory":
        pos = d.get("o")
        return cls(
            user_id=user_id,
            entries={str(k): [float(w), float(t)] for k, w, t in d.get("e", [])},
            purchased=[str(i) for i in d.get("b", [])],
            recent_ids=deque((str(i) for i in d.get("d", [])), maxlen=DEDUPE_WINDOW),
            events_applied=int(d.get("n", 0)),
            last_event_id=d.get("i"),
            last_event_time=None if d.get("t") is None else float(d["t"]),
            position=None if pos is None else (int(pos[0]), int(pos[1])),
        )

    def encode(self) -> bytes:
        """The changelog value: compact JSON (UTF-8)."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, user_id: str, data: bytes) -> UserHistory:
        return cls.from_dict(orjson.loads(data), user_id)

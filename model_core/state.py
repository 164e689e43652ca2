"""A user's bounded, event-time-decayed history: the only per-user state the model needs.

It is a plain value (``to_dict`` / ``from_dict``) so a stream processor can keep
it in a changelog-backed table; the model folds a batch of histories into
embeddings (see ``model_core.foldin``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from model_core.config import EventWeights, FoldInConfig
from model_core.events import Event, EventType

__all__ = ["UserHistory"]

_DEDUPE_WINDOW = 512  # event ids remembered per user for at-least-once replays


def _decay(age_s: float, half_life_s: float) -> float:
    if half_life_s <= 0 or age_s <= 0:
        return 1.0
    return math.pow(0.5, age_s / half_life_s)


@dataclass
class UserHistory:
    """The last ``history_size`` distinct items of one user with decayed weights.

    ``entries`` maps item id -> ``[weight, time]``: ``weight`` is the item's summed
    event weight decayed to ``time`` (the newest event time on that item).
    Insertion order is recency order (oldest first).
    """

    user_id: str
    entries: dict[str, list[float]] = field(default_factory=dict)
    purchased: list[str] = field(default_factory=list)
    recent_event_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_DEDUPE_WINDOW))
    events_applied: int = 0
    last_event_id: str | None = None
    last_event_time: float | None = None

    def add(self, event: Event, weights: EventWeights, config: FoldInConfig) -> bool:
        """Apply one event; returns False (and changes nothing) for a replayed event id."""
        if event.event_id is not None:
            if event.event_id in self.recent_event_ids:
                return False
            self.recent_event_ids.append(event.event_id)
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
        return {
            "user_id": self.user_id,
            "entries": [[k, v[0], v[1]] for k, v in self.entries.items()],
            "purchased": list(self.purchased),
            "recent_event_ids": list(self.recent_event_ids),
            "events_applied": self.events_applied,
            "last_event_id": self.last_event_id,
            "last_event_time": self.last_event_time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UserHistory":
        return cls(
            user_id=d["user_id"],
            entries={k: [float(w), float(t)] for k, w, t in d.get("entries", [])},
            purchased=list(d.get("purchased", [])),
            recent_event_ids=deque(d.get("recent_event_ids", []), maxlen=_DEDUPE_WINDOW),
            events_applied=int(d.get("events_applied", 0)),
            last_event_id=d.get("last_event_id"),
            last_event_time=d.get("last_event_time"),
        )

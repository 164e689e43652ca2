"""The baselines' protocol: batched ``learn`` / ``recommend`` on plain ids.

Every baseline the evaluation compares speaks it, so the prequential loop needs no
per-model adapter (after river's ``reco/base.py``, batch first: one user is a batch of
one). The served model does not: it is scored only as workers run it
(``model_core.offline.fleet.ServedFleet``: ``apply``, ``plan_step``, each batch's delta
learned by the shared item side), never through a second per-event path.

>>> from model_core.baselines import Trending
>>> from model_core.events import Event, EventType
>>> t = Trending()
>>> t.learn([Event("u1", "i1", EventType.VIEW, 0.0), Event("u2", "i1", EventType.VIEW, 0.0)])
>>> t.recommend(["u3"], k=1)
[[('i1', 2.0)]]
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence

from model_core.events import Event

__all__ = ["BaseRecommender", "Ranked"]

Ranked = list[tuple[str, float]]


class BaseRecommender(abc.ABC):
    """Learns from events as they arrive; answers top-k lists for a batch of users."""

    def fit(self, events: Sequence[Event]) -> None:
        """Warm start on a history of events (time order); by default the same as ``learn``."""
        self.learn(events)

    @abc.abstractmethod
    def learn(self, events: Sequence[Event]) -> None:
        """Learn a batch of new events (time order)."""

    @abc.abstractmethod
    def recommend(
        self, users: Sequence[str], k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[Ranked]:
        """Top-k ``(item_id, score)`` per user, best first, never an item of ``exclude[b]``."""

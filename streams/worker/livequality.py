"""Live quality as served: the lists a worker published, scored against its users' next events.

The protocol of ``freshrec evaluate`` (``model_core.offline.evaluate``), on the lists this
worker actually published: an applied event is a **point** when this worker published its
user a list and the event's item is new to the user (not in the history or purchases the
user had before the event), and a **hit** when the item is in that last published list. Both
count under the list's model version (``freshrec_live_points_total`` and
``freshrec_live_hits_total`` by ``model_version``, ``streams.worker.metrics``); hits / points
is HR@K (K = ``FRESHREC_K``, 20 by default) as served.

``PublishedLists`` remembers, per user, the items of the last list published and its model
version, and the owner's epoch of the user's partition then (``UserStateStore.epoch``): a list
from before the partition was last recovered is not scored against, since another worker may
have published the user a newer one meanwhile. It holds at most ``capacity`` users (the least
recently published are dropped first) and nothing of it survives a restart: the counts resume
with each user's first list after it. The batch step uses it on the consumer thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["PublishedLists"]


class PublishedLists:
    """User id -> (model version, partition epoch, items) of the last list published, bounded."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # one flat tuple per user, (version, epoch, item, item, ...): the smallest container that holds it
        self._lists: OrderedDict[str, tuple[str | int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def __contains__(self, user: object) -> bool:
        return user in self._lists

    def get(self, user: str, epoch: int) -> tuple[str, tuple[str, ...]] | None:
        """(model version, items) of the user's last list, if it was published under ``epoch``."""
        got = self._lists.get(user)
        if got is None or got[1] != epoch:
            return None
        return str(got[0]), got[2:]  # type: ignore[return-value]

    def put(self, user: str, version: str, epoch: int, items: Iterable[str]) -> None:
        """The user was just published this list (the least recently published user goes when full)."""
        if self.capacity <= 0:
            return
        self._lists.pop(user, None)
        self._lists[user] = (version, epoch, *items)
        while len(self._lists) > self.capacity:
            self._lists.popitem(last=False)

    def forget(self, user: str) -> None:
        """Erasure: the user's list is not kept."""
        self._lists.pop(user, None)

"""The catalog listener: ``freshrec.items`` reaches every worker (not split by the consumer group).

Messages: ``{"item_id": "i9", "event": "new" | "unavailable" | "available", "category": "c3"}``
(``category`` optional: it feeds category trending).
Each update runs in the compute thread, so it never lands in the middle of a
batch's search.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable

from streams.errors import BrokerUnavailableError
from streams.reader import TopicReader
from streams.settings import Settings
from streams.worker.metrics import Metrics

__all__ = ["CATALOG_EVENTS", "CatalogListener"]

log = logging.getLogger("freshrec.catalog")

CATALOG_EVENTS = ("new", "unavailable", "available")


class CatalogListener(threading.Thread):
    """Reads every partition of the items topic from the start (not a group member) and hands
    each update to ``apply(item_id, available, category)`` on ``executor``."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, executor: object,
                 apply: Callable[[str, bool, str | None], None], metrics: Metrics) -> None:
        super().__init__(name="freshrec-catalog", daemon=True)
        self.settings, self.loop, self.executor, self.apply, self.metrics = settings, loop, executor, apply, metrics
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with TopicReader(self.settings, self.settings.items_topic, until="follow", name="catalog") as reader:
                for batch in reader.batches(self.stopping):
                    for r in batch:
                        self.loop.call_soon_threadsafe(self._apply, r.value)
        except BrokerUnavailableError as exc:
            log.error("catalog listener stopped: %s", exc)

    def _apply(self, value: bytes | None) -> None:
        try:
            d = json.loads(value or b"")
            item, action = str(d["item_id"]), d["event"]
            if action not in CATALOG_EVENTS:
                raise ValueError(f"event {action!r} is not one of {', '.join(CATALOG_EVENTS)}")
            category = d.get("category")
            if category is not None and not isinstance(category, str):
                raise ValueError(f"category {category!r} is not a string")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("ignored catalog message %r: %s", (value or b"")[:200], exc)
            return
        done = self.loop.run_in_executor(self.executor, self.apply, item, action != "unavailable",  # type: ignore[arg-type]
                                         category)
        done.add_done_callback(lambda fut: self._applied(fut, item, action))

    def _applied(self, fut: asyncio.Future[None], item: str, action: str) -> None:
        if fut.exception() is not None:
            log.error("catalog update %s=%s failed: %s", item, action, fut.exception())
            return
        self.metrics.inc("catalog_updates")
        log.info("catalog: %s is %s", item, action)

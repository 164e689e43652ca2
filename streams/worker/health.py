"""What a worker's /health (liveness) and /ready (readiness) answer."""

from __future__ import annotations

import time

from streams.worker.userstate import UserStateStore

__all__ = ["Health"]


class Health:
    """The consumer thread's progress and the worker's readiness."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.consuming = False
        self.model_loaded = False
        self.assigned: set[int] = set()
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def live(self, lag: int | None) -> tuple[bool, str]:
        if not self.consuming:
            return False, "the events consumer is not running"
        idle = time.monotonic() - self.last_progress
        if lag and idle > self.stall_s:
            return False, f"{lag} events wait and no batch finished for {idle:.0f}s"
        return True, "ok"

    def ready(self, store: UserStateStore) -> tuple[bool, str]:
        if not self.model_loaded:
            return False, "no model loaded"
        missing = sorted(p for p in self.assigned if not store.loaded(p))
        if missing:
            return False, f"recovering user state of partitions {missing}"
        return True, "ok"

"""Keep CPython's full garbage-collection passes short in long-running processes.

A full (generation 2) pass walks every object the collector tracks. After start a worker
holds a few hundred thousand of them (modules, Faust, torch, FAISS, the model), and in
``freshrec demo`` on 2 cores the worker's full passes took 52, 80 and 128 ms, and the demo's
own subscriber's 86-108 ms: each one stalled the batch in flight and put a run of lists over
100 ms (measured with ``gc.callbacks``, 2026-12-06; docs/hot_path.md). ``log_slow_collections``
keeps that measurement in the worker's and serve's logs.

``freeze_long_lived`` collects once and moves every survivor to the permanent generation,
which later passes skip: they then walk only what was made since. Call it where the
long-lived set has just grown (after start, after a partition's state is recovered). It
unfreezes first, so a garbage cycle among objects frozen earlier is found then (a swapped-out
model is freed without one: it holds no reference cycle).
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_long_lived", "log_slow_collections"]

log = logging.getLogger("freshrec.heap")


def freeze_long_lived(after: str) -> None:
    """Collect everything once, then exempt the survivors from later full passes; ``after``
    names the moment for the log line."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info("heap: %d long-lived objects frozen after %s in %.0f ms (full collections skip them)",
             gc.get_freeze_count(), after, (time.perf_counter() - started) * 1000)


SLOW_COLLECTION_MS = 20.0
"""A garbage-collection pass longer than this is logged (``log_slow_collections``)."""
_started: list[float] = []


def _time_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        ms = (time.perf_counter() - _started[0]) * 1000
        if ms > SLOW_COLLECTION_MS:
            log.warning("heap: a generation-%d garbage collection stalled every thread for %.0f ms (%d collected)",
                        info["generation"], ms, info["collected"])


def log_slow_collections() -> None:
    """Log every garbage-collection pass of this process that takes over ``SLOW_COLLECTION_MS``
    (each one stalls every thread, and so the batch in flight). Idempotent."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)

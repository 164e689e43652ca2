"""Keep CPython's full garbage-collection passes short in long-running processes.

A full (generation 2) pass walks every object the collector tracks. After start a worker
holds a few hundred thousand of them (modules, Faust, torch, FAISS, the model), and in
``freshrec demo`` on 2 cores the worker's full passes took 52, 80 and 128 ms, and the demo's
own subscriber's 86-108 ms: each one stalled the batch in flight and put a run of lists over
100 ms (measured with ``gc.callbacks``, 2026-12-06; docs/hot_path.md).

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

__all__ = ["freeze_long_lived"]

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

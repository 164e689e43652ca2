"""What a stuck worker can be asked: every async generator's wait point (``kill -USR2``)."""

from __future__ import annotations

import gc
import sys
import types
import warnings
from typing import Any

__all__ = ["dump_async_generators"]


def dump_async_generators() -> None:
    """Where each suspended async generator waits (asyncio's task dump truncates those), to stderr."""
    out = ["async generators:"]
    with warnings.catch_warnings():  # isinstance on some library objects warns of deprecations
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, types.AsyncGeneratorType)]
    for obj in objects:
        if obj.ag_frame is None:
            continue
        chain: list[str] = []
        at: Any = obj
        while at is not None and len(chain) < 20:
            f = getattr(at, "ag_frame", None) or getattr(at, "cr_frame", None)
            if f is None:
                chain.append(repr(at)[:200])
                break
            chain.append(f"{f.f_code.co_qualname} ({f.f_code.co_filename}:{f.f_lineno})")
            at = getattr(at, "ag_await", None) or getattr(at, "cr_await", None)
        out.append("  " + " -> ".join(chain))
    print("\n".join(out), file=sys.stderr, flush=True)

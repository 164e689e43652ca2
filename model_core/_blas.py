"""One BLAS thread for the model core's many small CPU products (no torch import here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["one_blas_thread"]

_blas: Any = None  # threadpoolctl controller of the loaded BLAS libraries, made on first use


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy/FAISS BLAS calls on the calling thread only, for the duration.

    The model core's CPU BLAS calls are many and small: the exact search's
    per-block sgemms between numpy selections, the ranker's products. OpenBLAS
    hands each to its thread pool, whose threads spin between calls; on 2 cores
    with anything else running that made the exact search 4-6x and the ranker's
    gemv 20x slower than one thread (``docs/profile_model_core_speed.txt``). The
    worker pins one thread for its whole process (``FRESHREC_COMPUTE_THREADS``);
    this gives every other caller the same. The previous limits come back on exit
    (about 20 us a call). Limits are per process: another thread's BLAS calls in
    that window run on one thread too.
    """
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    with _blas.limit(limits=1):
        yield

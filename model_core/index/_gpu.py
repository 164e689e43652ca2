"""GPU mirror of an item index (faiss GPU build only).

The CPU faiss index and the numpy vector store stay the source of truth; the
GPU holds a copy that is refreshed lazily, before the first search after a
structural change (upsert/remove). Availability flips do not refresh it: the
caller over-fetches and filters, as for every kind.

Nothing here runs at import: faiss GPU symbols are only looked up when a
:class:`GpuMirror` is constructed, which :class:`ItemIndex` only does after
:func:`~model_core.index._base.resolve_device` returned ``"cuda"``.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["GpuMirror", "GPU_MAX_K"]

#: largest k faiss's GPU k-selection supports (1024 before faiss 1.7.3; 2048 since).
GPU_MAX_K = 2048


class GpuMirror:
    """A GPU copy of the live items for one :class:`ItemIndex` on device 0."""

    def __init__(self, dim: int) -> None:
        self._res = faiss.StandardGpuResources()
        self._dim = dim
        self._index: faiss.Index | None = None
        self._labels: np.ndarray | None = None  # flat: position -> slot
        self.version = -1  # structural version this copy reflects

    def refresh_flat(self, slots: np.ndarray, vecs: np.ndarray, version: int) -> None:
        """Exact: a ``GpuIndexFlatIP`` over ``vecs`` [m, dim]; labels map back to ``slots`` [m]."""
        index = faiss.GpuIndexFlatIP(self._res, self._dim)
        if len(vecs):
            index.add(np.ascontiguousarray(vecs, dtype=np.float32))
        self._index, self._labels, self.version = index, np.asarray(slots, np.int64), version

    def refresh_clone(self, cpu_index: faiss.Index, nprobe: int, version: int) -> None:
        """ivf kinds: ``index_cpu_to_gpu`` copy of the trained CPU index (labels are slots)."""
        index = faiss.index_cpu_to_gpu(self._res, 0, cpu_index)
        try:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        except Exception:  # older wrappers: the attribute works
            index.nprobe = nprobe
        self._index, self._labels, self.version = index, None, version

    def set_nprobe(self, nprobe: int) -> None:
        assert self._index is not None
        try:
            faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", nprobe)
        except Exception:
            self._index.nprobe = nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, dim] float32 -> (scores [B, k], slots [B, k]; -1 where none)."""
        assert self._index is not None
        k_eff = min(k, GPU_MAX_K, max(1, self._index.ntotal))
        D, I = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k_eff)
        if self._labels is not None:
            I = np.where(I >= 0, self._labels[np.maximum(I, 0)], -1)
        return D, I

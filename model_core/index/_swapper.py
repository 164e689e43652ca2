"""Atomic replacement of a live index while searches continue."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

import numpy as np

from model_core.errors import ConfigError
from model_core.index._item_index import ItemIndex, SearchResult

__all__ = ["IndexSwapper"]


class IndexSwapper:
    """Holds the index searches use; :meth:`swap` replaces it atomically.

    Readers take :attr:`current` once per batch and search that object, so a
    batch sees one index from start to end; a swap never waits for searches
    (the old index stays valid for whoever still holds it).
    """

    def __init__(self, index: ItemIndex) -> None:
        if not isinstance(index, ItemIndex):
            raise ConfigError(f"IndexSwapper needs an ItemIndex, not {type(index).__name__}")
        self._index = index
        self._swap_lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> ItemIndex:
        """The index to search now (a plain attribute read: atomic)."""
        return self._index

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> SearchResult:
        """:meth:`ItemIndex.search` on the current index: queries [B, dim] -> B lists of (id, score)."""
        return self._index.search(queries, k, exclude)

    def swap(self, new: ItemIndex) -> ItemIndex:
        """Make ``new`` current and return the previous index (thread-safe).

        ``new`` must have the same dimension as the current index.
        """
        if not isinstance(new, ItemIndex):
            raise ConfigError(f"swap needs an ItemIndex, not {type(new).__name__}")
        with self._swap_lock:
            old = self._index
            if new.dim != old.dim:
                raise ConfigError(f"swap: new index dim {new.dim} != current {old.dim}")
            self._index = new
            self.swaps += 1
            return old

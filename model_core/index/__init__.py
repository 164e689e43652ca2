"""Nearest items by inner product over item factors (faiss), mutable and swappable.

::

    from model_core.index import ItemIndex, IndexConfig, IndexSwapper

    index = ItemIndex.build(item_ids, item_factors)          # [n, dim] float32, exact flat
    hits = index.search(user_vectors, k=20, exclude=seen)    # B lists of (item_id, score)
    index.set_available(["sku-1"], False)                    # catalog: hide, keep the vector
    swapper = IndexSwapper(index); swapper.swap(new_index)   # atomic replacement

The device (``"cpu"`` / ``"cuda"``) is resolved once per index, in its
constructor; importing this package never touches a GPU.
"""

from model_core.index._base import IndexConfig, gpu_available
from model_core.index._item_index import ItemIndex, SearchResult
from model_core.index._swapper import IndexSwapper

__all__ = ["ItemIndex", "IndexConfig", "IndexSwapper", "SearchResult", "gpu_available"]

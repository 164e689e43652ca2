"""ItemIndex: string-keyed, mutable inner-product index over item vectors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model_core._blas import one_blas_thread
from model_core._io import sha256_file
from model_core.errors import BadInputError, ConfigError, ModelIncompatibleError
from model_core.index._base import IndexConfig, new_faiss_index, plan_kind, resolve_device
from model_core.index._cpu import NormBlockLayout

__all__ = ["ItemIndex", "SearchResult"]

logger = logging.getLogger("model_core.index")

SearchResult = list[list[tuple[str, float]]]

_FREE, _LIVE, _DEAD = 0, 1, 2  # slot states; DEAD = removed but still in an hnsw graph
_FORMAT = 1
_HNSW_COMPACT_RATIO = 0.2  # rebuild hnsw when dead entries exceed 20% of live ones
_MAX_RETRIES = 24


class ItemIndex:
    """Nearest items by inner product, keyed by string item ids.

    Items are mapped to int64 *slots* (the faiss labels). A float32 copy of all
    vectors (``[capacity, dim]``, grown by doubling) is the source of truth for
    save, rebuilds and GPU copies. Every public method takes one re-entrant
    lock, so a search in a worker thread and catalog updates from an event loop
    may interleave safely.

    Kinds (see :class:`IndexConfig`): ``flat`` is exact, and on CPU is searched
    by a norm-pruned exact fast path (:class:`~model_core.index._cpu.NormBlockLayout`);
    ivf kinds are trained from the vectors present when the index first holds
    enough of them (at :meth:`build`, or at the :meth:`upsert` that crosses the
    threshold), and stay exact flat below it; ``hnsw`` cannot delete, so removed
    items are hidden and the graph is rebuilt once they exceed 20% of the live ones.

    While the kind is ``flat`` no search reads the faiss index (CPU: the fast
    path; GPU: a mirror of the vector store), so upserts and removals do not
    touch it: they mark it stale, and it is rebuilt from the vector store when
    something reads it (:meth:`save`, or any use of ``_faiss``). The fast-path
    layout takes upserts into an unsorted tail and re-sorts lazily once that
    tail has grown, so small upserts cost O(dim) amortised, not O(n).

    Attributes: ``dim``; ``config``; ``device`` (``"cpu"`` or ``"cuda"``,
    resolved once here); ``version`` (incremented by every mutation).
    """

    def __init__(self, dim: int, config: IndexConfig = IndexConfig(), *, device: str = "auto") -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"index dim={dim!r} must be a positive integer")
        if not isinstance(config, IndexConfig):
            raise ConfigError(f"config must be an IndexConfig, not {type(config).__name__}")
        config.check_dim(int(dim))
        self.dim: int = int(dim)
        self.config: IndexConfig = config
        self.device: str = resolve_device(device, config.kind)
        self.version: int = 0
        self._lock = threading.RLock()
        self._vecs = np.zeros((0, self.dim), np.float32)
        self._state = np.zeros(0, np.int8)
        self._avail = np.zeros(0, bool)  # live and available
        self._ids: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self.removals = 0  # remove() calls that removed something: freed slots get other items later
        self._n_dead = 0
        self._n_unavail = 0
        self._kind, self._nlist = plan_kind(config, 0)
        self._faiss_index: faiss.Index = new_faiss_index(config, self.dim, self._kind, self._nlist)
        self._faiss_stale = False  # flat only: _faiss_index lags the vector store
        self._struct_version = 0  # bumped when faiss content changes
        self._avail_version = 0  # bumped when availability changes
        self._layout: NormBlockLayout | None = None
        self._selector: tuple[int, int, Any, np.ndarray] | None = None
        self._gpu: Any = None
        if self.device == "cuda":
            from model_core.index._gpu import GpuMirror

            self._gpu = GpuMirror(self.dim)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        config: IndexConfig = IndexConfig(),
        *,
        device: str = "auto",
    ) -> "ItemIndex":
        """A new index over ``vectors`` [n, dim] float32 keyed by ``ids`` [n] (ivf kinds trained here)."""
        arr = np.asarray(vectors)
        if arr.ndim != 2:
            raise BadInputError(f"vectors must be 2-D [n, dim], got shape {arr.shape}")
        index = cls(arr.shape[1], config, device=device)
        index.upsert(ids, arr)
        if index.kind != index.config.kind:
            logger.warning(
                "index: %s needs more vectors to train (have %d); using exact flat until then",
                index.config.kind, len(index),
            )
        return index

    # ------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """The kind actually built: ``config.kind``, or ``"flat"`` while an ivf kind has too few vectors."""
        return self._kind

    @property
    def _faiss(self) -> faiss.Index:
        """The CPU faiss index, brought up to date first if upserts/removals left it stale."""
        with self._lock:
            if self._faiss_stale:
                self._materialise_flat()
            return self._faiss_index

    @_faiss.setter
    def _faiss(self, index: faiss.Index) -> None:
        self._faiss_index = index
        self._faiss_stale = False

    @property
    def n_available(self) -> int:
        """Number of items a search may return."""
        return len(self._slot_of) - self._n_unavail

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._slot_of

    def __repr__(self) -> str:
        return (
            f"ItemIndex(dim={self.dim}, kind={self._kind!r}, device={self.device!r}, "
            f"items={len(self)}, available={self.n_available}, version={self.version})"
        )

    def ids(self) -> list[str]:
        """Item ids in first-insertion order."""
        with self._lock:
            return list(self._slot_of)

    def vector(self, item_id: str) -> np.ndarray | None:
        """A copy of the item's vector [dim] float32, or None if unknown (unavailable items included)."""
        with self._lock:
            slot = self._slot_of.get(item_id)
            return None if slot is None else self._vecs[slot].copy()

    def is_available(self, item_id: str) -> bool:
        """True if the item is present and may be returned by searches."""
        with self._lock:
            slot = self._slot_of.get(item_id)
            return slot is not None and bool(self._avail[slot])

    # --------------------------------------------------------------- mutation
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new items or replace the vectors of existing ones; ``vectors`` [n, dim].

        No rebuild: ivf removes and re-adds the changed labels, hnsw hides the
        old entry, flat only marks its faiss index stale (see the class notes)
        and appends to the fast-path layout's tail. New items are available;
        existing ones keep their availability.
        """
        ids_list = _check_ids(ids)
        vecs = self._check_vectors(vectors, "vectors")
        if len(ids_list) != len(vecs):
            raise BadInputError(f"{len(ids_list)} ids but {len(vecs)} vectors")
        if not ids_list:
            return
        with self._lock:
            graph = self._kind == "hnsw"
            lazy = self._kind == "flat"  # nothing searches the faiss flat index: defer it
            old = [self._slot_of.get(i) for i in ids_list]
            replaced = np.array([s for s in old if s is not None], np.int64)
            if len(replaced) and not graph and not lazy:
                self._faiss.remove_ids(replaced)
            slots = np.empty(len(ids_list), np.int64)
            for j, (item_id, prev) in enumerate(zip(ids_list, old)):
                if prev is not None and not graph:
                    slots[j] = prev
                    continue
                slot = self._alloc_slot()
                slots[j] = slot
                self._ids[slot] = item_id
                self._slot_of[item_id] = slot
                self._state[slot] = _LIVE
                if prev is None:
                    self._avail[slot] = True
                else:  # hnsw: the old entry stays in the graph, hidden
                    self._avail[slot] = self._avail[prev]
                    self._avail[prev] = False
                    self._state[prev] = _DEAD
                    self._ids[prev] = None
                    self._n_dead += 1
            self._vecs[slots] = vecs
            self._update_layout(old, slots, vecs)
            trained_now = False
            if self.config.is_ivf and self._kind == "flat":
                kind, _ = plan_kind(self.config, len(self._slot_of))
                if kind != "flat":
                    self._rebuild_faiss()
                    trained_now = True
            if lazy and not trained_now:
                self._faiss_stale = True
            elif not trained_now:
                self._faiss.add_with_ids(vecs, slots)
                if graph and self._n_dead > _HNSW_COMPACT_RATIO * max(1, len(self._slot_of)):
                    self._rebuild_faiss()
            self._struct_version += 1
            self._avail_version += 1
            self.version += 1

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items (vectors included); unknown ids are ignored. Returns how many were present."""
        with self._lock:
            slots = []
            for item_id in dict.fromkeys(ids):
                slot = self._slot_of.pop(item_id, None)
                if slot is None:
                    continue
                slots.append(slot)
                if not self._avail[slot]:
                    self._n_unavail -= 1
                self._avail[slot] = False
                self._ids[slot] = None
            if not slots:
                return 0
            self.removals += 1  # these slots may name other items later
            arr = np.asarray(slots, np.int64)
            if self._layout is not None:
                self._layout.drop_slots(arr)
            if self._kind == "flat":  # see upsert: the faiss flat index is rebuilt when read
                self._faiss_stale = True
                self._state[arr] = _FREE
                self._free.extend(slots)
            elif self._kind == "hnsw":
                self._state[arr] = _DEAD
                self._n_dead += len(slots)
                if self._n_dead > _HNSW_COMPACT_RATIO * max(1, len(self._slot_of)):
                    self._rebuild_faiss()
            else:
                self._faiss.remove_ids(arr)
                self._state[arr] = _FREE
                self._free.extend(slots)
            self._struct_version += 1
            self._avail_version += 1
            self.version += 1
            return len(slots)

    def set_available(self, ids: Iterable[str], available: bool) -> None:
        """Mark items (un)available. Unavailable items keep their vectors but are never returned.

        O(1) per item: nothing is removed from faiss. Unknown ids are ignored.
        """
        flag = bool(available)
        with self._lock:
            changed = False
            for item_id in ids:
                slot = self._slot_of.get(item_id)
                if slot is None or bool(self._avail[slot]) == flag:
                    continue
                changed = True
                self._avail[slot] = flag
                self._n_unavail += -1 if flag else 1
                if self._layout is not None:
                    ok = self._layout.unmask_slot(slot) if flag else self._layout.mask_slot(slot)
                    if not ok and flag:  # not in the snapshot: into its tail
                        self._layout.append(np.array([slot], np.int64), self._vecs[slot:slot + 1])
            if changed:
                self._avail_version += 1
                self.version += 1

    def rebuild(self) -> None:
        """Rebuild (and for ivf kinds retrain) the faiss index from the stored vectors."""
        with self._lock:
            self._rebuild_faiss()
            self._struct_version += 1
            self.version += 1

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> SearchResult:
        """Top-``k`` available items by inner product for each query.

        queries: [B, dim] float32. exclude: None or B collections of item ids
        not to return for that query. Returns B lists of up to ``k``
        ``(item_id, score)``, best first. Exclusions are over-fetched
        (``k + len(exclude[b])``) so they never shorten a list while enough
        items exist; an approximate index that still returns too few is asked
        again with twice the fetch (and, ivf, twice the nprobe) until it cannot
        widen further. flat returns exactly ``min(k, available not excluded)``.
        """
        q, k = self._check_search(queries, k, exclude)
        B = len(q)
        with self._lock:
            if B == 0:
                return []
            if k == 0 or self.n_available == 0:
                return [[] for _ in range(B)]
            excl = _exclusion_sets(exclude, B)
            out: SearchResult = [[] for _ in range(B)]
            if self._kind == "flat" and self.device != "cuda":
                # exact CPU search drops exclusions inside the scan: no over-fetch
                self._search_exact_cpu(q, np.arange(B), k, k, excl, out)
                return out
            # over-fetch only for excluded ids that could otherwise be returned
            extra = np.fromiter(
                (sum(1 for x in e if self._is_avail_id(x)) if e else 0 for e in excl), np.int64, B
            )
            # bucket queries by fetch size (next power of two) so one long
            # exclusion list does not make the whole batch fetch more
            fetch = k + extra
            buckets = np.ceil(np.log2(np.maximum(fetch, 1))).astype(np.int64)
            for bucket in np.unique(buckets):
                sel = np.flatnonzero(buckets == bucket)
                self._search_group(q[sel], sel, k, int(fetch[sel].max()), excl, out)
            return out

    def search_flat(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """:meth:`search` in flat form, for callers that take the hits apart again.

        Returns ``(counts [B] int64, item ids, scores [sum(counts)] float32)``: query
        ``b``'s hits are the ``counts[b]`` entries after those of queries ``0..b-1``,
        best first; the same hits and scores as :meth:`search`. The exact CPU search
        fills it from its result arrays, without B lists of (id, score) tuples.
        """
        counts, slots, scores = self.search_slots(queries, k, exclude)
        ids = self._ids
        return counts, [ids[s] for s in slots.tolist()], scores

    def search_slots(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search_flat` with slots [sum(counts)] int64 instead of ids: ``ids_of_slots``
        names them. A slot names the same item until ``removals`` changes."""
        q, k = self._check_search(queries, k, exclude)
        with self._lock:
            if len(q) and k and self.n_available and self._kind == "flat" and self.device != "cuda":
                scores, slots = self._exact_cpu(q, np.arange(len(q)), k, _exclusion_sets(exclude, len(q)))
                hit = slots >= 0  # misses (fewer than k items left) are the last columns
                return hit.sum(axis=1), slots[hit], scores[hit]
            found = self.search(q, k, exclude)
            slot_of = self._slot_of
            counts = np.fromiter((len(lst) for lst in found), np.int64, len(found))
            slots_f = np.fromiter((slot_of[i] for lst in found for i, _ in lst), np.int64, int(counts.sum()))
        scores_f = np.fromiter((s for lst in found for _, s in lst), np.float32, int(counts.sum()))
        return counts, slots_f, scores_f

    def ids_of_slots(self, slots: np.ndarray) -> list[str]:
        """The item ids of slots that :meth:`search_slots` returned."""
        ids = self._ids
        return [ids[s] for s in slots.tolist()]

    def _check_search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None
    ) -> tuple[np.ndarray, int]:
        q = self._check_vectors(queries, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise BadInputError(f"k={k!r} must be a non-negative integer")
        if exclude is not None and len(exclude) != len(q):
            raise BadInputError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        return q, int(k)

    def _search_group(
        self, q: np.ndarray, rows: np.ndarray, k: int, fetch: int,
        excl: list[Collection[str]], out: SearchResult,
    ) -> None:
        if self.device == "cuda" and self._kind != "hnsw":
            from model_core.index._gpu import GPU_MAX_K

            extra = self._n_unavail if self._kind != "flat" else 0
            if fetch + extra <= GPU_MAX_K:
                self._search_gpu(q, rows, k, fetch + extra, excl, out)
                return
        if self._kind == "flat":
            self._search_exact_cpu(q, rows, k, fetch, excl, out)
        else:
            self._search_faiss_cpu(q, rows, k, fetch, excl, out)

    def _collect(
        self, b: int, k: int, scores: np.ndarray, slots: np.ndarray, excl: Collection[str],
        check_avail: bool = True,
    ) -> list[tuple[str, float]]:
        res: list[tuple[str, float]] = []
        ids, avail = self._ids, self._avail
        for s, slot in zip(scores.tolist(), slots.tolist()):
            if slot < 0 or (check_avail and not avail[slot]):
                continue
            item_id = ids[slot]
            if item_id is None or item_id in excl:
                continue
            res.append((item_id, float(s)))
            if len(res) == k:
                break
        return res

    def _search_exact_cpu(
        self, q: np.ndarray, rows: np.ndarray, k: int, fetch: int,
        excl: list[Collection[str]], out: SearchResult,
    ) -> None:
        scores, slots = self._exact_cpu(q, rows, fetch, excl)
        ids = self._ids
        for b, slot_row, score_row in zip(rows.tolist(), slots.tolist(), scores.tolist()):
            out[b] = [(ids[s], v) for s, v in zip(slot_row, score_row) if s >= 0][:k]

    @one_blas_thread()  # many small sgemms between numpy selections
    def _exact_cpu(
        self, q: np.ndarray, rows: np.ndarray, fetch: int, excl: list[Collection[str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``fetch`` (scores, slots) [len(q), fetch] from the fast-path layout; slot -1
        pads. ``rows[i]`` is query i's position in ``excl``. The layout hides unavailable and
        removed items, and drops the excluded ones inside its scan."""
        layout = self._get_layout()
        slot_of = self._slot_of
        pairs = [(i, s) for i, b in enumerate(rows.tolist()) for x in excl[b] if (s := slot_of.get(x)) is not None]
        exclude = (np.fromiter((i for i, _ in pairs), np.int64, len(pairs)),
                   np.fromiter((s for _, s in pairs), np.int64, len(pairs))) if pairs else None
        scores, slots, _ = layout.search(q, fetch, exclude)
        return scores, slots

    def _search_faiss_cpu(
        self, q: np.ndarray, rows: np.ndarray, k: int, fetch: int,
        excl: list[Collection[str]], out: SearchResult,
    ) -> None:
        ntotal = int(self._faiss.ntotal)
        ivf = faiss.extract_index_ivf(self._faiss) if self.config.is_ivf and self._kind != "flat" else None
        nprobe = min(self.config.nprobe, self._nlist) if ivf is not None else 0
        sel = self._get_selector()
        pending = np.arange(len(q))
        fetch = min(fetch, ntotal)
        refine = self._refine_factor()
        for _ in range(_MAX_RETRIES):
            if ivf is not None:
                params = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel) if sel is not None \
                    else faiss.SearchParametersIVF(nprobe=nprobe)
            elif self._kind == "hnsw":
                ef = max(self.config.ef_search, fetch)
                params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel) if sel is not None \
                    else faiss.SearchParametersHNSW(efSearch=ef)
            else:
                params = faiss.SearchParameters(sel=sel) if sel is not None else None
            qp = np.ascontiguousarray(q[pending])
            D, I = self._faiss.search(qp, min(fetch * refine, ntotal), params=params)
            if refine > 1:
                D, I = self._rescore(qp, I)
            short = []
            for i, p in enumerate(pending.tolist()):
                b = int(rows[p])
                out[b] = self._collect(b, k, D[i], I[i], excl[b])
                if len(out[b]) < k:
                    short.append(p)
            can_widen = fetch < ntotal or (ivf is not None and nprobe < self._nlist)
            if not short or not can_widen:
                return
            pending = np.asarray(short)
            fetch = min(2 * fetch, ntotal)
            if ivf is not None:
                nprobe = min(2 * nprobe, self._nlist)

    def _search_gpu(
        self, q: np.ndarray, rows: np.ndarray, k: int, fetch: int,
        excl: list[Collection[str]], out: SearchResult,
    ) -> None:
        from model_core.index._gpu import GPU_MAX_K

        gpu = self._gpu
        ivf = self._kind != "flat"
        want = (self._struct_version, self._avail_version) if not ivf else (self._struct_version, -1)
        if gpu.version != want:
            if ivf:
                gpu.refresh_clone(self._faiss, min(self.config.nprobe, self._nlist), want)
            else:
                live = np.flatnonzero(self._avail)
                gpu.refresh_flat(live, self._vecs[live], want)
        ntotal = len(self._slot_of) if ivf else self.n_available
        nprobe = min(self.config.nprobe, self._nlist)
        pending = np.arange(len(q))
        fetch = min(fetch, ntotal, GPU_MAX_K)
        refine = self._refine_factor()
        try:
            for _ in range(_MAX_RETRIES):
                qp = np.ascontiguousarray(q[pending])
                D, I = gpu.search(qp, min(fetch * refine, ntotal, GPU_MAX_K))
                if refine > 1:
                    D, I = self._rescore(qp, I)
                short = []
                for i, p in enumerate(pending.tolist()):
                    b = int(rows[p])
                    out[b] = self._collect(b, k, D[i], I[i], excl[b])
                    if len(out[b]) < k:
                        short.append(p)
                can_widen = fetch < min(ntotal, GPU_MAX_K) or (ivf and nprobe < self._nlist)
                if not short or not can_widen:
                    break
                pending = np.asarray(short)
                fetch = min(2 * fetch, ntotal, GPU_MAX_K)
                if ivf:
                    nprobe = min(2 * nprobe, self._nlist)
                    gpu.set_nprobe(nprobe)
        finally:
            if ivf:
                gpu.set_nprobe(min(self.config.nprobe, self._nlist))
        if short and fetch >= GPU_MAX_K:  # beyond GPU k-selection: finish on CPU
            sub = np.asarray(short)
            if self._kind == "flat":
                self._search_exact_cpu(q[sub], rows[sub], k, k + GPU_MAX_K, excl, out)
            else:
                self._search_faiss_cpu(q[sub], rows[sub], k, k + GPU_MAX_K, excl, out)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Snapshot to directory ``path``, atomically (written to a temp dir, then renamed).

        Files: ``index.faiss`` (CPU faiss index), ``vectors.npy`` [slots, dim],
        ``state.npy`` [slots] int8, ``available.npy`` [slots] bool, ``ids.json``
        (slot -> id or null), ``meta.json`` (config, version, kind, checksums).
        """
        target = Path(path)
        with self._lock:
            n = len(self._ids)
            blob = faiss.serialize_index(self._faiss)
            arrays = {
                "vectors.npy": self._vecs[:n].copy(),
                "state.npy": self._state[:n].copy(),
                "available.npy": self._avail[:n].copy(),
            }
            ids_json = json.dumps(self._ids).encode()
            meta: dict[str, Any] = {
                "format": _FORMAT,
                "dim": self.dim,
                "config": self.config.to_dict(),
                "kind": self._kind,
                "nlist": self._nlist,
                "version": self.version,
                "n_items": len(self._slot_of),
                "order": list(self._slot_of.values()),
            }
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            sums: dict[str, str] = {}
            _write(tmp / "index.faiss", blob.tobytes(), sums)
            for name, arr in arrays.items():
                with open(tmp / name, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                sums[name] = sha256_file(tmp / name)
            _write(tmp / "ids.json", ids_json, sums)
            meta["sha256"] = sums
            _write(tmp / "meta.json", json.dumps(meta).encode(), None)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
                os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "auto") -> "ItemIndex":
        """Load a :meth:`save` snapshot; :class:`ModelIncompatibleError` if missing or corrupt."""
        root = Path(path)

        def bad(why: str) -> ModelIncompatibleError:
            return ModelIncompatibleError(f"item index at {root}: {why}")

        if not root.is_dir():
            raise bad("not a directory")
        try:
            meta = json.loads((root / "meta.json").read_text())
        except FileNotFoundError:
            raise bad("meta.json missing") from None
        except (OSError, ValueError) as exc:
            raise bad(f"meta.json unreadable ({exc.__class__.__name__})") from None
        try:
            if meta.get("format") != _FORMAT:
                raise bad(f"format {meta.get('format')!r} is not {_FORMAT}")
            sums = meta["sha256"]
            for name in ("index.faiss", "vectors.npy", "state.npy", "available.npy", "ids.json"):
                if not (root / name).is_file():
                    raise bad(f"{name} missing")
                if sha256_file(root / name) != sums[name]:
                    raise bad(f"{name} corrupt (checksum mismatch)")
            config = IndexConfig.from_dict(meta["config"])
            dim = int(meta["dim"])
            vecs = np.load(root / "vectors.npy", allow_pickle=False)
            state = np.load(root / "state.npy", allow_pickle=False)
            avail = np.load(root / "available.npy", allow_pickle=False)
            ids = json.loads((root / "ids.json").read_text())
            index_cpu = faiss.read_index(str(root / "index.faiss"))
        except ModelIncompatibleError:
            raise
        except ConfigError as exc:
            raise bad(f"bad config ({exc})") from None
        except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
            raise bad(f"unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        n = len(ids)
        if vecs.shape != (n, dim) or state.shape != (n,) or avail.shape != (n,):
            raise bad("array shapes do not match ids")
        if index_cpu.d != dim:
            raise bad(f"faiss index dim {index_cpu.d} != {dim}")
        live = state == _LIVE
        if int(index_cpu.ntotal) != int(live.sum() + (state == _DEAD).sum()):
            raise bad("faiss index size does not match the stored items")
        self = cls(dim, config, device=device)
        self._vecs = np.ascontiguousarray(vecs, np.float32)
        self._state = state.astype(np.int8)
        self._avail = avail.astype(bool) & live
        self._ids = list(ids)
        order = meta.get("order") or [s for s in range(n) if live[s]]
        self._slot_of = {ids[s]: int(s) for s in order}
        if len(self._slot_of) != int(live.sum()):
            raise bad("ids do not match item states")
        self._free = [s for s in range(n) if state[s] == _FREE]
        self._n_dead = int((state == _DEAD).sum())
        self._n_unavail = int(live.sum() - self._avail.sum())
        self._kind, self._nlist = str(meta["kind"]), int(meta["nlist"])
        self._faiss = index_cpu
        self.version = int(meta["version"])
        return self

    # -------------------------------------------------------------- internals
    def _is_avail_id(self, item_id: str) -> bool:
        slot = self._slot_of.get(item_id)
        return slot is not None and bool(self._avail[slot])

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        try:
            arr = np.ascontiguousarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{what} are not numeric: {exc}") from None
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise BadInputError(f"{what} must have shape [n, {self.dim}], got {arr.shape}")
        if not np.isfinite(arr).all():
            raise BadInputError(f"{what} contain NaN or infinity")
        return arr

    def _alloc_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._ids)
        if slot >= len(self._state):
            cap = max(16, 2 * len(self._state))
            vecs = np.zeros((cap, self.dim), np.float32)
            vecs[:slot] = self._vecs[:slot]
            state = np.zeros(cap, np.int8)
            state[:slot] = self._state[:slot]
            avail = np.zeros(cap, bool)
            avail[:slot] = self._avail[:slot]
            self._vecs, self._state, self._avail = vecs, state, avail
        self._ids.append(None)
        return slot

    def _rebuild_faiss(self) -> None:
        """New faiss index from the live vectors (ivf kinds retrained); frees hnsw dead slots."""
        live = np.flatnonzero(self._state[: len(self._ids)] == _LIVE)
        kind, nlist = plan_kind(self.config, len(live))
        if self.config.is_ivf and kind == "flat" and len(live):
            logger.warning(
                "index: %s needs more vectors to train (have %d); using exact flat",
                self.config.kind, len(live),
            )
        index = new_faiss_index(self.config, self.dim, kind, nlist)
        vecs = self._vecs[live]
        if not index.is_trained:
            index.train(vecs)
        if len(live):
            index.add_with_ids(vecs, live.astype(np.int64))
        dead = np.flatnonzero(self._state[: len(self._ids)] == _DEAD)
        if len(dead):
            self._state[dead] = _FREE
            self._free.extend(dead.tolist())
            self._n_dead = 0
        self._faiss, self._kind, self._nlist = index, kind, nlist
        self._layout = None

    def _refine_factor(self) -> int:
        return self.config.refine if self.config.is_quantized and self._kind != "flat" else 1

    def _rescore(self, q: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for candidate labels [b, m] (-1 = none), re-sorted best first."""
        safe = np.maximum(labels, 0)
        scores = np.einsum("bd,bmd->bm", q, self._vecs[safe]).astype(np.float32)
        scores[labels < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)

    def _update_layout(self, old: list[int | None], slots: np.ndarray, vecs: np.ndarray) -> None:
        """Fold an upsert into the fast-path layout: old rows masked, new vectors in its tail."""
        layout = self._layout
        if layout is None:
            return
        if self._kind != "flat":  # only the flat kind searches it
            self._layout = None
            return
        gone = [p for p, s in zip(old, slots.tolist()) if p is not None and p != s]
        if gone:
            layout.drop_slots(np.asarray(gone, np.int64))
        avail = self._avail[slots]
        if not avail.all():
            layout.drop_slots(slots[~avail])
        if avail.any():
            layout.append(slots[avail], vecs[avail])

    def _materialise_flat(self) -> None:
        """Rebuild the stale faiss flat index from the live vectors (labels = slots)."""
        live = np.flatnonzero(self._state[: len(self._ids)] == _LIVE)
        index = new_faiss_index(self.config, self.dim, "flat", 0)
        if len(live):
            index.add_with_ids(self._vecs[live], live.astype(np.int64))
        self._faiss_index = index
        self._faiss_stale = False

    def _get_layout(self) -> NormBlockLayout:
        layout = self._layout
        if layout is None or layout.needs_rebuild():
            slots = np.flatnonzero(self._avail)
            layout = NormBlockLayout(slots, self._vecs[slots])
            self._layout = layout
        return layout

    def _get_selector(self) -> Any:
        """faiss IDSelector of searchable slots, or None when every faiss entry is searchable."""
        if self._n_unavail == 0 and self._n_dead == 0:
            return None
        key = (self._avail_version, self._struct_version)
        cached = self._selector
        if cached is not None and cached[:2] == key:
            return cached[2]
        bits = np.packbits(self._avail[: len(self._ids)], bitorder="little")
        sel = faiss.IDSelectorBitmap(len(self._ids), faiss.swig_ptr(bits))
        self._selector = (key[0], key[1], sel, bits)  # keep the bitmap alive with the selector
        return sel


def _exclusion_sets(exclude: Sequence[Collection[str]] | None, n: int) -> list[Collection[str]]:
    """``exclude`` with O(1) membership (lists become sets); n empty ones for None."""
    if exclude is None:
        return [()] * n
    return [e if isinstance(e, (set, frozenset, dict)) else set(e) for e in exclude]


def _check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise BadInputError("ids must be a sequence of strings, not one string")
    out = list(ids)
    for item_id in out:
        if not isinstance(item_id, str):
            raise BadInputError(f"item id {item_id!r} is not a string")
    if len(set(out)) != len(out):
        raise BadInputError("duplicate item ids in one call")
    return out


def _write(path: Path, data: bytes, sums: dict[str, str] | None) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if sums is not None:
        sums[path.name] = hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

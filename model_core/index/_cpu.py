"""Exact CPU top-k by inner product with bound-ordered block pruning.

At build the principal axis ``e`` of the item vectors is estimated (top
eigenvector of ``V^T V`` on a sample) and every item split into ``x = v . e``
and ``y = ||v - x e||``. Items are sorted by ``y``, descending, and cut into
blocks. For a query ``q`` (``a = q . e``, ``c = ||q - a e||``) every item of a
block scores

    ``q . v = a x + (q - a e) . (v - x e) <= a x + c y <= max(a xmin, a xmax) + c ymax``

(Cauchy-Schwarz on the part orthogonal to ``e``), and never more than
``||q|| * max ||v||`` either; the smaller of the two is the block's bound. On
item factors with a strong common direction (iALS: a popularity axis that user
embeddings are nearly orthogonal to) ``y`` is much smaller than ``||v||``, so
this prunes far more than the plain norm bound; on isotropic data it is the
norm bound. Blocks are scored in order with one sgemm each (numpy/OpenBLAS)
and merged by numpy selection, each for the queries whose bound still reaches
their current k-th best score; the search stops once no later block can. The
result is exact by construction (bounds carry a float32 rounding slack).

Rows can be appended after the snapshot (:meth:`NormBlockLayout.append`): they
go to an unsorted *tail* that every query scores first, as one extra block (it
seeds the k-th best threshold, which only helps the pruning of the sorted
blocks). Replacing an item's vector masks its old row and appends the new one,
so upserts never sort; the owner rebuilds the snapshot once the tail has grown
(see :meth:`NormBlockLayout.needs_rebuild`), which amortises the sort to O(1)
per appended row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NormBlockLayout", "BLOCK_SIZES"]

#: sizes of the leading blocks; the rest are ``BLOCK_SIZES[-1]`` wide.
BLOCK_SIZES: tuple[int, ...] = (1024, 1024, 2048, 4096)
#: catalogues of at most this many rows (sorted and tail) are scored whole, without bounds.
DENSE_ROWS = 2048
#: bound on one chunk's score matrix (queries x block columns), in float32 cells.
_CHUNK_CELLS = 1 << 21
#: slack on the block bounds against float32 rounding in sgemm, times ||q|| * max ||v||.
_BOUND_SLACK = 1e-4
#: rebuild once the tail holds more than max(TAIL_MIN_ROWS, TAIL_RATIO * sorted rows) rows.
TAIL_MIN_ROWS = 2048
TAIL_RATIO = 0.05
#: ... or once more than this share of all rows (sorted and tail) is masked.
MASKED_RATIO = 0.25
#: rows sampled to estimate the principal axis, and rows per float64 chunk at build.
_AXIS_SAMPLE = 8192
_SPLIT_ROWS = 8192


class NormBlockLayout:
    """Snapshot of item vectors sorted by residual norm ``y`` (descending), for exact search.

    slots: [m] int64 item slot of each row; vecs: [m, dim] float32;
    norms: [m] float64; axis: [dim] float64 (see the module notes); per block
    ``block_max`` (largest norm), ``block_resid`` (largest ``y``),
    ``block_xmin`` / ``block_xmax`` (range of ``x``). Rows can be masked (item removed or made unavailable
    after the snapshot) without rebuilding, and rows appended to an unsorted
    tail (:meth:`append`). Rows are numbered ``0..m-1`` (sorted part) then
    ``m..m+n_tail-1`` (tail); ``row_of_slot`` maps a slot to its current row,
    or -1. A row whose slot was re-appended or dropped is masked for good.
    """

    def __init__(self, slots: np.ndarray, vecs: np.ndarray, block_sizes: tuple[int, ...] = BLOCK_SIZES) -> None:
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.ndim != 2:
            raise ValueError(f"vecs must be 2-D [m, dim], got shape {vecs.shape}")
        self.dim = int(vecs.shape[1])
        m = int(vecs.shape[0])
        #: unit principal axis ``e`` of the rows (float64 [dim]; zeros when there are none)
        self.axis: np.ndarray = _principal_axis(vecs)
        norms, proj, resid = _split_norms(vecs, self.axis)
        order = np.argsort(-resid, kind="stable")
        self.slots: np.ndarray = np.asarray(slots, dtype=np.int64)[order]
        self.vecs: np.ndarray = np.take(vecs, order, axis=0)
        self.norms: np.ndarray = norms[order]
        proj, resid = proj[order], resid[order]
        starts: list[int] = []
        pos, i = 0, 0
        while pos < m:
            starts.append(pos)
            pos += block_sizes[min(i, len(block_sizes) - 1)]
            i += 1
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.append(self.starts[1:], m).astype(np.int64)
        if m:
            self.block_max = np.maximum.reduceat(self.norms, self.starts)  # largest norm
            self.block_resid = resid[self.starts]  # largest y (rows sorted by y)
            self.block_xmin = np.minimum.reduceat(proj, self.starts)
            self.block_xmax = np.maximum.reduceat(proj, self.starts)
        else:
            self.block_max = self.block_resid = self.block_xmin = self.block_xmax = np.zeros(0)
        self.masked = np.zeros(m, dtype=bool)
        self.masked_per_block = np.zeros(len(starts), dtype=np.int64)
        self.n_masked = 0  # masked rows, sorted part and tail together
        #: slot -> row (sorted part, then tail), -1 if the slot has no visible row
        self.row_of_slot = np.full(int(self.slots.max()) + 1 if m else 0, -1, dtype=np.int64)
        self.row_of_slot[self.slots] = np.arange(m)
        self.max_block = int(max((e - s for s, e in zip(self.starts, self.ends)), default=1))
        # unsorted tail of appended rows (capacity grown by doubling)
        self.n_tail = 0
        self.n_tail_masked = 0
        self.tail_slots = np.zeros(0, dtype=np.int64)
        self.tail_vecs = np.zeros((0, self.dim), dtype=np.float32)
        self.tail_masked = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        """Rows, masked included: sorted part plus tail."""
        return len(self.slots) + self.n_tail

    @property
    def n_sorted(self) -> int:
        return len(self.slots)

    def needs_rebuild(self) -> bool:
        """True when a fresh snapshot would search faster: long tail or many masked rows.

        Thresholds: module constants ``TAIL_MIN_ROWS``, ``TAIL_RATIO`` and ``MASKED_RATIO``.
        """
        return (
            self.n_tail > max(TAIL_MIN_ROWS, TAIL_RATIO * len(self.slots))
            or self.n_masked > MASKED_RATIO * max(1, len(self))
        )

    def _row(self, slot: int) -> int:
        return int(self.row_of_slot[slot]) if 0 <= slot < len(self.row_of_slot) else -1

    def _set_masked(self, row: int, flag: bool) -> None:
        m = len(self.slots)
        if row < m:
            if self.masked[row] == flag:
                return
            self.masked[row] = flag
            self.masked_per_block[np.searchsorted(self.starts, row, side="right") - 1] += 1 if flag else -1
        else:
            t = row - m
            if self.tail_masked[t] == flag:
                return
            self.tail_masked[t] = flag
            self.n_tail_masked += 1 if flag else -1
        self.n_masked += 1 if flag else -1

    def mask_slot(self, slot: int) -> bool:
        """Hide an item; False if it has no row here (no-op)."""
        row = self._row(slot)
        if row < 0:
            return False
        self._set_masked(row, True)
        return True

    def unmask_slot(self, slot: int) -> bool:
        """Show a masked item again; False if it has no row here."""
        row = self._row(slot)
        if row < 0:
            return False
        self._set_masked(row, False)
        return True

    def drop_slots(self, slots: np.ndarray) -> None:
        """Mask the rows of ``slots`` for good and forget them (absent slots are ignored)."""
        slots = np.asarray(slots, dtype=np.int64).ravel()
        slots = slots[(slots >= 0) & (slots < len(self.row_of_slot))]
        if not len(slots):
            return
        rows = self.row_of_slot[slots]
        rows = np.unique(rows[rows >= 0])
        if not len(rows):
            return
        self.row_of_slot[slots] = -1
        m = len(self.slots)
        srows, trows = rows[rows < m], rows[rows >= m] - m
        srows = srows[~self.masked[srows]]
        if len(srows):
            self.masked[srows] = True
            blocks = np.searchsorted(self.starts, srows, side="right") - 1
            self.masked_per_block += np.bincount(blocks, minlength=len(self.starts))
        trows = trows[~self.tail_masked[trows]]
        if len(trows):
            self.tail_masked[trows] = True
            self.n_tail_masked += len(trows)
        self.n_masked += len(srows) + len(trows)

    def append(self, slots: np.ndarray, vecs: np.ndarray) -> None:
        """Add rows ``vecs`` [a, dim] for ``slots`` [a] to the tail, visible.

        A slot that already has a row is replaced: its old row is masked for
        good. Amortised O(a * dim): no sorting.
        """
        slots = np.asarray(slots, dtype=np.int64).ravel()
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(slots), self.dim)
        if not len(slots):
            return
        if len(np.unique(slots)) != len(slots):  # keep the last row of each slot
            rev = slots[::-1]
            _, first = np.unique(rev, return_index=True)
            keep = np.sort(len(slots) - 1 - first)
            slots, vecs = slots[keep], vecs[keep]
        self.drop_slots(slots)
        top = int(slots.max()) + 1
        if top > len(self.row_of_slot):
            grown = np.full(max(top, 2 * len(self.row_of_slot)), -1, dtype=np.int64)
            grown[: len(self.row_of_slot)] = self.row_of_slot
            self.row_of_slot = grown
        a, t = len(slots), self.n_tail
        if t + a > len(self.tail_slots):
            cap = max(64, t + a, 2 * len(self.tail_slots))
            ts = np.zeros(cap, dtype=np.int64)
            tv = np.zeros((cap, self.dim), dtype=np.float32)
            tm = np.zeros(cap, dtype=bool)
            ts[:t], tv[:t], tm[:t] = self.tail_slots[:t], self.tail_vecs[:t], self.tail_masked[:t]
            self.tail_slots, self.tail_vecs, self.tail_masked = ts, tv, tm
        self.tail_slots[t:t + a] = slots
        self.tail_vecs[t:t + a] = vecs
        self.tail_masked[t:t + a] = False
        self.row_of_slot[slots] = len(self.slots) + t + np.arange(a)
        self.n_tail = t + a

    def _slots_of_rows(self, rows: np.ndarray) -> np.ndarray:
        m = len(self.slots)
        out = np.full(rows.shape, -1, dtype=np.int64)
        sel = (rows >= 0) & (rows < m)
        out[sel] = self.slots[rows[sel]]
        sel = rows >= m
        if sel.any():
            out[sel] = self.tail_slots[rows[sel] - m]
        return out

    def search(
        self, queries: np.ndarray, k: int, exclude: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Exact top-``k`` by inner product among unmasked rows.

        queries: [B, dim] float32. exclude: optional ``(query_index [E], slot [E])``
        pairs never returned for that query; they are dropped inside the search,
        so no over-fetch is needed and pruning keeps its full threshold.
        Returns ``(scores [B, k] float32, slots [B, k] int64, scored_fraction)``
        best first, padded with ``-inf`` / ``-1`` where fewer than ``k`` unmasked,
        non-excluded items exist; ``scored_fraction`` is the share of (query,
        item) products actually computed.
        """
        B = queries.shape[0]
        m = len(self)
        k = min(k, m)
        if B == 0 or k <= 0:
            return (np.full((B, max(k, 0)), -np.inf, np.float32), np.full((B, max(k, 0)), -1, np.int64), 0.0)
        dense = m <= DENSE_ROWS  # a small catalogue: one product beats the per-block merges
        chunk = max(1, _CHUNK_CELLS // (m if dense else max(self.max_block, self.n_tail)))
        out_v = np.empty((B, k), np.float32)
        out_s = np.empty((B, k), np.int64)
        ex_q, ex_r = self._exclusion_rows(exclude)
        scored = 0
        for c0 in range(0, B, chunk):
            q = np.ascontiguousarray(queries[c0:c0 + chunk], dtype=np.float32)
            lo, hi = np.searchsorted(ex_q, [c0, c0 + chunk])
            search = self._search_dense if dense else self._search_chunk
            v, rows, n_scored = search(q, k, ex_q[lo:hi] - c0, ex_r[lo:hi])
            scored += n_scored
            out_v[c0:c0 + chunk] = v
            out_s[c0:c0 + chunk] = self._slots_of_rows(rows)
        return out_v, out_s, scored / float(B * m)

    def _exclusion_rows(self, exclude: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(query, row) pairs of the excluded slots present here, sorted by query."""
        if exclude is None or len(exclude[0]) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        qi, slots = np.asarray(exclude[0], np.int64), np.asarray(exclude[1], np.int64)
        inside = (slots >= 0) & (slots < len(self.row_of_slot))
        qi, slots = qi[inside], slots[inside]
        rows = self.row_of_slot[slots]
        keep = rows >= 0
        qi, rows = qi[keep], rows[keep]
        order = np.argsort(qi, kind="stable")
        return qi[order], rows[order]

    def _search_dense(
        self, q: np.ndarray, k: int, ex_q: np.ndarray, ex_r: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """One chunk of queries against every row at once, without bounds: ``_search_chunk``'s
        result where the catalogue is at most ``DENSE_ROWS`` rows and its per-block merges cost
        more than scoring everything."""
        m, t = len(self.slots), self.n_tail
        scores = _scores(q, self.vecs)
        if t:
            scores = np.concatenate((scores, _scores(q, self.tail_vecs[:t])), axis=1)
        if self.n_masked:
            scores[:, np.flatnonzero(np.concatenate((self.masked, self.tail_masked[:t])))] = -np.inf
        if len(ex_q):
            scores[ex_q, ex_r] = -np.inf
        at = np.arange(len(q))[:, None]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < m + t else np.argsort(-scores, axis=1)
        rows = top[at, np.argsort(-scores[at, top], axis=1, kind="stable")]
        sv = scores[at, rows]
        rows[~np.isfinite(sv)] = -1
        return sv, rows, scores.size

    def _search_chunk(
        self, q: np.ndarray, k: int, ex_q: np.ndarray | None = None, ex_r: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """One chunk of queries: pure numpy (OpenBLAS sgemm + numpy selection).

        ``ex_q``/``ex_r``: excluded (query in this chunk, row) pairs.

        torch is deliberately not used here: its OpenMP pool and OpenBLAS's
        threads spin against each other when called alternately, which costs
        milliseconds per call on small machines.
        """
        b = q.shape[0]
        q64 = q.astype(np.float64)
        qn = np.linalg.norm(q64, axis=1)
        a = q64 @ self.axis  # q . e
        c = np.sqrt(np.maximum(qn * qn - a * a, 0.0))  # ||q - (q . e) e||
        # per (query, block) upper bound on any score in the block: q . v = a x + q_perp . v_perp
        # <= a x + c y <= max(a xmin, a xmax) + c ymax; never looser than ||q|| * max ||v||.
        # Plus an absolute slack against float32 rounding in the sgemm and the k-th score.
        bound = np.minimum(
            np.maximum(a[:, None] * self.block_xmin, a[:, None] * self.block_xmax) + c[:, None] * self.block_resid,
            qn[:, None] * self.block_max,
        ) + _BOUND_SLACK * qn[:, None] * self.block_max
        # best bound over this block and all later ones: once below every k-th score, stop
        rest = np.maximum.accumulate(bound[:, ::-1], axis=1)[:, ::-1]
        vals = np.full((b, k), -np.inf, dtype=np.float32)  # current top-k, unordered
        rows = np.full((b, k), -1, dtype=np.int64)
        kth = np.full(b, -np.inf, dtype=np.float32)  # current k-th best per query
        scored = 0
        if ex_q is not None and ex_r is not None and len(ex_q):  # sorted by row: one slice per block
            order = np.argsort(ex_r, kind="stable")
            ex_q, ex_r = ex_q[order], ex_r[order]
        else:
            ex_q = ex_r = None
        pos = np.empty(b, dtype=np.int64)  # query -> its row among the active queries

        def drop_excluded(scores: np.ndarray, s: int, e: int, act: np.ndarray | None) -> None:
            if ex_r is None or ex_q is None:
                return
            lo, hi = np.searchsorted(ex_r, [s, e])
            if lo == hi:
                return
            qs, cols = ex_q[lo:hi], ex_r[lo:hi] - s
            if act is not None:
                pos.fill(-1)
                pos[act] = np.arange(len(act))
                qs = pos[qs]
                cols = cols[qs >= 0]
                qs = qs[qs >= 0]
            scores[qs, cols] = -np.inf

        t = self.n_tail
        if t:  # the tail first, for every query: no bound, but it seeds kth
            scores = _scores(q, self.tail_vecs[:t])
            scored += scores.size
            if self.n_tail_masked:
                scores[:, np.flatnonzero(self.tail_masked[:t])] = -np.inf
            drop_excluded(scores, len(self.slots), len(self.slots) + t, None)
            _merge_block(scores, len(self.slots), k, vals, rows, kth)
        for j in range(len(self.starts)):
            s, e = int(self.starts[j]), int(self.ends[j])
            if j == 0 and not t:
                act = None
            else:
                if not (rest[:, j] >= kth).any():
                    break  # no later block can enter any top-k
                # skip the block for queries whose bound is below their k-th best score
                keep = bound[:, j] >= kth
                if not keep.any():
                    continue
                act = None if keep.all() else np.flatnonzero(keep)
            qa = q if act is None else q[act]
            scores = _scores(qa, self.vecs[s:e])  # [a, e - s]: one sgemm (sgemv for one query)
            scored += scores.size
            if self.masked_per_block[j]:
                scores[:, np.flatnonzero(self.masked[s:e])] = -np.inf
            drop_excluded(scores, s, e, act)
            if act is None:
                _merge_block(scores, s, k, vals, rows, kth)
            else:
                va, ra, ka = vals[act], rows[act], kth[act]
                _merge_block(scores, s, k, va, ra, ka)
                vals[act], rows[act], kth[act] = va, ra, ka
        order = np.argsort(-vals, axis=1, kind="stable")
        sv = np.take_along_axis(vals, order, axis=1)
        sr = np.take_along_axis(rows, order, axis=1)
        sr[~np.isfinite(sv)] = -1
        return sv, sr, scored


def _principal_axis(vecs: np.ndarray) -> np.ndarray:
    """Top eigenvector of ``V^T V`` (uncentred) on an evenly strided sample of at most
    ``_AXIS_SAMPLE`` rows, float64 [dim]; zeros for no rows. Any unit vector keeps the
    search exact; this one makes the residual norms smallest on average."""
    m, dim = vecs.shape
    if m == 0:
        return np.zeros(dim)
    sample = vecs[:: max(1, m // _AXIS_SAMPLE)].astype(np.float64)
    w, E = np.linalg.eigh(sample.T @ sample)
    e = E[:, -1]
    if not np.all(np.isfinite(e)) or w[-1] <= 0:
        return np.zeros(dim)
    return e / np.linalg.norm(e)


def _split_norms(vecs: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, float64: ``||v||``, ``x = v . e`` and ``y = ||v - x e||`` (= sqrt(||v||^2 - x^2)).

    Computed in float64 (in row chunks): ``y`` comes from a difference of squares,
    and float32 sums would leave an absolute error of ~sqrt(dim * 6e-8) * ||v|| in it.
    """
    m = vecs.shape[0]
    norms, proj = np.empty(m), np.empty(m)
    for s in range(0, m, _SPLIT_ROWS):
        v = vecs[s:s + _SPLIT_ROWS].astype(np.float64)
        norms[s:s + len(v)] = np.einsum("ij,ij->i", v, v)
        proj[s:s + len(v)] = v @ axis
    resid = np.sqrt(np.maximum(norms - proj * proj, 0.0))
    return np.sqrt(norms), proj, resid


def _scores(q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """``q @ vecs.T`` [a, w] float32, writable.

    One query goes through sgemv (``vecs @ q[0]``): OpenBLAS threads a 1 x w
    sgemm, and on a small busy machine waking its threads costs more than the
    product (measured 2 cores: 0.6 ms vs 0.14 ms for 30k x 64, with spikes to
    tens of ms under load); sgemv streams the block on one thread.
    """
    if q.shape[0] == 1:
        return (vecs @ q[0])[None, :]
    return q @ vecs.T


def _merge_block(
    scores: np.ndarray, offset: int, k: int, vals: np.ndarray, rows: np.ndarray, kth: np.ndarray
) -> None:
    """Merge a block's scores [a, w] into the running top-k (vals/rows [a, k], kth [a]) in place.

    Only entries above the current k-th best can enter; when they are few (the
    usual case after the first block) they are merged sparsely, else densely.
    """
    a, w = scores.shape
    flat = np.flatnonzero(scores > kth[:, None])  # 1-D: ~8x faster than 2-D np.nonzero
    n_cand = len(flat)
    if n_cand == 0:
        return
    if n_cand > 2 * a * k or n_cand > a * w // 4:
        kb = min(k, w)
        if kb < w:
            top = np.argpartition(scores, w - kb, axis=1)[:, w - kb:]
        else:
            top = np.broadcast_to(np.arange(w), (a, w))
        tv = np.take_along_axis(scores, top, axis=1)
        cv = np.concatenate((vals, tv), axis=1)
        cr = np.concatenate((rows, top + offset), axis=1)
        sel = np.argpartition(cv, kb, axis=1)[:, kb:]  # drop the kb smallest of k + kb
        vals[:] = np.take_along_axis(cv, sel, axis=1)
        rows[:] = np.take_along_axis(cr, sel, axis=1)
    else:
        # pad each affected row's candidates to the widest row's count (-inf), append
        # them to its current top-k and keep the k largest: one argpartition
        cand_r, cand_c = np.divmod(flat, w)  # row-major: rows ascending
        counts = np.bincount(cand_r, minlength=a)
        ur = np.flatnonzero(counts)
        cnt = counts[ur]
        first = np.cumsum(cnt) - cnt
        inv = np.repeat(np.arange(len(ur)), cnt)
        pos = np.arange(n_cand) - first[inv]
        wide = int(cnt.max())
        cv = np.full((len(ur), k + wide), -np.inf, dtype=np.float32)
        cr = np.full((len(ur), k + wide), -1, dtype=np.int64)
        cv[:, :k], cr[:, :k] = vals[ur], rows[ur]
        cv[inv, k + pos] = scores.ravel()[flat]
        cr[inv, k + pos] = cand_c + offset
        sel = np.argpartition(cv, wide, axis=1)[:, wide:]  # drop the `wide` smallest
        vals[ur] = np.take_along_axis(cv, sel, axis=1)
        rows[ur] = np.take_along_axis(cr, sel, axis=1)
    kth[:] = vals.min(axis=1)

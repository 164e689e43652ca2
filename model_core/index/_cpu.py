"""Exact CPU top-k by inner product with norm-ordered block pruning.

Items are sorted by vector norm, descending, and cut into blocks. For a query
``q`` and a block whose largest norm is ``m``, every item ``v`` in it scores
``q . v <= ||q|| * ||v|| <= ||q|| * m`` (Cauchy-Schwarz). Blocks are scored in
order with one sgemm each (numpy/OpenBLAS) and merged by numpy selection; once
a query's current k-th best score exceeds ``||q|| * m`` for the next block, no
later block can enter its top-k (norms only decrease), and the query drops out.
The result is exact by construction; on item factors with skewed norms (iALS:
popularity) most of the tail is never scored.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NormBlockLayout", "BLOCK_SIZES"]

#: sizes of the leading blocks; the rest are ``BLOCK_SIZES[-1]`` wide.
BLOCK_SIZES: tuple[int, ...] = (2048, 2048, 4096, 8192, 16384)
#: bound on one chunk's score matrix (queries x block columns), in float32 cells.
_CHUNK_CELLS = 1 << 21
#: relative slack on the Cauchy-Schwarz bound against float32 rounding in sgemm.
_BOUND_SLACK = 1e-4


class NormBlockLayout:
    """Snapshot of item vectors sorted by norm (descending), for exact search.

    slots: [m] int64 item slot of each row; vecs: [m, dim] float32;
    norms: [m] float64. Rows can be masked (item removed or made unavailable
    after the snapshot) without rebuilding; a masked row never comes back.
    """

    def __init__(self, slots: np.ndarray, vecs: np.ndarray, block_sizes: tuple[int, ...] = BLOCK_SIZES) -> None:
        vecs = np.asarray(vecs, dtype=np.float32)
        # float32 sums of squares: the relative error (~dim * 6e-8) is far inside _BOUND_SLACK
        norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs).astype(np.float64))
        order = np.argsort(-norms, kind="stable")
        self.slots: np.ndarray = np.asarray(slots, dtype=np.int64)[order]
        self.vecs: np.ndarray = np.take(vecs, order, axis=0)
        self.norms: np.ndarray = norms[order]
        m = len(self.slots)
        starts: list[int] = []
        pos, i = 0, 0
        while pos < m:
            starts.append(pos)
            pos += block_sizes[min(i, len(block_sizes) - 1)]
            i += 1
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.append(self.starts[1:], m).astype(np.int64)
        self.block_max = self.norms[self.starts] if m else np.zeros(0)
        self.masked = np.zeros(m, dtype=bool)
        self.masked_per_block = np.zeros(len(starts), dtype=np.int64)
        self.n_masked = 0
        #: slot -> row, for masking
        self.row_of_slot = np.full(int(self.slots.max()) + 1 if m else 0, -1, dtype=np.int64)
        self.row_of_slot[self.slots] = np.arange(m)
        self.max_block = int(max((e - s for s, e in zip(self.starts, self.ends)), default=1))

    def __len__(self) -> int:
        return len(self.slots)

    def mask_slot(self, slot: int) -> bool:
        """Hide an item; False if it is not in this snapshot (no-op)."""
        row = int(self.row_of_slot[slot]) if 0 <= slot < len(self.row_of_slot) else -1
        if row < 0:
            return False
        if not self.masked[row]:
            self.masked[row] = True
            self.masked_per_block[np.searchsorted(self.starts, row, side="right") - 1] += 1
            self.n_masked += 1
        return True

    def unmask_slot(self, slot: int) -> bool:
        """Show a masked item again; False if it is not in this snapshot."""
        row = int(self.row_of_slot[slot]) if 0 <= slot < len(self.row_of_slot) else -1
        if row < 0:
            return False
        if self.masked[row]:
            self.masked[row] = False
            self.masked_per_block[np.searchsorted(self.starts, row, side="right") - 1] -= 1
            self.n_masked -= 1
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Exact top-``k`` by inner product among unmasked rows.

        queries: [B, dim] float32. Returns ``(scores [B, k] float32, slots [B, k]
        int64, scored_fraction)`` best first, padded with ``-inf`` / ``-1`` where
        fewer than ``k`` unmasked items exist; ``scored_fraction`` is the share of
        (query, item) products actually computed.
        """
        B = queries.shape[0]
        m = len(self.slots)
        k = min(k, m)
        if B == 0 or k <= 0:
            return (np.full((B, max(k, 0)), -np.inf, np.float32), np.full((B, max(k, 0)), -1, np.int64), 0.0)
        chunk = max(1, _CHUNK_CELLS // self.max_block)
        out_v = np.empty((B, k), np.float32)
        out_s = np.empty((B, k), np.int64)
        scored = 0
        for c0 in range(0, B, chunk):
            q = np.ascontiguousarray(queries[c0:c0 + chunk], dtype=np.float32)
            v, rows, n_scored = self._search_chunk(q, k)
            scored += n_scored
            out_v[c0:c0 + chunk] = v
            out_s[c0:c0 + chunk] = np.where(rows >= 0, self.slots[np.maximum(rows, 0)], -1)
        return out_v, out_s, scored / float(B * m)

    def _search_chunk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One chunk of queries: pure numpy (OpenBLAS sgemm + numpy selection).

        torch is deliberately not used here: its OpenMP pool and OpenBLAS's
        threads spin against each other when called alternately, which costs
        milliseconds per call on small machines.
        """
        b = q.shape[0]
        qn = np.linalg.norm(q.astype(np.float64), axis=1) * (1.0 + _BOUND_SLACK)
        vals = np.full((b, k), -np.inf, dtype=np.float32)  # current top-k, unordered
        rows = np.full((b, k), -1, dtype=np.int64)
        kth = np.full(b, -np.inf, dtype=np.float32)  # current k-th best per query
        scored = 0
        for j in range(len(self.starts)):
            s, e = int(self.starts[j]), int(self.ends[j])
            if j == 0:
                act = None
            else:
                # skip the block where ||q|| * max_norm(block) < k-th best score
                keep = qn * float(self.block_max[j]) >= kth
                if not keep.any():
                    break  # norms only decrease and thresholds only rise: done
                act = None if keep.all() else np.flatnonzero(keep)
            qa = q if act is None else q[act]
            scores = qa @ self.vecs[s:e].T  # [a, e - s]: one sgemm
            scored += scores.size
            if self.masked_per_block[j]:
                scores[:, np.flatnonzero(self.masked[s:e])] = -np.inf
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
        cand_r, cand_c = np.divmod(flat, w)
        ur, inv = np.unique(cand_r, return_inverse=True)
        m = len(ur)
        all_r = np.concatenate((np.repeat(np.arange(m), k), inv.ravel()))
        all_v = np.concatenate((vals[ur].ravel(), scores.ravel()[flat]))
        all_i = np.concatenate((rows[ur].ravel(), cand_c.astype(np.int64) + offset))
        order = np.lexsort((-all_v, all_r))
        counts = np.bincount(all_r, minlength=m)
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pick = order[(first[:, None] + np.arange(k)[None, :]).ravel()]
        vals[ur] = all_v[pick].reshape(m, k)
        rows[ur] = all_i[pick].reshape(m, k)
    kth[:] = vals.min(axis=1)

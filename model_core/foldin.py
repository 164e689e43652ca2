"""Exact iALS fold-in, batched: B users (or items) in one batched Cholesky solve.

For a user with recent items h, confidences c_h and item factors V::

    u = (VᵀV + λI + V_hᵀ (C_h − I) V_h)⁻¹ V_hᵀ c_h

``VᵀV + λI`` is precomputed once per model version (and updated in O(k²) when an
item vector is added or replaced). A new item's vector is the same solve with the
roles swapped: the embeddings of the users who touched it, and the users' Gramian.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import torch

from model_core.config import ALSConfig
from model_core.device import resolve_device

__all__ = ["confidence", "solve_batched", "FoldIn"]


@contextlib.contextmanager
def _single_threaded(device: str) -> Iterator[None]:
    """Run small CPU torch ops on the calling thread only.

    A fold-in is a few small kernels; torch's OpenMP pool would spin for
    ~200 ms after each one and fight the BLAS threads of the FAISS/numpy search
    that follows it, many times over on small machines.
    """
    if device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_Weights = TypeVar("_Weights", torch.Tensor, np.ndarray)


def confidence(weights: _Weights, config: ALSConfig) -> _Weights:
    """Confidence ``c`` of summed event weights ``w`` (same shape and type: a torch tensor, or a
    numpy array for the CPU fold-in), as in training."""
    if config.confidence == "log":
        log1p = torch.log1p if isinstance(weights, torch.Tensor) else np.log1p
        return 1.0 + config.alpha * log1p(weights / config.epsilon)
    return 1.0 + config.alpha * weights


def solve_batched(
    gram_reg: torch.Tensor,
    factors: torch.Tensor,
    conf: torch.Tensor,
    gram_inv: torch.Tensor | None = None,
) -> torch.Tensor:
    """Solve B regularised iALS systems at once.

    gram_reg: [k, k] = FᵀF + λI of the full factor matrix.
    factors:  [B, H, k] factors of each row's history (zero rows for padding).
    conf:     [B, H] confidences >= 1 (ignored where the factor row is zero).
    gram_inv: [k, k] inverse of ``gram_reg``; when given and H < k the solve
              uses the Woodbury identity (an H x H system per row instead of
              k x k: histories are short, so this is the common, cheap case).
    returns   [B, k].
    """
    h, k = factors.shape[1], factors.shape[2]
    if gram_inv is not None and h < k:
        return _solve_woodbury(gram_inv, factors, conf)
    weighted = factors * (conf - 1.0).unsqueeze(-1)
    a = gram_reg.unsqueeze(0) + torch.bmm(factors.transpose(1, 2), weighted)
    b = torch.bmm(factors.transpose(1, 2), conf.unsqueeze(-1))
    chol, info = torch.linalg.cholesky_ex(a)
    if bool(info.any()):  # numerically indefinite (tiny λ, huge confidences): fall back
        return torch.linalg.lstsq(a, b).solution.squeeze(-1)
    return torch.cholesky_solve(b, chol).squeeze(-1)


def _solve_woodbury(gram_inv: torch.Tensor, f: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """(G + Fᵀ D F)⁻¹ Fᵀ c with D = diag(c − 1), via an H x H system.

    With S = D^½ and P = F G⁻¹:  y = Pᵀ c,
    u = y − Pᵀ S (I + S F Pᵀ S)⁻¹ S F y   (exact; I + S F G⁻¹ Fᵀ S is SPD).
    """
    p = f @ gram_inv  # [B, H, k]
    y = torch.bmm(p.transpose(1, 2), conf.unsqueeze(-1)).squeeze(-1)  # [B, k]
    s = (conf - 1.0).clamp(min=0.0).sqrt()  # [B, H]
    m = torch.bmm(f, p.transpose(1, 2)) * s.unsqueeze(2) * s.unsqueeze(1)
    m.diagonal(dim1=1, dim2=2).add_(1.0)
    rhs = s * torch.bmm(f, y.unsqueeze(-1)).squeeze(-1)  # [B, H]
    chol, info = torch.linalg.cholesky_ex(m)
    if bool(info.any()):
        z = torch.linalg.lstsq(m, rhs.unsqueeze(-1)).solution.squeeze(-1)
    else:
        z = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    return y - torch.bmm(p.transpose(1, 2), (s * z).unsqueeze(-1)).squeeze(-1)


def _solve_numpy(gram_reg: np.ndarray, gram_inv: np.ndarray, f: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """``solve_batched`` in numpy float32, for the CPU: the same systems (Woodbury when H < k)
    without torch's per-operation cost on the dozen small kernels of a fold-in
    (``benchmarks/model_core_speed.py``'s fold-ins/s, against the torch solve)."""
    h, k = f.shape[1], f.shape[2]
    if h < k:
        p = f @ gram_inv  # [B, H, k]
        y = np.einsum("bhk,bh->bk", p, conf)
        s = np.sqrt(np.maximum(conf - 1.0, 0.0))
        m = (f @ p.transpose(0, 2, 1)) * s[:, :, None] * s[:, None, :]
        m[:, np.arange(h), np.arange(h)] += 1.0
        z = _solve_systems(m, s * np.einsum("bhk,bk->bh", f, y))
        return y - np.einsum("bhk,bh->bk", p, s * z)
    a = gram_reg + f.transpose(0, 2, 1) @ (f * (conf - 1.0)[:, :, None])
    return _solve_systems(a, np.einsum("bhk,bh->bk", f, conf))


def _solve_systems(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with a[i] x[i] = b[i]; least squares where a system is singular."""
    try:
        return np.linalg.solve(a, b[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(a) @ b[:, :, None])[:, :, 0]


def _inverse(gram_reg: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(gram_reg.double()).to(gram_reg.dtype)


class FoldIn:
    """Holds item factors on a device and folds batches of histories into embeddings.

    ``item_factors`` [n, k] grows as new items are folded in (``add_item``).
    """

    def __init__(self, item_factors: np.ndarray, config: ALSConfig, *, device: str = "auto") -> None:
        self.config = config
        self.device = resolve_device(device)
        n, k = item_factors.shape
        self._n = n
        capacity = max(16, n + n // 4)
        self._v = torch.zeros((capacity, k), dtype=torch.float32, device=self.device)
        self._v[:n] = torch.as_tensor(np.asarray(item_factors, dtype=np.float32), device=self.device)
        v = self._v[:n].double()
        self._gram = (v.T @ v).float()  # VᵀV, kept current on add/replace
        self._reg = config.regularization * torch.eye(k, dtype=torch.float32, device=self.device)
        self._gram_reg = self._gram + self._reg  # VᵀV + λI, with its inverse recomputed lazily
        self._gram_inv: torch.Tensor | None = None  # (VᵀV + λI)⁻¹

    @property
    def factors(self) -> int:
        return int(self._v.shape[1])

    @property
    def n_items(self) -> int:
        return self._n

    def item_vectors(self) -> np.ndarray:
        """[n, k] float32 copy of the current item factors."""
        return self._v[: self._n].cpu().numpy()

    def add_item(self, vector: np.ndarray) -> int:
        """Append one item vector [k]; returns its row."""
        if self._n == self._v.shape[0]:
            grown = torch.zeros((2 * self._n, self.factors), dtype=torch.float32, device=self.device)
            grown[: self._n] = self._v[: self._n]
            self._v = grown
        row = self._n
        self._n += 1
        self.replace_item(row, vector, _new=True)
        return row

    def replace_item(self, row: int, vector: np.ndarray, *, _new: bool = False) -> None:
        """Replace item ``row``'s vector [k], keeping the Gramian exact."""
        new = torch.as_tensor(np.asarray(vector, dtype=np.float32), device=self.device)
        if not _new:
            old = self._v[row]
            self._gram -= torch.outer(old, old)
        self._v[row] = new
        self._gram += torch.outer(new, new)
        self._gram_inv = None

    def users(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Fold in B users.

        rows:    [B, H] int64 item rows, -1 for padding.
        weights: [B, H] float32 decayed event weights (before confidence scaling).
        returns  [B, k] float32 embeddings (zeros for an all-padding row).
        """
        rows = np.asarray(rows)
        weights = _safe_weights(weights)
        out = np.zeros((rows.shape[0], self.factors), dtype=np.float32)
        with _single_threaded(self.device):
            if self._gram_inv is None:
                self._gram_reg = self._gram + self._reg
                self._gram_inv = _inverse(self._gram_reg)
            gram_reg = self._gram_reg
            lengths = (rows >= 0).sum(axis=1)
            widths = _buckets(lengths, self.factors)
            for width in np.unique(widths):
                if width == 0:
                    continue  # no known item: zero embedding (the caller falls back)
                sel = np.flatnonzero(widths == width)
                r = rows[sel]
                w_sel = weights[sel]
                if r.shape[1] > width:  # pack entries left, then drop the padding columns
                    r, w_sel = _pack_left(r, w_sel, width)
                if self.device == "cpu":
                    known = r >= 0
                    f_np = self._v.numpy()[np.maximum(r, 0)] * known[:, :, None]
                    conf_np = np.where(known, confidence(w_sel, self.config), np.float32(1.0))
                    out[sel] = _solve_numpy(gram_reg.numpy(), self._gram_inv.numpy(), f_np, conf_np)
                    continue
                idx = torch.as_tensor(r, dtype=torch.long, device=self.device)
                mask = (idx >= 0).to(torch.float32)
                f = self._v[idx.clamp(min=0)] * mask.unsqueeze(-1)
                w = torch.as_tensor(w_sel, dtype=torch.float32, device=self.device)
                conf = confidence(w, self.config) * mask + (1.0 - mask)  # padding: c = 1, f = 0
                out[sel] = solve_batched(gram_reg, f, conf, self._gram_inv).cpu().numpy()
        out[~np.isfinite(out).all(axis=1)] = 0.0  # never hand on a broken vector: the caller falls back
        return out

    def items(self, user_vectors: np.ndarray, weights: np.ndarray, user_gram: np.ndarray) -> np.ndarray:
        """Fold in B new items from the users who touched them.

        user_vectors: [B, H, k] embeddings of those users (zero rows for padding).
        weights:      [B, H] their summed event weights on the item.
        user_gram:    [k, k] UᵀU of the model's user factors.
        returns       [B, k] item vectors.
        """
        if self.device == "cpu":
            gram = torch.as_tensor(np.asarray(user_gram, dtype=np.float32)) + self._reg
            out = _solve_numpy(gram.numpy(), _inverse(gram).numpy(), np.asarray(user_vectors, dtype=np.float32),
                               confidence(_safe_weights(weights), self.config))
            out[~np.isfinite(out).all(axis=1)] = 0.0
            return out
        with _single_threaded(self.device):
            f = torch.as_tensor(np.asarray(user_vectors, dtype=np.float32), device=self.device)
            w = torch.as_tensor(_safe_weights(weights), device=self.device)
            gram_reg = torch.as_tensor(np.asarray(user_gram, dtype=np.float32), device=self.device) + self._reg
            out = solve_batched(gram_reg, f, confidence(w, self.config), _inverse(gram_reg)).cpu().numpy()
            out[~np.isfinite(out).all(axis=1)] = 0.0
            return out


_SOLVE_OVERHEAD_US = 250.0
"""What one more solve call costs on the CPU (torch's per-op overhead and the call's numpy
preparation), microseconds."""


def _solve_us(width: int, k: int) -> float:
    """Microseconds per row of a Woodbury solve at padded width ``width`` (fitted on 2 cores,
    one thread, k=64: 1.4, 4.0, 7.6, 29 and 97 us at widths 2, 8, 16, 32 and 64; the Cholesky
    of the width x width system dominates from 32 on). ``k`` scales the linear part."""
    return 0.45 * width * k / 64 + 3.5e-4 * width**3


def _buckets(lengths: np.ndarray, k: int) -> np.ndarray:
    """Per row, the padded width it is solved at (0: no known item, no solve).

    Rows are bucketed by length, to powers of two, so padding stays small; a bucket of
    short rows joins the next wider one when padding them costs less than one more solve
    (small batches: one or two solves instead of one per length). Padding changes no
    result: a padded entry has a zero factor row and confidence 1.
    """
    widths = np.where(lengths > 0, 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64), 0)
    present, counts = np.unique(widths[widths > 0], return_counts=True)
    to = {}
    target = None
    for w, n in zip(present[::-1].tolist(), counts[::-1].tolist()):  # widest first
        if target is None or n * (_solve_us(target, k) - _solve_us(w, k)) > _SOLVE_OVERHEAD_US:
            target = w
        to[w] = target
    if all(w == t for w, t in to.items()):
        return widths
    return np.array([to.get(w, 0) for w in widths.tolist()], dtype=np.int64)


MAX_FOLD_WEIGHT = 1e6  # summed, decayed event weight of one (user, item) cell, at most


def _safe_weights(weights: np.ndarray) -> np.ndarray:
    """float32 weights in [0, MAX_FOLD_WEIGHT] (NaN -> 0): confidences stay finite in float32."""
    w = np.asarray(weights, dtype=np.float64)
    return np.clip(np.nan_to_num(w, nan=0.0, posinf=MAX_FOLD_WEIGHT), 0.0, MAX_FOLD_WEIGHT).astype(np.float32)


def _pack_left(rows: np.ndarray, values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's non-negative entries (and their values) to the front, in order; keep ``width`` columns."""
    order = np.argsort(rows < 0, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(values, order, axis=1)

"""Exact iALS fold-in, batched: B users (or items) in one batched Cholesky solve.

For a user with recent items h, confidences c_h and item factors V::

    u = (VᵀV + λI + V_hᵀ (C_h − I) V_h)⁻¹ V_hᵀ c_h

``VᵀV + λI`` is precomputed once per model version (and updated in O(k²) when an
item vector is added or replaced). A new item's vector is the same solve with the
roles swapped: the embeddings of the users who touched it, and the users' Gramian.
"""

from __future__ import annotations

import numpy as np
import torch

from model_core.config import ALSConfig
from model_core.device import resolve_device

__all__ = ["confidence", "solve_batched", "FoldIn"]


def confidence(weights: torch.Tensor, config: ALSConfig) -> torch.Tensor:
    """Confidence ``c`` of summed event weights ``w`` (same shape), as in training."""
    if config.confidence == "log":
        return 1.0 + config.alpha * torch.log1p(weights / config.epsilon)
    return 1.0 + config.alpha * weights


def solve_batched(gram_reg: torch.Tensor, factors: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Solve B regularised iALS systems at once.

    gram_reg: [k, k] = FᵀF + λI of the full factor matrix.
    factors:  [B, H, k] factors of each row's history (zero rows for padding).
    conf:     [B, H] confidences (ignored where the factor row is zero).
    returns   [B, k].
    """
    weighted = factors * (conf - 1.0).unsqueeze(-1)
    a = gram_reg.unsqueeze(0) + torch.bmm(factors.transpose(1, 2), weighted)
    b = torch.bmm(factors.transpose(1, 2), conf.unsqueeze(-1))
    chol, info = torch.linalg.cholesky_ex(a)
    if bool(info.any()):  # numerically indefinite (tiny λ, huge confidences): fall back
        return torch.linalg.lstsq(a, b).solution.squeeze(-1)
    return torch.cholesky_solve(b, chol).squeeze(-1)


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

    def users(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Fold in B users.

        rows:    [B, H] int64 item rows, -1 for padding.
        weights: [B, H] float32 decayed event weights (before confidence scaling).
        returns  [B, k] float32 embeddings (zeros for an all-padding row).
        """
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        mask = (idx >= 0).to(torch.float32)
        f = self._v[idx.clamp(min=0)] * mask.unsqueeze(-1)
        w = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        conf = confidence(w, self.config) * mask
        out = solve_batched(self._gram + self._reg, f, conf)
        return out.cpu().numpy()

    def items(self, user_vectors: np.ndarray, weights: np.ndarray, user_gram: np.ndarray) -> np.ndarray:
        """Fold in B new items from the users who touched them.

        user_vectors: [B, H, k] embeddings of those users (zero rows for padding).
        weights:      [B, H] their summed event weights on the item.
        user_gram:    [k, k] UᵀU of the model's user factors.
        returns       [B, k] item vectors.
        """
        f = torch.as_tensor(np.asarray(user_vectors, dtype=np.float32), device=self.device)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=self.device)
        gram = torch.as_tensor(np.asarray(user_gram, dtype=np.float32), device=self.device)
        return solve_batched(gram + self._reg, f, confidence(w, self.config)).cpu().numpy()

"""Implicit-feedback ALS (iALS) in torch, and the versioned model directory it writes.

Training solves, alternately for users and items, the weighted least squares of
Hu, Koren & Volinsky (2008): for user u with items I_u and confidences c_ui,

    x_u = (YᵀY + λI + Y_uᵀ (C_u − I) Y_u)⁻¹ Y_uᵀ c_u

with a few conjugate-gradient steps warm-started from the previous iterate
(``cg_steps``, as in benfred/implicit), or exactly (``cg_steps=0``). Every
operation is vectorised over the non-zeros, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model_core._io import sha256_file
from model_core.config import ALSConfig
from model_core.device import resolve_device
from model_core.errors import BadInputError, ConfigError, ModelIncompatibleError
from model_core.events import Event
from model_core.foldin import confidence

__all__ = [
    "MODEL_FORMAT",
    "REJECTED_DIR",
    "ALSModel",
    "Interactions",
    "InteractionsBuilder",
    "fit_factors",
    "latest_model_dir",
    "model_versions",
    "prune_versions",
    "train_als",
]

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
_ARRAYS = ("item_factors", "user_factors")
_JSONS = ("item_ids", "user_ids", "config", "metadata")


@dataclass
class Interactions:
    """Summed event weights per (user, item): COO arrays plus the id maps."""

    user_ids: list[str]
    item_ids: list[str]
    rows: np.ndarray  # [nnz] int64 user index
    cols: np.ndarray  # [nnz] int64 item index
    weights: np.ndarray  # [nnz] float32 summed event weight
    n_events: int = 0
    time_range: tuple[float, float] | None = None

    @classmethod
    def from_events(cls, events: Iterable[Event], config: ALSConfig) -> Interactions:
        builder = InteractionsBuilder(config)
        for ev in events:
            builder.add(ev)
        return builder.build()


class InteractionsBuilder:
    """Accumulates events into ``Interactions`` one at a time (memory grows with the
    (user, item) cells, not with the events), and can forget a user (an erasure)."""

    def __init__(self, config: ALSConfig) -> None:
        self.config = config
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._cells: dict[int, dict[int, float]] = {}  # user index -> item index -> summed weight
        self.n_events = 0
        self._tmin, self._tmax = float("inf"), float("-inf")

    def add(self, ev: Event) -> None:
        u = self._users.setdefault(ev.user_id, len(self._users))
        i = self._items.setdefault(ev.item_id, len(self._items))
        row = self._cells.get(u)
        if row is None:
            row = self._cells[u] = {}
        row[i] = row.get(i, 0.0) + self.config.weights.of(ev)
        self.n_events += 1
        self._tmin, self._tmax = min(self._tmin, ev.time), max(self._tmax, ev.time)

    def forget_user(self, user_id: str) -> None:
        """Drop everything added for ``user_id`` so far (later events count again)."""
        u = self._users.get(user_id)
        if u is not None:
            self._cells.pop(u, None)

    def build(self) -> Interactions:
        """The interactions, ids in sorted order, so the model does not depend on the order the
        events came in (a topic's partitions interleave differently from a file). Users without
        cells (forgotten) and items nobody has are left out."""
        rows_of = {u: row for u, row in self._cells.items() if row}
        if not rows_of:
            raise BadInputError("no events to train on")
        user_names = list(self._users)
        item_names = list(self._items)
        users_kept = sorted(rows_of, key=user_names.__getitem__)
        items_kept = sorted({i for row in rows_of.values() for i in row}, key=item_names.__getitem__)
        user_new = {u: n for n, u in enumerate(users_kept)}
        item_new = np.full(len(item_names), -1, dtype=np.int64)
        item_new[items_kept] = np.arange(len(items_kept))
        nnz = sum(len(row) for row in rows_of.values())
        rows = np.empty(nnz, dtype=np.int64)
        cols = np.empty(nnz, dtype=np.int64)
        weights = np.empty(nnz, dtype=np.float32)
        at = 0
        for u in users_kept:
            row = rows_of[u]
            n = len(row)
            rows[at : at + n] = user_new[u]
            cols[at : at + n] = np.fromiter(row.keys(), dtype=np.int64, count=n)
            weights[at : at + n] = np.fromiter(row.values(), dtype=np.float32, count=n)
            at += n
        return Interactions(
            user_ids=[user_names[u] for u in users_kept],
            item_ids=[item_names[i] for i in items_kept],
            rows=rows,
            cols=item_new[cols],
            weights=weights,
            n_events=self.n_events,
            time_range=(self._tmin, self._tmax),
        )


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix from COO parts (duplicates summed)."""
    with warnings.catch_warnings():  # torch flags sparse CSR as beta
        warnings.simplefilter("ignore", UserWarning)
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape).coalesce()
        return coo.to_sparse_csr()


def _solve_side(
    fixed: torch.Tensor,
    solved: torch.Tensor,
    conf: torch.Tensor,
    reg: float,
    cg_steps: int,
) -> torch.Tensor:
    """One half-iteration: new ``solved`` [n_rows, k] given ``fixed`` [n_cols, k].

    ``conf`` is a sparse CSR [n_rows, n_cols] of confidences. The matrix-vector
    product of CG is a sampled dense-dense product (SDDMM) followed by a sparse
    times dense product, so no [nnz, k] temporary is ever materialised.
    """
    k = fixed.shape[1]
    gram = fixed.T @ fixed + reg * torch.eye(k, dtype=fixed.dtype, device=fixed.device)
    crow, col, c = conf.crow_indices(), conf.col_indices(), conf.values()
    cm1 = c - 1.0
    if cg_steps == 0:
        rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=c.device), crow.diff())
        return _exact(gram, fixed[col], rows, cm1, conf @ fixed)

    def sparse_times_fixed(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """Σ_i (offset_ui + scale_ui * (y_i · x_u)) y_i for every row u: one SDDMM + one SpMM."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dots = torch.sparse.sampled_addmm(conf, x, fixed.T, beta=0.0).values() * scale
            if offset is not None:
                dots = offset + dots
            return torch.sparse_csr_tensor(crow, col, dots, conf.shape) @ fixed

    # r = b − A x with b = Fᵀc folded into the same sparse product: Fᵀ(c − (c−1)·Fx) − x G.
    # ``solved`` is updated in place (callers replace it with the result anyway).
    x = solved
    r = sparse_times_fixed(x, -cm1, c).addmm_(x, gram, alpha=-1.0)
    p = r.clone()
    rs_old = (r * r).sum(1)
    for _ in range(cg_steps):
        ap = sparse_times_fixed(p, cm1, None).addmm_(p, gram)  # A p
        denom = (p * ap).sum(1)
        step = torch.where(denom > 0, rs_old / denom.clamp(min=1e-30), torch.zeros_like(denom)).unsqueeze(1)
        x.addcmul_(step, p)
        r.addcmul_(step, ap, value=-1.0)
        rs_new = (r * r).sum(1)
        beta = torch.where(rs_old > 0, rs_new / rs_old.clamp(min=1e-30), torch.zeros_like(rs_new))
        p.mul_(beta.unsqueeze(1)).add_(r)
        rs_old = rs_new
    return x


def _exact(gram: torch.Tensor, yc: torch.Tensor, rows: torch.Tensor, cm1: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact solve: A_u = gram + Σ (c−1) y yᵀ accumulated in chunks, then batched Cholesky."""
    n, k = b.shape
    a = gram.expand(n, k, k).clone()
    chunk = max(1, (1 << 22) // (k * k))
    for s in range(0, yc.shape[0], chunk):
        y = yc[s : s + chunk]
        outer = y.unsqueeze(2) * (y * cm1[s : s + chunk].unsqueeze(1)).unsqueeze(1)
        a.index_add_(0, rows[s : s + chunk], outer)
    return torch.cholesky_solve(b.unsqueeze(-1), torch.linalg.cholesky(a)).squeeze(-1)


def fit_factors(
    data: Interactions,
    config: ALSConfig,
    *,
    device: str = "auto",
    progress: bool = False,
    warm_start: ALSModel | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Train user [n_users, k] and item [n_items, k] factors (float32 numpy).

    ``warm_start``: start known users and items from that model's factors (same
    ``factors``) instead of small random values; new ones start random as usual.
    """
    dev = resolve_device(device)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    n_users, n_items, k = len(data.user_ids), len(data.item_ids), config.factors
    users = torch.rand((n_users, k), generator=gen) * 0.01
    items = torch.rand((n_items, k), generator=gen) * 0.01
    if warm_start is not None:
        if warm_start.config.factors != k:
            raise ConfigError(f"cannot warm-start {k} factors from model {warm_start.version} "
                              f"with {warm_start.config.factors}")
        for ids, init, prev_ids, prev in ((data.user_ids, users, warm_start.user_ids, warm_start.user_factors),
                                          (data.item_ids, items, warm_start.item_ids, warm_start.item_factors)):
            where = {x: r for r, x in enumerate(prev_ids)}
            pairs = [(n, where[x]) for n, x in enumerate(ids) if x in where]
            if pairs:
                new_rows, old_rows = (torch.as_tensor(c) for c in zip(*pairs))
                init[new_rows] = torch.as_tensor(prev)[old_rows]
    users, items = users.to(dev), items.to(dev)
    rows = torch.as_tensor(data.rows, device=dev)
    cols = torch.as_tensor(data.cols, device=dev)
    conf = confidence(torch.as_tensor(data.weights, device=dev), config)
    by_user = _csr(rows, cols, conf, (n_users, n_items))
    by_item = _csr(cols, rows, conf, (n_items, n_users))
    bar = tqdm(range(config.iterations), desc="iALS", unit="it", disable=not progress, leave=False)
    for _ in bar:
        users = _solve_side(items, users, by_user, config.regularization, config.cg_steps)
        items = _solve_side(users, items, by_item, config.regularization, config.cg_steps)
    return users.cpu().numpy(), items.cpu().numpy()


def _new_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


@dataclass
class ALSModel:
    """A trained model version: item and user factors with their id maps."""

    config: ALSConfig
    item_ids: list[str]
    item_factors: np.ndarray  # [n_items, k] float32
    user_ids: list[str]
    user_factors: np.ndarray  # [n_users, k] float32
    version: str = field(default_factory=_new_version)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def item_gramian(self) -> np.ndarray:
        """VᵀV [k, k] (float64 accumulation, float32 result)."""
        v = self.item_factors.astype(np.float64)
        return (v.T @ v).astype(np.float32)

    @property
    def user_gramian(self) -> np.ndarray:
        """UᵀU [k, k]: what new-item fold-in needs."""
        u = self.user_factors.astype(np.float64)
        return (u.T @ u).astype(np.float32)

    def save(self, root: str | os.PathLike[str]) -> Path:
        """Write ``root/<version>/`` atomically (temp dir, then rename); returns that path."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        final = root / self.version
        if final.exists():
            raise ModelIncompatibleError(f"model version {self.version} already exists in {root}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.version}.", dir=root))
        try:
            np.save(tmp / "item_factors.npy", self.item_factors.astype(np.float32))
            np.save(tmp / "user_factors.npy", self.user_factors.astype(np.float32))
            np.save(tmp / "item_gramian.npy", self.item_gramian)
            np.save(tmp / "user_gramian.npy", self.user_gramian)
            (tmp / "item_ids.json").write_text(json.dumps(self.item_ids))
            (tmp / "user_ids.json").write_text(json.dumps(self.user_ids))
            (tmp / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
            (tmp / "metadata.json").write_text(json.dumps(self.metadata, indent=2))
            files = sorted(p.name for p in tmp.iterdir())
            manifest = {
                "format": MODEL_FORMAT,
                "version": self.version,
                "factors": self.config.factors,
                "n_items": len(self.item_ids),
                "n_users": len(self.user_ids),
                "sha256": {name: sha256_file(tmp / name) for name in files},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> ALSModel:
        """Load a model directory, or the newest version under a directory of versions."""
        d = latest_model_dir(path)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
            if manifest.get("format") != MODEL_FORMAT:
                raise ModelIncompatibleError(
                    f"{d}: model format {manifest.get('format')} is not {MODEL_FORMAT}; retrain"
                )
            if verify:
                for name, digest in manifest["sha256"].items():
                    if sha256_file(d / name) != digest:
                        raise ModelIncompatibleError(f"{d}: checksum mismatch in {name} (corrupt copy?)")
            config = ALSConfig.from_dict(json.loads((d / "config.json").read_text()))
            model = cls(
                config=config,
                item_ids=json.loads((d / "item_ids.json").read_text()),
                item_factors=np.load(d / "item_factors.npy"),
                user_ids=json.loads((d / "user_ids.json").read_text()),
                user_factors=np.load(d / "user_factors.npy"),
                version=manifest["version"],
                metadata=json.loads((d / "metadata.json").read_text()),
            )
        except ModelIncompatibleError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelIncompatibleError(f"{d}: cannot read model ({exc.__class__.__name__}: {exc})") from None
        if model.item_factors.shape != (len(model.item_ids), config.factors):
            raise ModelIncompatibleError(f"{d}: item factors {model.item_factors.shape} do not match ids/config")
        return model


def latest_model_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it holds a model, else its newest version subdirectory."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    if not p.is_dir():
        raise ModelIncompatibleError(f"model directory {p} does not exist (train one with `freshrec train`)")
    versions = model_versions(p)  # a save in progress is a hidden temp dir: never picked
    if not versions:
        raise ModelIncompatibleError(f"{p} holds no model version (no */manifest.json)")
    return versions[-1]


REJECTED_DIR = "rejected"
"""Versions the trainer's gate refused live in ``<model dir>/rejected/``: kept, never served."""


def model_versions(root: str | os.PathLike[str]) -> list[Path]:
    """The complete version directories directly under ``root``, oldest first."""
    p = Path(root)
    if not p.is_dir():
        return []
    return sorted(c for c in p.iterdir()
                  if c.is_dir() and not c.name.startswith(".") and (c / "manifest.json").is_file())


def prune_versions(root: str | os.PathLike[str], keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions under ``root`` and under its rejected/;
    returns the names removed. A worker keeps serving a removed version it has loaded."""
    if keep < 1:
        raise ConfigError(f"keep={keep} must be >= 1")
    removed = []
    for where in (Path(root), Path(root) / REJECTED_DIR):
        for old in model_versions(where)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
    return removed


def train_als(
    events: Iterable[Event] | Interactions,
    config: ALSConfig | None = None,
    *,
    device: str = "auto",
    progress: bool = False,
    warm_start: ALSModel | None = None,
) -> ALSModel:
    """Train iALS on events (or on ``Interactions`` already built) and return a new model version."""
    config = config or ALSConfig()
    t0 = time.perf_counter()
    data = events if isinstance(events, Interactions) else Interactions.from_events(events, config)
    t1 = time.perf_counter()
    dev = resolve_device(device)
    users, items = fit_factors(data, config, device=dev, progress=progress, warm_start=warm_start)
    t2 = time.perf_counter()
    log.info(
        "trained iALS on %d events (%d users x %d items, %d cells) in %.1fs on %s",
        data.n_events, len(data.user_ids), len(data.item_ids), len(data.weights), t2 - t1, dev,
    )
    return ALSModel(
        config=config,
        item_ids=data.item_ids,
        item_factors=items,
        user_ids=data.user_ids,
        user_factors=users,
        metadata={
            "n_events": data.n_events,
            "n_users": len(data.user_ids),
            "n_items": len(data.item_ids),
            "n_cells": len(data.weights),
            "event_time_range": list(data.time_range) if data.time_range else None,
            "device": dev,
            "read_seconds": round(t1 - t0, 3),
            "train_seconds": round(t2 - t1, 3),
            "trained_at": datetime.now(timezone.utc).isoformat(),
            "warm_start": warm_start.version if warm_start is not None else None,
        },
    )

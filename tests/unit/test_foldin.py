from __future__ import annotations

import numpy as np
import pytest
import torch

from model_core.als import Interactions, _csr, _solve_side, fit_factors
from model_core.config import ALSConfig
from model_core.foldin import FoldIn, _buckets, _solve_numpy, _solve_systems, solve_batched

CFG = ALSConfig(factors=8, regularization=0.1, alpha=3.0, iterations=5, cg_steps=0)


def reference_solve(v: np.ndarray, rows: list[int], w: list[float], cfg: ALSConfig) -> np.ndarray:
    """Float64 numpy solve of the iALS normal equations for one user."""
    v = v.astype(np.float64)
    k = v.shape[1]
    c = 1.0 + cfg.alpha * np.asarray(w)
    vh = v[rows]
    a = v.T @ v + cfg.regularization * np.eye(k) + vh.T @ ((c - 1.0)[:, None] * vh)
    return np.linalg.solve(a, vh.T @ c)


@pytest.fixture(scope="module")
def data() -> Interactions:
    rng = np.random.default_rng(1)
    n_users, n_items = 60, 40
    cells = {(int(u), int(i)): float(rng.integers(1, 6)) for u, i in rng.integers(0, [n_users, n_items], (400, 2))}
    rows = np.array([u for u, _ in cells], dtype=np.int64)
    cols = np.array([i for _, i in cells], dtype=np.int64)
    w = np.array(list(cells.values()), dtype=np.float32)
    return Interactions([f"u{i}" for i in range(n_users)], [f"i{i}" for i in range(n_items)], rows, cols, w)


@pytest.mark.parametrize("factors", [4, 32])  # H >= k: direct Cholesky; H < k: Woodbury
def test_fold_in_equals_full_als_user_solve(data: Interactions, factors: int) -> None:
    cfg = ALSConfig(factors=factors, regularization=0.1, alpha=3.0, iterations=5, cg_steps=0)
    users, items = fit_factors(data, cfg, device="cpu")
    # one more exact ALS user half-step with the final item factors: the "full solve"
    conf = 1.0 + cfg.alpha * torch.as_tensor(data.weights)
    csr = _csr(torch.as_tensor(data.rows), torch.as_tensor(data.cols), conf, (len(data.user_ids), len(data.item_ids)))
    full = _solve_side(torch.as_tensor(items), torch.as_tensor(users), csr, cfg.regularization, 0).numpy()

    fold = FoldIn(items, cfg, device="cpu")
    per_user = [np.flatnonzero(data.rows == u) for u in range(len(data.user_ids))]
    width = max(len(p) for p in per_user)
    idx = np.full((len(per_user), width), -1, dtype=np.int64)
    w = np.zeros((len(per_user), width), dtype=np.float32)
    for u, p in enumerate(per_user):
        idx[u, : len(p)] = data.cols[p]
        w[u, : len(p)] = data.weights[p]
    got = fold.users(idx, w)
    np.testing.assert_allclose(got, full, rtol=2e-3, atol=2e-4)
    for u in (0, 7, 31):
        ref = reference_solve(items, list(data.cols[per_user[u]]), list(data.weights[per_user[u]]), cfg)
        np.testing.assert_allclose(got[u], ref, rtol=2e-3, atol=2e-4)


def test_woodbury_and_direct_solves_agree() -> None:
    rng = np.random.default_rng(7)
    k = 48
    v = rng.normal(size=(400, k)).astype(np.float32) * rng.lognormal(size=(400, 1)).astype(np.float32)
    gram_reg = torch.as_tensor(v.T @ v + 0.05 * np.eye(k), dtype=torch.float32)
    f = torch.as_tensor(v[rng.integers(0, 400, size=(64, 9))])
    conf = torch.as_tensor(1.0 + 3.0 * rng.uniform(0, 5, size=(64, 9)), dtype=torch.float32)
    direct = solve_batched(gram_reg, f, conf)
    wood = solve_batched(gram_reg, f, conf, torch.linalg.inv(gram_reg.double()).float())
    np.testing.assert_allclose(wood.numpy(), direct.numpy(), rtol=1e-3, atol=1e-5 * float(direct.abs().max()))


@pytest.mark.parametrize("h", [9, 48, 60])  # Woodbury (H < k) and direct (H >= k)
def test_the_numpy_cpu_solve_agrees_with_torch(h: int) -> None:
    """``FoldIn.users`` on the CPU solves in numpy (no per-op torch cost); the GPU path keeps
    torch's ``solve_batched``. Both must give the same embeddings within float32 tolerance."""
    rng = np.random.default_rng(11)
    k = 48
    v = rng.normal(size=(400, k)).astype(np.float32) * rng.lognormal(size=(400, 1)).astype(np.float32)
    gram = v.T @ v + 0.05 * np.eye(k, dtype=np.float32)
    f = v[rng.integers(0, 400, size=(32, h))]
    conf = (1.0 + 3.0 * rng.uniform(0, 5, size=(32, h))).astype(np.float32)
    ref = solve_batched(torch.as_tensor(gram), torch.as_tensor(f), torch.as_tensor(conf),
                        torch.linalg.inv(torch.as_tensor(gram).double()).float()).numpy()
    got = _solve_numpy(gram, np.linalg.inv(gram.astype(np.float64)).astype(np.float32), f, conf)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5 * float(np.abs(ref).max()))
    singular = np.zeros((2, 3, 3), np.float32)  # least squares where a system has no unique solution
    assert np.isfinite(_solve_systems(singular, np.ones((2, 3), np.float32))).all()


def test_batch_equals_one_at_a_time_and_padding_is_ignored() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(30, 8)).astype(np.float32)
    fold = FoldIn(v, CFG, device="cpu")
    idx = np.array([[3, 4, 5, -1], [7, -1, -1, -1], [1, 2, 3, 4], [-1, 9, -1, 2]])
    w = np.array([[1, 2, 3, 9], [5, 9, 9, 9], [1, 1, 1, 1], [9, 2, 9, 4]], dtype=np.float32)
    batch = fold.users(idx, w)
    for b in range(4):
        keep = idx[b] >= 0
        one = fold.users(idx[b : b + 1, keep], w[b : b + 1, keep])
        np.testing.assert_allclose(batch[b], one[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batch[b], reference_solve(v, list(idx[b, keep]), list(w[b, keep]), CFG),
                                   rtol=1e-3, atol=1e-5)
    assert not fold.users(np.array([[-1, -1]]), np.zeros((1, 2), np.float32)).any()


def test_short_rows_join_a_wider_solve_only_while_that_is_cheaper() -> None:
    few = _buckets(np.array([0, 1, 3, 9, 17]), 64)  # a handful of users: one solve
    assert few.tolist() == [0, 32, 32, 32, 32]
    many = _buckets(np.array([1] * 5000 + [40] * 10), 64)  # padding 5000 rows to 64 costs more
    assert set(many[:5000].tolist()) == {1} and set(many[5000:].tolist()) == {64}
    # whatever the grouping, each row's embedding is its own exact solve
    rng = np.random.default_rng(3)
    v = rng.normal(size=(200, 16)).astype(np.float32)
    fold = FoldIn(v, CFG, device="cpu")
    lengths = rng.integers(1, 40, 50)
    idx = np.full((50, 40), -1)
    w = np.zeros((50, 40), np.float32)
    for b, n in enumerate(lengths):
        idx[b, :n] = rng.choice(200, n, replace=False)
        w[b, :n] = rng.uniform(0.5, 3.0, n)
    batch = fold.users(idx, w)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(batch[b], reference_solve(v, list(idx[b, :n]), list(w[b, :n]), CFG),
                                   rtol=1e-3, atol=1e-5)


def test_new_item_fold_in_and_gramian_stays_exact() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(20, 8)).astype(np.float32)
    u = rng.normal(size=(50, 8)).astype(np.float32)
    fold = FoldIn(v, CFG, device="cpu")
    got = fold.items(u[None, [1, 5, 9]], np.array([[1.0, 3.0, 5.0]], np.float32), u.T @ u)[0]
    np.testing.assert_allclose(got, reference_solve(u, [1, 5, 9], [1.0, 3.0, 5.0], CFG), rtol=1e-3, atol=1e-5)
    row = fold.add_item(got)
    assert row == 20 and fold.n_items == 21
    fold.replace_item(3, np.zeros(8, np.float32))
    full = fold.item_vectors().astype(np.float64)
    np.testing.assert_allclose(fold._gram.numpy(), full.T @ full, rtol=1e-4, atol=1e-4)
    for _ in range(40):  # growth past the initial capacity keeps earlier rows
        fold.add_item(np.ones(8, np.float32))
    np.testing.assert_array_equal(fold.item_vectors()[20], got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU/CUDA agreement needs a GPU")
def test_cpu_and_cuda_fold_in_agree() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(size=(500, 32)).astype(np.float32)
    cfg = ALSConfig(factors=32)
    idx = rng.integers(-1, 500, size=(256, 20))
    w = rng.uniform(0, 5, size=(256, 20)).astype(np.float32)
    cpu = FoldIn(v, cfg, device="cpu").users(idx, w)
    gpu = FoldIn(v, cfg, device="cuda").users(idx, w)
    np.testing.assert_allclose(cpu, gpu, rtol=1e-3, atol=1e-4)

from __future__ import annotations

import json

import numpy as np
import pytest

from model_core.als import ALSModel, Interactions, fit_factors, latest_model_dir, train_als
from model_core.config import ALSConfig
from model_core.errors import BadInputError, ModelIncompatibleError
from model_core.events import Event, EventType


def block_interactions(n_users: int = 300, n_items: int = 120, blocks: int = 4, per_user: int = 12,
                       seed: int = 0) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """Users touch items of their own block only; returns data, user block, item block."""
    rng = np.random.default_rng(seed)
    item_block = np.arange(n_items) % blocks
    user_block = rng.integers(0, blocks, n_users)
    rows, cols = [], []
    for u in range(n_users):
        pool = np.flatnonzero(item_block == user_block[u])
        for i in rng.choice(pool, per_user, replace=False):
            rows.append(u)
            cols.append(i)
    data = Interactions([f"u{i}" for i in range(n_users)], [f"i{i}" for i in range(n_items)],
                        np.array(rows), np.array(cols), np.ones(len(rows), np.float32))
    return data, user_block, item_block


def test_factors_recover_the_block_structure() -> None:
    data, user_block, item_block = block_interactions()
    users, items = fit_factors(data, ALSConfig(factors=8, iterations=10), device="cpu")
    scores = users @ items.T
    top = np.argsort(-scores, axis=1)[:, :10]
    assert (item_block[top] == user_block[:, None]).mean() > 0.95


def test_conjugate_gradient_is_close_to_the_exact_solution() -> None:
    data, _, _ = block_interactions()
    cg = fit_factors(data, ALSConfig(factors=8, iterations=10, cg_steps=3, alpha=2.0), device="cpu")
    exact = fit_factors(data, ALSConfig(factors=8, iterations=10, cg_steps=0, alpha=2.0), device="cpu")
    s_cg, s_ex = cg[0] @ cg[1].T, exact[0] @ exact[1].T
    assert np.corrcoef(s_cg.ravel(), s_ex.ravel())[0, 1] > 0.98


def test_quality_matches_implicit_on_the_same_data_and_settings() -> None:
    implicit = pytest.importorskip("implicit.cpu.als", reason="implicit not installed (pip install implicit)")
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(5)
    n_users, n_items, k = 800, 300, 16
    true_u, true_v = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    logits = true_u @ true_v.T + rng.gumbel(size=(n_users, n_items))
    top = np.argsort(-logits, axis=1)[:, :15]
    held = top[:, 0]
    rows = np.repeat(np.arange(n_users), 14)
    cols = top[:, 1:].ravel()
    data = Interactions([str(i) for i in range(n_users)], [str(i) for i in range(n_items)], rows, cols,
                        np.ones(len(rows), np.float32))
    cfg = ALSConfig(factors=k, iterations=15, regularization=0.05, alpha=2.0)
    users, items = fit_factors(data, cfg, device="cpu")
    conf = sp.csr_matrix((np.full(len(rows), 1 + cfg.alpha, np.float32), (rows, cols)), shape=(n_users, n_items))
    model = implicit.AlternatingLeastSquares(factors=k, regularization=cfg.regularization, alpha=1.0,
                                             iterations=cfg.iterations, random_state=0, num_threads=1)
    model.fit(conf, show_progress=False)

    def hit_rate(u: np.ndarray, v: np.ndarray) -> float:
        s = u @ v.T
        s[rows, cols] = -np.inf
        return float((np.argsort(-s, axis=1)[:, :20] == held[:, None]).any(1).mean())

    ours, theirs = hit_rate(users, items), hit_rate(model.user_factors, model.item_factors)
    assert ours >= theirs - 0.03, (ours, theirs)


def events_for(n: int = 40) -> list[Event]:
    return [Event(f"u{i % 7}", f"i{(i * 3) % 11}", EventType.VIEW if i % 4 else EventType.PURCHASE, 1000.0 + i)
            for i in range(n)]


def test_train_save_load_round_trip(tmp_path) -> None:
    model = train_als(events_for(), ALSConfig(factors=4, iterations=3), device="cpu")
    assert model.metadata["n_events"] == 40 and model.metadata["n_users"] == 7
    path = model.save(tmp_path)
    assert path.parent == tmp_path and (path / "manifest.json").is_file()
    back = ALSModel.load(tmp_path)
    assert back.version == model.version and back.item_ids == model.item_ids
    assert back.config == model.config
    np.testing.assert_array_equal(back.item_factors, model.item_factors)
    np.testing.assert_allclose(np.load(path / "item_gramian.npy"), model.item_gramian)


def test_latest_version_wins_and_versions_do_not_clash(tmp_path) -> None:
    a = train_als(events_for(), ALSConfig(factors=4, iterations=2), device="cpu")
    b = train_als(events_for(30), ALSConfig(factors=4, iterations=2), device="cpu")
    assert a.version < b.version
    a.save(tmp_path)
    b.save(tmp_path)
    assert latest_model_dir(tmp_path).name == b.version
    (tmp_path / f".{b.version}Z.tmp").mkdir()  # a save in progress by another process
    (tmp_path / f".{b.version}Z.tmp" / "manifest.json").write_text("{}")
    assert latest_model_dir(tmp_path).name == b.version
    with pytest.raises(ModelIncompatibleError, match="already exists"):
        b.save(tmp_path)


def test_corrupt_or_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelIncompatibleError, match="does not exist"):
        ALSModel.load(tmp_path / "nope")
    with pytest.raises(ModelIncompatibleError, match="no model version"):
        ALSModel.load(tmp_path)
    path = train_als(events_for(), ALSConfig(factors=4, iterations=2), device="cpu").save(tmp_path)
    factors = np.load(path / "item_factors.npy")
    np.save(path / "item_factors.npy", factors + 1)
    with pytest.raises(ModelIncompatibleError, match="checksum"):
        ALSModel.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIncompatibleError, match="format 99"):
        ALSModel.load(path)


def test_no_events_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        train_als([], device="cpu")

"""Tests for model_core.index: ItemIndex, IndexConfig, IndexSwapper."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_core.errors import BadInputError, ConfigError, ModelIncompatibleError
from model_core.index import IndexConfig, IndexSwapper, ItemIndex, _cpu, gpu_available
from model_core.index._cpu import NormBlockLayout

DIM = 16


def _ids(n: int, prefix: str = "i") -> list[str]:
    return [f"{prefix}{j}" for j in range(n)]


def _vectors(n: int, dim: int = DIM, seed: int = 0, spread: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    if spread:
        v *= rng.lognormal(0.0, spread, size=(n, 1)).astype(np.float32)
    return v


def _clustered(n: int, dim: int, n_clusters: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, n_clusters, n)
    return (centers[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def _shaped(n: int, dim: int, shape: str, seed: int = 0, spread: float = 0.0) -> np.ndarray:
    """Item vectors: "iso" (gaussian, lognormal norms), "axis" (a strong common direction
    plus noise, like iALS item factors) or "clustered"."""
    if shape == "clustered":
        return _clustered(n, dim, n_clusters=max(1, min(32, n // 8 + 1)), seed=seed)
    v = _vectors(n, dim, seed=seed, spread=spread)
    if shape == "axis":
        rng = np.random.default_rng(seed + 1)
        e = rng.standard_normal(dim)
        e /= np.linalg.norm(e)
        v = 0.3 * v - (3.0 * rng.lognormal(0.0, 1.0, (n, 1)) * e).astype(np.float32)
    return v.astype(np.float32)


def _queries(b: int, dim: int, shape: str, V: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Queries with lognormal norms; for "axis" items mostly orthogonal to the items' main direction."""
    Q = rng.standard_normal((b, dim)) * rng.lognormal(0, 1, (b, 1))
    if shape == "axis" and len(V) and dim > 1:
        e = np.linalg.eigh(V.astype(np.float64).T @ V)[1][:, -1]
        Q -= 0.95 * np.outer(Q @ e, e)
    return Q.astype(np.float32)


def _brute(ids: list[str], V: np.ndarray, Q: np.ndarray, k: int) -> list[list[str]]:
    S = Q @ V.T
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


def _assert_topk(
    got: list[list[str]], ids: list[str], V: np.ndarray, Q: np.ndarray, k: int
) -> None:
    """got[b] is an exact top-k of Q[b] . V (ties aside: compared by float64 scores per rank)."""
    want = _brute(ids, V, Q, k)
    pos = {i: j for j, i in enumerate(ids)}
    S = Q.astype(np.float64) @ V.astype(np.float64).T
    for b, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(w) and len(set(g)) == len(g)
        if g != w:
            gs = S[b, [pos[i] for i in g]]
            ws = np.sort(S[b, [pos[i] for i in w]])[::-1]
            np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-5)


def _hit_ids(res: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[i for i, _ in row] for row in res]


# --------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "annoy"},
        {"nlist": 0},
        {"nprobe": 0},
        {"hnsw_m": 1},
        {"ef_search": 0},
        {"pq_m": 0},
        {"nprobe": 2.5},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        IndexConfig(**kwargs)


def test_pq_m_must_divide_dim() -> None:
    with pytest.raises(ConfigError, match="pq_m=5 must divide"):
        ItemIndex(DIM, IndexConfig(kind="ivf-pq", pq_m=5))
    ItemIndex(DIM, IndexConfig(kind="ivf-pq", pq_m=4))


def test_bad_dim_and_device() -> None:
    with pytest.raises(ConfigError):
        ItemIndex(0)
    with pytest.raises(ConfigError):
        ItemIndex(DIM, device="tpu")
    with pytest.raises(ConfigError, match="hnsw"):
        if gpu_available():
            ItemIndex(DIM, IndexConfig(kind="hnsw"), device="cuda")
        else:
            raise ConfigError("hnsw: no GPU here either")


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_config_error() -> None:
    with pytest.raises(ConfigError, match="device='cuda'"):
        ItemIndex(DIM, device="cuda")
    assert ItemIndex(DIM, device="auto").device == "cpu"


# ---------------------------------------------------------------- exact search
@pytest.mark.parametrize("spread", [0.0, 1.0])
@pytest.mark.parametrize("n", [1, 7, 300, 5000])
def test_flat_matches_brute_force(n: int, spread: float) -> None:
    ids, V = _ids(n), _vectors(n, seed=n, spread=spread)
    Q = _vectors(33, seed=99)
    index = ItemIndex.build(ids, V)
    assert index.kind == "flat" and index.device == "cpu"
    assert len(index) == n and "i0" in index and "nope" not in index
    for k in (1, 10, n + 5):
        res = index.search(Q, k)
        _assert_topk(_hit_ids(res), ids, V, Q, k)
        exact = Q @ V.T
        for b, row in enumerate(res):
            assert len(row) == min(k, n)
            for item_id, score in row:
                assert score == pytest.approx(float(exact[b, int(item_id[1:])]), rel=1e-4, abs=1e-4)


def test_search_edge_cases() -> None:
    index = ItemIndex(DIM)
    assert index.search(_vectors(2), 5) == [[], []]  # empty index
    index.upsert(_ids(10), _vectors(10))
    assert index.search(_vectors(3), 0) == [[], [], []]
    assert index.search(np.zeros((0, DIM), np.float32), 5) == []
    with pytest.raises(BadInputError):
        index.search(_vectors(2, dim=DIM + 1), 5)
    with pytest.raises(BadInputError):
        index.search(_vectors(2)[0], 5)
    with pytest.raises(BadInputError):
        index.search(_vectors(2), -1)
    with pytest.raises(BadInputError):
        index.search(_vectors(2), 5, exclude=[[]])
    bad = _vectors(2)
    bad[0, 0] = np.nan
    with pytest.raises(BadInputError):
        index.search(bad, 5)


def test_bad_upserts() -> None:
    index = ItemIndex(DIM)
    with pytest.raises(BadInputError):
        index.upsert(["a", "a"], _vectors(2))
    with pytest.raises(BadInputError):
        index.upsert(["a"], _vectors(2))
    with pytest.raises(BadInputError):
        index.upsert("ab", _vectors(2))
    with pytest.raises(BadInputError):
        index.upsert([1, 2], _vectors(2))  # type: ignore[list-item]
    with pytest.raises(BadInputError):
        ItemIndex.build(["a"], np.zeros(DIM, np.float32))
    assert len(index) == 0 and index.version == 0


# ------------------------------------------------------------------ mutation
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_upsert_remove_available(kind: str) -> None:
    n = 2000
    ids, V = _ids(n), _clustered(n, DIM)
    cfg = IndexConfig(kind=kind, nlist=8, nprobe=8)  # nprobe = nlist: ivf exact
    index = ItemIndex.build(ids, V, cfg)
    assert index.kind == kind
    Q = _vectors(5, seed=3)
    v0 = index.version

    # upsert existing: a vector that wins every query
    q_star = Q.sum(axis=0)
    big = (q_star / np.linalg.norm(q_star) * 100).astype(np.float32)
    index.upsert(["i5"], big[None, :])
    assert index.version == v0 + 1 and len(index) == n
    np.testing.assert_array_equal(index.vector("i5"), big)
    assert index.search(Q.sum(axis=0, keepdims=True), 1)[0][0][0] == "i5"

    # upsert new
    index.upsert(["new"], (big * 2)[None, :])
    assert len(index) == n + 1 and "new" in index
    assert _hit_ids(index.search(q_star[None, :], 2))[0] == ["new", "i5"]

    # unavailable: never returned, vector kept, and restored without the vector
    index.set_available(["new"], False)
    assert index.version == v0 + 3 and "new" in index and not index.is_available("new")
    assert index.vector("new") is not None
    assert _hit_ids(index.search(q_star[None, :], 2))[0][0] == "i5"
    assert all("new" not in r for r in _hit_ids(index.search(Q, n + 1)))
    index.set_available(["new"], False)  # no change, no version bump
    assert index.version == v0 + 3
    index.set_available(["new", "unknown"], True)
    assert _hit_ids(index.search(q_star[None, :], 2))[0] == ["new", "i5"]

    # remove
    assert index.remove(["new", "i5", "unknown"]) == 2
    assert index.remove(["new"]) == 0
    assert len(index) == n - 1 and "i5" not in index and index.vector("i5") is None
    res = _hit_ids(index.search(Q, 10))
    assert all("i5" not in r and "new" not in r and len(r) == 10 for r in res)
    keep = [j for j in range(n) if j != 5]
    _assert_topk(res, [ids[j] for j in keep], V[keep], Q, 10)

    # re-add a removed id with its old vector: results as at the start
    index.upsert(["i5"], V[5:6])
    _assert_topk(_hit_ids(index.search(Q, 10)), ids, V, Q, 10)
    assert set(index.ids()) == set(ids)


def test_availability_after_fast_path_snapshot() -> None:
    n = 3000
    ids, V = _ids(n), _vectors(n, spread=1.0)
    index = ItemIndex.build(ids, V)
    Q = _vectors(20, seed=5)
    first = _hit_ids(index.search(Q, 10))  # builds the norm layout
    hidden = sorted({i for row in first for i in row[:3]})
    index.set_available(hidden, False)
    keep = [j for j in range(n) if ids[j] not in set(hidden)]
    _assert_topk(_hit_ids(index.search(Q, 10)), [ids[j] for j in keep], V[keep], Q, 10)
    assert index.n_available == n - len(hidden)
    index.set_available(hidden, True)
    assert _hit_ids(index.search(Q, 10)) == first
    # most of the catalogue hidden: the layout is rebuilt, still exact
    index.set_available(ids[: n - 5], False)
    res = index.search(Q, 10)
    assert all(len(r) == 5 for r in res)
    _assert_topk(_hit_ids(res), ids[n - 5:], V[n - 5:], Q, 5)


def test_hnsw_compacts_after_many_removals() -> None:
    n = 500
    ids, V = _ids(n), _vectors(n)
    index = ItemIndex.build(ids, V, IndexConfig(kind="hnsw", hnsw_m=16))
    for j in range(0, 200, 10):
        index.remove(ids[j:j + 10])
        index.upsert([f"x{j}"], V[j:j + 1])
    assert len(index) == n - 200 + 20
    assert index._n_dead <= 0.2 * len(index) + 10  # compacted on the way
    res = index.search(_vectors(4, seed=1), 20)
    assert all(len(r) == 20 for r in res)
    assert all(not (i.startswith("i") and int(i[1:]) < 200) for r in res for i, _ in r)


# ------------------------------------------------------------------ exclusion
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_exclude_never_shortens(kind: str) -> None:
    n = 2000
    ids, V = _ids(n), _clustered(n, DIM, seed=2)
    index = ItemIndex.build(ids, V, IndexConfig(kind=kind, nlist=8, nprobe=2))
    Q = _vectors(6, seed=4)
    base = _hit_ids(index.search(Q, 30))
    rng = np.random.default_rng(0)
    exclude = [set(base[b][: 5 * b]) | {"unknown"} | set(rng.choice(ids, 50).tolist()) for b in range(6)]
    exclude[2] = set(ids[:1990])  # only 10 items left for this query
    res = index.search(Q, 20, exclude=exclude)
    for b, row in enumerate(res):
        got = [i for i, _ in row]
        assert not set(got) & exclude[b]
        assert len(got) == (10 if b == 2 else 20)
        assert len(set(got)) == len(got)
    if kind == "flat":
        for b in range(6):
            keep = [j for j in range(n) if ids[j] not in exclude[b]]
            _assert_topk(_hit_ids(res)[b:b + 1], [ids[j] for j in keep], V[keep], Q[b:b + 1], 20)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_search_flat_is_search_flattened(kind: str) -> None:
    n = 2000
    ids, V = _ids(n), _clustered(n, DIM, seed=2)
    index = ItemIndex.build(ids, V, IndexConfig(kind=kind, nlist=8, nprobe=2))
    index.set_available(ids[10:20], False)
    Q = _vectors(6, seed=4)
    exclude = [set(ids[5 * b: 5 * b + 40]) | {"unknown"} for b in range(6)]
    exclude[2] = set(ids[:1990])  # fewer than k left for this query
    for ex in (None, exclude):
        res = index.search(Q, 20, exclude=ex)
        counts, hit_ids, scores = index.search_flat(Q, 20, exclude=ex)
        assert counts.tolist() == [len(r) for r in res]
        assert hit_ids == [i for r in res for i, _ in r]
        assert scores.dtype == np.float32
        assert scores.tolist() == [s for r in res for _, s in r]
        counts_s, slots, scores_s = index.search_slots(Q, 20, exclude=ex)
        assert counts_s.tolist() == counts.tolist() and scores_s.tolist() == scores.tolist()
        assert index.ids_of_slots(slots) == hit_ids
    assert index.removals == 0
    index.remove(["unknown"])
    assert index.removals == 0  # nothing removed: slots still name the same items
    index.remove(ids[:3])
    assert index.removals == 1
    counts, hit_ids, scores = index.search_flat(Q[:0], 20)
    assert counts.shape == (0,) and hit_ids == [] and scores.shape == (0,)
    counts, hit_ids, scores = index.search_flat(Q, 0)
    assert counts.tolist() == [0] * 6 and hit_ids == [] and scores.shape == (0,)


def test_overfetch_retry_widens_approximate_search() -> None:
    # ivf with nprobe=1 visits one list (~n/nlist items): asking for more than a
    # list holds, or excluding most of it, forces the retry path (more fetch, more probes)
    n = 4000
    ids, V = _ids(n), _clustered(n, DIM, n_clusters=40, seed=7)
    index = ItemIndex.build(ids, V, IndexConfig(kind="ivf", nlist=40, nprobe=1))
    assert index.kind == "ivf"
    Q = _vectors(8, seed=8)
    res = index.search(Q, 400)
    assert all(len(r) == 400 for r in res)
    first = _hit_ids(index.search(Q, 100))
    res = index.search(Q, 50, exclude=[set(r) for r in first])
    assert all(len(r) == 50 and not set(i for i, _ in r) & set(first[b]) for b, r in enumerate(res))
    # more than there is: everything available comes back
    index.set_available(ids[:3000], False)
    res = index.search(Q, 2000)
    assert all(len(r) == 1000 for r in res)


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["flat", "ivf-sq8", "hnsw"])
def test_save_load_roundtrip(tmp_path: Path, kind: str) -> None:
    n = 1500
    ids, V = _ids(n), _clustered(n, DIM, seed=3)
    index = ItemIndex.build(ids, V, IndexConfig(kind=kind, nlist=8))
    index.set_available(ids[:30], False)
    index.remove(ids[30:40])
    index.upsert(["extra"], V[:1] * 3)
    Q = _vectors(10, seed=11)
    path = tmp_path / "idx"
    index.save(path)
    loaded = ItemIndex.load(path, device="cpu")
    assert loaded.version == index.version and loaded.kind == index.kind
    assert loaded.config == index.config and loaded.dim == DIM
    assert loaded.ids() == index.ids() and len(loaded) == len(index)
    assert not loaded.is_available("i0") and "i35" not in loaded
    np.testing.assert_array_equal(loaded.vector("i0"), V[0])
    excl = [{"i50"}] * 10
    assert loaded.search(Q, 20, exclude=excl) == index.search(Q, 20, exclude=excl)
    loaded.set_available(["i0"], True)
    assert loaded.is_available("i0")
    # saving over an existing snapshot replaces it, leaving no temp dirs behind
    loaded.save(path)
    assert ItemIndex.load(path).version == loaded.version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_load_missing_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(ModelIncompatibleError, match="not a directory"):
        ItemIndex.load(tmp_path / "nothing")
    ItemIndex.build(_ids(50), _vectors(50)).save(tmp_path / "ok")

    def broken(name: str, mutate) -> Path:  # type: ignore[no-untyped-def]
        import shutil

        dst = tmp_path / name
        shutil.copytree(tmp_path / "ok", dst)
        mutate(dst)
        return dst

    cases = {
        "nometa": lambda d: (d / "meta.json").unlink(),
        "garbagemeta": lambda d: (d / "meta.json").write_text("{not json"),
        "noindex": lambda d: (d / "index.faiss").unlink(),
        "truncated": lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]),
        "vectors": lambda d: (d / "vectors.npy").write_bytes(b"x" * 10),
        "format": lambda d: (d / "meta.json").write_text(
            json.dumps({**json.loads((d / "meta.json").read_text()), "format": 99})
        ),
    }
    for name, mutate in cases.items():
        with pytest.raises(ModelIncompatibleError) as info:
            ItemIndex.load(broken(name, mutate))
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------- swapper
def test_swapper_swaps_while_searching() -> None:
    a = ItemIndex.build(_ids(500, "a"), _vectors(500, seed=1))
    b = ItemIndex.build(_ids(500, "b"), _vectors(500, seed=2))
    swapper = IndexSwapper(a)
    Q = _vectors(16, seed=3)
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for row in swapper.search(Q, 10):
                    assert len(row) == 10
                    prefixes = {i[0] for i, _ in row}
                    assert len(prefixes) == 1  # one batch, one index
                    seen.update(prefixes)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for j in range(40):
            old = swapper.swap(b if j % 2 == 0 else a)
            assert old is (a if j % 2 == 0 else b)
            # mutate the index not in use, as a rebuild would
            old.set_available([old.ids()[0]], j % 4 < 2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert seen <= {"a", "b"} and swapper.swaps == 40
    assert swapper.current is a
    with pytest.raises(ConfigError):
        swapper.swap(ItemIndex(DIM + 1))


def test_concurrent_mutation_and_search() -> None:
    n = 2000
    ids, V = _ids(n), _vectors(n, spread=1.0)
    index = ItemIndex.build(ids, V)
    Q = _vectors(32, seed=9)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for row in index.search(Q, 10):
                    assert len(row) == 10
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        rng = np.random.default_rng(0)
        for j in range(100):
            some = rng.choice(ids, 20, replace=False).tolist()
            index.set_available(some, j % 2 == 1)
            index.upsert([f"n{j}"], _vectors(1, seed=j))
            if j % 3 == 0:
                index.remove([f"n{j}"])
    finally:
        stop.set()
        t.join(timeout=30)
    assert not errors, errors


# ------------------------------------------------------------------- ANN kinds
@pytest.mark.parametrize(
    "cfg",
    [
        IndexConfig(kind="ivf", nprobe=8),
        IndexConfig(kind="ivf-sq8", nprobe=8),
        IndexConfig(kind="ivf-pq", nprobe=8, pq_m=8),
        IndexConfig(kind="hnsw"),
    ],
    ids=lambda c: c.kind,
)
def test_ann_recall_at_20(cfg: IndexConfig, record_property, caplog) -> None:  # type: ignore[no-untyped-def]
    n, dim = 12_000, 32
    ids, V = _ids(n), _clustered(n, dim, n_clusters=64, seed=5)
    Q = _clustered(200, dim, n_clusters=64, seed=6)
    index = ItemIndex.build(ids, V, cfg)
    assert index.kind == cfg.kind
    exact = _brute(ids, V, Q, 20)
    got = _hit_ids(index.search(Q, 20))
    recall = np.mean([len(set(g) & set(e)) / 20 for g, e in zip(got, exact)])
    record_property(f"recall@20[{cfg.kind}]", float(recall))
    print(f"recall@20 {cfg.kind}: {recall:.3f}")
    assert all(len(r) == 20 for r in got)
    assert recall > 0.5


def test_ivf_falls_back_to_flat_when_too_few_vectors(caplog) -> None:  # type: ignore[no-untyped-def]
    ids, V = _ids(100), _vectors(100)
    with caplog.at_level(logging.WARNING, logger="model_core.index"):
        index = ItemIndex.build(ids, V, IndexConfig(kind="ivf"))
    assert index.kind == "flat" and "exact flat" in caplog.text
    Q = _vectors(4, seed=1)
    _assert_topk(_hit_ids(index.search(Q, 10)), ids, V, Q, 10)
    # trained by the upsert that crosses the threshold
    more = _clustered(2000, DIM)
    index.upsert(_ids(2000, "m"), more)
    assert index.kind == "ivf"
    # nlist above n // 39 is clamped
    with caplog.at_level(logging.WARNING, logger="model_core.index"):
        big = ItemIndex.build(_ids(1000), _vectors(1000), IndexConfig(kind="ivf", nlist=500))
    assert big.kind == "ivf" and big._nlist == 1000 // 39 and "clamped" in caplog.text


# ---------------------------------------------------------------- fast path
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3000),
    dim=st.integers(1, 24),
    b=st.integers(1, 40) | st.just(1),
    k=st.integers(1, 60) | st.just(4000),
    spread=st.sampled_from([0.0, 0.5, 2.0]),
    shape=st.sampled_from(["iso", "axis", "clustered"]),
    masked=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
    dense=st.booleans(),
)
def test_norm_pruned_fast_path_equals_faiss_flat(
    n: int, dim: int, b: int, k: int, spread: float, shape: str, masked: float, seed: int, dense: bool
) -> None:
    with _dense_search(dense):
        _fast_path_equals_faiss_flat(n, dim, b, k, spread, shape, masked, seed)


@contextlib.contextmanager
def _dense_search(on: bool) -> Iterator[None]:
    """Every catalogue scored whole (``_search_dense``) or through the pruned blocks."""
    before = _cpu.DENSE_ROWS
    _cpu.DENSE_ROWS = 10**9 if on else 0
    try:
        yield
    finally:
        _cpu.DENSE_ROWS = before


def _fast_path_equals_faiss_flat(
    n: int, dim: int, b: int, k: int, spread: float, shape: str, masked: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    V = _shaped(n, dim, shape, seed=seed, spread=spread)
    Q = _queries(b, dim, shape, V, rng)
    layout = NormBlockLayout(np.arange(n), V, block_sizes=(64, 128, 512))
    hide = rng.random(n) < masked
    for s in np.flatnonzero(hide):
        layout.mask_slot(int(s))
    keep = np.flatnonzero(~hide)
    if len(keep) == 0:
        assert np.all(layout.search(Q, k)[1] == -1)
        return
    ref = faiss.IndexFlatIP(dim)
    ref.add(V[keep])
    D, ids_ = ref.search(Q, min(k, n))
    scores, slots, frac = layout.search(Q, k)
    assert 0.0 < frac <= 1.0
    kk = min(k, len(keep))
    assert np.all(slots[:, kk:] == -1)
    ref_slots = np.where(ids_ >= 0, keep[np.maximum(ids_, 0)], -1)[:, :kk]
    np.testing.assert_allclose(scores[:, :kk], D[:, :kk], rtol=1e-4, atol=1e-4)
    exact = Q @ V.T
    for row in range(b):
        got, want = slots[row, :kk], ref_slots[row]
        if not np.array_equal(got, want):  # ties aside: same scores, same multiset of scores
            np.testing.assert_allclose(
                np.sort(exact[row, got]), np.sort(exact[row, want]), rtol=1e-4, atol=1e-4
            )
            assert len(set(got.tolist())) == kk


def test_fast_path_prunes_skewed_norms() -> None:
    n = 20_000
    V = _vectors(n, 32, spread=1.0)
    layout = NormBlockLayout(np.arange(n), V)
    _, _, frac = layout.search(_vectors(64, 32, seed=1), 20)
    assert frac < 0.6


def test_fast_path_prunes_along_a_common_axis() -> None:
    """Items with a strong common direction and queries nearly orthogonal to it (iALS):
    the residual bound prunes where the norm bound cannot, and stays exact."""
    n, dim = 20_000, 32
    rng = np.random.default_rng(3)
    V = _shaped(n, dim, "axis", seed=3, spread=1.0)
    Q = _queries(64, dim, "axis", V, rng)
    layout = NormBlockLayout(np.arange(n), V)
    assert abs(abs(float(layout.axis @ layout.axis)) - 1.0) < 1e-9
    scores, _, frac = layout.search(Q, 20)
    assert frac < 0.5
    exact = Q.astype(np.float64) @ V.astype(np.float64).T
    kth = -np.sort(-exact, axis=1)[:, 19]
    # even a per-item norm bound (||q|| ||v|| >= k-th best) would score far more pairs
    norm_frac = float(np.mean(np.linalg.norm(Q, axis=1)[:, None] * np.linalg.norm(V, axis=1)[None, :] >= kth[:, None]))
    assert frac < 0.5 * norm_frac
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :20], rtol=1e-4, atol=1e-4)
    # with the axis switched off only the norm bound is left: slower, same result
    flat = NormBlockLayout(np.arange(n), V)
    flat.axis = np.zeros(dim)
    flat.block_xmin = flat.block_xmax = np.zeros(len(flat.starts))
    flat.block_resid = flat.block_max
    s2, _, frac2 = flat.search(Q, 20)
    assert frac2 > frac
    np.testing.assert_allclose(scores, s2, rtol=1e-5, atol=1e-5)


def test_layout_degenerate_rows() -> None:
    """All-zero and one-dimensional rows: the axis falls back to zeros or a unit vector; exact."""
    zero = NormBlockLayout(np.arange(5), np.zeros((5, 3), np.float32))
    assert not zero.axis.any()
    scores, slots, _ = zero.search(np.ones((2, 3), np.float32), 7)
    assert np.all(scores[:, :5] == 0) and np.all(slots[:, 5:] == -1)
    assert sorted(slots[0, :5].tolist()) == list(range(5))
    one = NormBlockLayout(np.arange(4), np.array([[1.0], [-2.0], [3.0], [0.5]], np.float32))
    _, slots, _ = one.search(np.array([[1.0], [-1.0]], np.float32), 2)
    assert slots.tolist() == [[2, 0], [1, 3]]



def _layout_brute(ref: dict[int, np.ndarray], Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the visible rows of a reference {slot: vector}: (slots [m], scores [B, m] float64)."""
    slots = np.array(sorted(ref), np.int64)
    if not len(slots):
        return slots, np.zeros((len(Q), 0))
    V = np.stack([ref[s] for s in slots.tolist()]).astype(np.float64)
    return slots, Q.astype(np.float64) @ V.T


def _check_layout(layout: NormBlockLayout, ref: dict[int, np.ndarray], Q: np.ndarray, k: int) -> None:
    scores, slots, _ = layout.search(Q, k)
    keep, S = _layout_brute(ref, Q, k)
    kk = min(k, len(keep))
    assert np.all(slots[:, kk:] == -1)
    for b in range(len(Q)):
        got = slots[b, :kk]
        assert len(set(got.tolist())) == kk and all(int(x) in ref for x in got)
        pos = np.searchsorted(keep, got)
        want = np.sort(S[b])[::-1][:kk]
        np.testing.assert_allclose(S[b, pos], want, rtol=1e-4, atol=1e-4)  # exact top-k, ties aside
        # float32 scores: a dot product's rounding error scales with ||q|| * max ||v||
        scale = float(np.linalg.norm(Q[b])) * max((float(np.linalg.norm(v)) for v in ref.values()), default=0.0)
        np.testing.assert_allclose(scores[b, :kk], S[b, pos], rtol=1e-4, atol=1e-4 + 1e-6 * scale)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 600),
    dim=st.integers(1, 12),
    k=st.integers(1, 40) | st.just(1000),
    spread=st.sampled_from([0.0, 1.0, 3.0]),
    shape=st.sampled_from(["iso", "axis", "clustered"]),
    seed=st.integers(0, 2**16),
    dense=st.booleans(),
)
def test_layout_tail_appends_stay_exact(n: int, dim: int, k: int, spread: float, shape: str, seed: int,
                                        dense: bool) -> None:
    """Appends (new and replaced slots), masks, unmasks and drops on a snapshot equal brute force,
    whether the catalogue is scored whole or through the pruned blocks."""
    with _dense_search(dense):
        _tail_appends_stay_exact(n, dim, k, spread, shape, seed)


def _tail_appends_stay_exact(n: int, dim: int, k: int, spread: float, shape: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    V = _shaped(n, dim, shape, seed=seed, spread=spread)
    layout = NormBlockLayout(np.arange(n), V, block_sizes=(16, 32, 64))
    vec: dict[int, np.ndarray] = {s: V[s] for s in range(n)}  # slot -> current vector
    hidden: set[int] = set()
    next_slot = n
    for step in range(120):
        op = rng.integers(0, 6)
        if op == 0 or not vec:  # new slot(s), possibly far beyond row_of_slot
            a = int(rng.integers(1, 4))
            new = np.arange(next_slot, next_slot + a) + int(rng.integers(0, 3)) * 50
            next_slot = int(new[-1]) + 1
            nv = _vectors(a, dim, seed=seed + step + 1, spread=spread) * 2
            layout.append(new, nv)
            vec.update({int(s): v for s, v in zip(new, nv)})
        elif op == 1:  # replace existing (hidden ones come back visible, like a re-add)
            s = int(rng.choice(sorted(vec)))
            v = _vectors(1, dim, seed=seed + 7 * step, spread=spread)[0] * float(rng.choice([0.1, 1, 10]))
            layout.append(np.array([s]), v[None, :])
            vec[s] = v
            hidden.discard(s)
        elif op == 2:
            s = int(rng.choice(sorted(vec)))
            assert layout.mask_slot(s)
            hidden.add(s)
        elif op == 3 and hidden:
            s = int(rng.choice(sorted(hidden)))
            assert layout.unmask_slot(s)
            hidden.discard(s)
        elif op == 4:
            s = int(rng.choice(sorted(vec)))
            layout.drop_slots(np.array([s, 10**6]))
            del vec[s]
            hidden.discard(s)
            assert not layout.mask_slot(s) and not layout.unmask_slot(s)
        if step % 10 == 0 or op == 5:
            Q = _queries(int(rng.choice([1, 1, 4])), dim, shape, V, rng)
            _check_layout(layout, {s: v for s, v in vec.items() if s not in hidden}, Q, k)
    assert layout.n_masked == int(layout.masked.sum() + layout.tail_masked[: layout.n_tail].sum())
    assert len(layout) == n + layout.n_tail


def _reference_search(
    ref: dict[str, np.ndarray], avail: set[str], Q: np.ndarray, k: int
) -> tuple[list[str], np.ndarray]:
    ids = [i for i in ref if i in avail]
    V = np.stack([ref[i] for i in ids]) if ids else np.zeros((0, Q.shape[1]), np.float32)
    return ids, V


@pytest.mark.parametrize("tail_min", [2048, 40])
def test_interleaved_upserts_and_searches_stay_exact(tail_min: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Many small upserts (new and replaced), removals and availability flips between
    searches: every result equals numpy brute force, across tail-triggered rebuilds."""
    from model_core.index import _cpu

    monkeypatch.setattr(_cpu, "TAIL_MIN_ROWS", tail_min)
    monkeypatch.setattr(_cpu, "TAIL_RATIO", 0.05)
    n = 1500
    rng = np.random.default_rng(tail_min)
    ids, V = _ids(n), _vectors(n, spread=1.0)
    index = ItemIndex.build(ids, V)
    ref = {i: V[j] for j, i in enumerate(ids)}
    avail = set(ids)
    index.search(V[:1], 5)  # snapshot the layout
    first_layout = index._layout
    n_new, rebuilds, last = 0, 0, first_layout
    steps = 2300 if tail_min == 2048 else 400
    for step in range(steps):
        r = rng.random()
        if r < 0.45:  # a new item
            item = f"new{n_new}"
            n_new += 1
            v = _vectors(1, seed=10_000 + step, spread=1.0) * float(rng.choice([0.5, 1.0, 4.0]))
            index.upsert([item], v)
            ref[item] = v[0]
            avail.add(item)
        elif r < 0.85:  # refine existing ones (1-3, some unavailable)
            items = list(dict.fromkeys(rng.choice(list(ref), int(rng.integers(1, 4))).tolist()))
            vs = _vectors(len(items), seed=20_000 + step, spread=1.0) * float(rng.choice([0.2, 1.0, 5.0]))
            index.upsert(items, vs)
            ref.update(zip(items, vs))
        elif r < 0.9:
            item = str(rng.choice(list(ref)))
            assert index.remove([item]) == 1
            del ref[item]
            avail.discard(item)
        else:
            items = rng.choice(list(ref), 3).tolist()
            flag = bool(rng.random() < 0.5)
            index.set_available(items, flag)
            avail = avail | set(items) if flag else avail - set(items)
        if index._layout is not last and index._layout is not None:
            rebuilds += 1
        if step % (25 if tail_min == 2048 else 3) == 0 or step == steps - 1:
            B = int(rng.choice([1, 1, 7]))
            Q = _vectors(B, seed=30_000 + step)
            k = int(rng.choice([1, 10, 25]))
            excl = None
            if rng.random() < 0.3:
                excl = [set(rng.choice(list(ref), 5).tolist()) for _ in range(B)]
            res = index.search(Q, k, exclude=excl)
            last = index._layout
            for b in range(B):
                keep = [i for i in ref if i in avail and not (excl and i in excl[b])]
                Vk = np.stack([ref[i] for i in keep])
                _assert_topk(_hit_ids(res[b:b + 1]), keep, Vk, Q[b:b + 1], k)
                for item, score in res[b]:
                    assert abs(score - float(Q[b] @ ref[item])) <= 1e-4 * max(1.0, abs(score))
    assert len(index) == len(ref) and index.n_available == len(avail)
    assert last is not first_layout  # the tail crossed its threshold: re-sorted lazily
    assert last is not None and last.n_tail <= max(tail_min, 0.05 * last.n_sorted) + 3
    # the lazily kept faiss flat index, once read, holds exactly the live vectors
    fi = index._faiss
    assert not index._faiss_stale and fi.ntotal == len(ref)
    for item in list(ref)[:: max(1, len(ref) // 50)]:
        np.testing.assert_array_equal(fi.reconstruct(index._slot_of[item]), ref[item])


def _same_results(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> None:
    """Same ids in the same order, scores equal up to float32 rounding (a tail row and a
    sorted row are scored by differently blocked sgemms)."""
    assert _hit_ids(a) == _hit_ids(b)
    for ra, rb in zip(a, b):
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-6, atol=1e-6)


def test_flat_upsert_defers_faiss_and_save_roundtrips(tmp_path: Path) -> None:
    n = 800
    ids, V = _ids(n), _vectors(n, spread=0.5)
    index = ItemIndex.build(ids, V)
    Q = _vectors(9, seed=2)
    index.search(Q, 5)
    ntotal_before = index._faiss_index.ntotal
    for j in range(60):
        index.upsert([f"x{j}" if j % 2 else ids[j]], _vectors(1, seed=100 + j) * 3)
    index.remove(ids[100:110])
    index.set_available(ids[200:205], False)
    index.upsert([ids[201]], V[201:202] * 7)  # unavailable and replaced: stays unavailable
    assert index._faiss_stale and index._faiss_index.ntotal == ntotal_before  # untouched: no O(n) work
    assert not index.is_available(ids[201])
    expected = index.search(Q, 20, exclude=[{ids[0]}] * 9)
    path = tmp_path / "idx"
    index.save(path)
    assert not index._faiss_stale and index._faiss_index.ntotal == len(index)
    loaded = ItemIndex.load(path, device="cpu")
    assert loaded.ids() == index.ids() and loaded.version == index.version
    _same_results(loaded.search(Q, 20, exclude=[{ids[0]}] * 9), expected)
    assert loaded._faiss.ntotal == len(index)
    # faiss search on the materialised index agrees with the fast path (all available here)
    loaded.set_available(ids[200:205], True)
    index.set_available(ids[200:205], True)
    D, _ = loaded._faiss.search(Q, 20)
    fast = index.search(Q, 20)
    for b in range(9):
        np.testing.assert_allclose(D[b], [s for _, s in fast[b]], rtol=1e-5, atol=1e-5)
    # more upserts after the save: stale again, and a second save still round-trips
    index.upsert(["late"], Q[:1] * 10)
    assert index._faiss_stale
    index.save(path)
    again = ItemIndex.load(path, device="cpu")
    assert again.search(Q[:1], 1)[0][0][0] == "late"
    _same_results(again.search(Q, 20), index.search(Q, 20))


def test_ivf_trains_after_lazy_flat_upserts() -> None:
    """An ivf index still flat takes cheap upserts, then trains from the vector store."""
    cfg = IndexConfig(kind="ivf", nlist=4, nprobe=4)  # nprobe = nlist: exact
    V = _clustered(400, DIM, seed=5)
    index = ItemIndex.build(_ids(100), V[:100], cfg)
    assert index.kind == "flat"
    Q = _vectors(4, seed=6)
    index.search(Q, 3)
    for j in range(100, 400):
        index.upsert([f"i{j}"], V[j:j + 1])
    assert index.kind == "ivf" and not index._faiss_stale and index._faiss.ntotal == 400
    _assert_topk(_hit_ids(index.search(Q, 10)), _ids(400), V, Q, 10)


# --------------------------------------------------------------------- GPU
_GPU_SKIP = "needs a faiss GPU build and a visible GPU (faiss.get_num_gpus() > 0)"


@pytest.mark.skipif(not gpu_available(), reason=_GPU_SKIP)
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_matches_cpu(kind: str) -> None:
    n = 5000
    ids, V = _ids(n), _clustered(n, DIM, seed=12)
    cfg = IndexConfig(kind=kind, nlist=16, nprobe=16)
    cpu = ItemIndex.build(ids, V, cfg, device="cpu")
    gpu = ItemIndex.build(ids, V, cfg, device="cuda")
    assert gpu.device == "cuda"
    Q = _vectors(64, seed=13)
    for index in (cpu, gpu):
        index.set_available(ids[:50], False)
        index.remove(ids[50:60])
        index.upsert(["z"], V[:1] * 5)
    excl = [set(ids[100 + j: 110 + j]) for j in range(64)]
    rc, rg = cpu.search(Q, 20, exclude=excl), gpu.search(Q, 20, exclude=excl)
    for a, b in zip(rc, rg):
        assert len(a) == len(b) == 20
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-3, atol=1e-3)
        assert len({i for i, _ in a} & {i for i, _ in b}) >= 19  # ties at the boundary aside


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 400), b=st.integers(1, 9), k=st.integers(1, 30), seed=st.integers(0, 10_000),
    n_excl=st.integers(0, 60), n_tail=st.integers(0, 40),
)
def test_layout_exclusions_inside_the_scan_equal_brute_force(
    n: int, b: int, k: int, seed: int, n_excl: int, n_tail: int
) -> None:
    rng = np.random.default_rng(seed)
    dim = 8
    V = (rng.normal(size=(n + n_tail, dim)) * rng.lognormal(size=(n + n_tail, 1))).astype(np.float32)
    Q = rng.normal(size=(b, dim)).astype(np.float32)
    layout = NormBlockLayout(np.arange(n), V[:n], block_sizes=(16, 32, 64))
    if n_tail:
        layout.append(np.arange(n, n + n_tail), V[n:])
    qi = rng.integers(0, b, n_excl)
    slots = rng.integers(-2, n + n_tail + 3, n_excl)  # includes unknown slots, ignored
    scores, got, _ = layout.search(Q, k, (qi, slots))
    brute = (Q @ V.T).astype(np.float64)
    for q, s in zip(qi, slots):
        if 0 <= s < n + n_tail:
            brute[q, s] = -np.inf
    for i in range(b):
        live = np.flatnonzero(np.isfinite(brute[i]))
        want = live[np.argsort(-brute[i, live], kind="stable")][: min(k, len(live))]
        have = got[i][got[i] >= 0]
        assert len(have) == len(want)
        assert not set(have) & {s for q, s in zip(qi, slots) if q == i}
        np.testing.assert_allclose(np.sort(brute[i, have])[::-1], brute[i, want], rtol=1e-4, atol=1e-4)

"""Index configuration, device resolution and faiss index construction.

Nothing here touches a GPU at import time: the device is resolved once, in
:class:`~model_core.index.ItemIndex`'s constructor, through :func:`resolve_device`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

import faiss

from model_core.errors import ConfigError

__all__ = [
    "IndexConfig",
    "IndexKind",
    "resolve_device",
    "gpu_available",
    "effective_nlist",
    "plan_kind",
    "new_faiss_index",
    "MIN_POINTS_PER_CENTROID",
    "PQ_MIN_TRAIN",
]

logger = logging.getLogger("model_core.index")

IndexKind = Literal["flat", "ivf", "hnsw", "ivf-sq8", "ivf-pq"]
_KINDS: tuple[str, ...] = get_args(IndexKind)
_IVF_KINDS = frozenset({"ivf", "ivf-sq8", "ivf-pq"})

#: faiss's k-means warns below 39 training points per centroid; we never ask for fewer.
MIN_POINTS_PER_CENTROID = 39
#: fewest centroids for which an inverted file is worth it; below, fall back to flat.
MIN_NLIST = 4
#: IVF-PQ trains 256 centroids per sub-quantizer (8 bits): 256 * 39 points, as above.
PQ_MIN_TRAIN = 256 * MIN_POINTS_PER_CENTROID


@dataclass(frozen=True)
class IndexConfig:
    """How item vectors are indexed for inner-product search.

    kind:
        ``"flat"`` exact inner product (default, and the only kind with the
        exact norm-pruned CPU fast path); ``"ivf"`` inverted file with full
        vectors; ``"ivf-sq8"`` inverted file with 8-bit scalar quantisation;
        ``"ivf-pq"`` inverted file with product quantisation (``pq_m``
        sub-quantizers of 8 bits); ``"hnsw"`` graph (CPU only).
    nlist:
        ivf*: number of inverted lists; ``None`` = ``4 * sqrt(n)`` at training
        time. Always clamped to ``n // 39`` (faiss's minimum of training points
        per centroid); when that leaves fewer than 4 lists the index stays flat
        (exact) and says so in the log.
    nprobe:
        ivf*: lists visited per query (clamped to ``nlist``).
    hnsw_m, ef_search:
        hnsw: graph degree and search beam width (raised to the fetch size).
    pq_m:
        ivf-pq: number of sub-quantizers; must divide the dimension.
    refine:
        ivf-sq8 / ivf-pq: fetch ``refine * k`` candidates and re-score them
        exactly from the stored float32 vectors (scores returned are exact);
        ``1`` = off, raw quantized scores.
    """

    kind: IndexKind = "flat"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    pq_m: int = 16
    refine: int = 4

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"index kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ConfigError(f"nlist={self.nlist!r} must be a positive integer or None")
        for name, low in (("nprobe", 1), ("hnsw_m", 2), ("ef_search", 1), ("pq_m", 1), ("refine", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name}={value!r} must be an integer >= {low}")

    @property
    def is_quantized(self) -> bool:
        return self.kind in ("ivf-sq8", "ivf-pq")

    @property
    def is_ivf(self) -> bool:
        return self.kind in _IVF_KINDS

    def check_dim(self, dim: int) -> None:
        """Raise :class:`ConfigError` if this config cannot index ``dim``-dimensional vectors."""
        if self.kind == "ivf-pq" and dim % self.pq_m != 0:
            raise ConfigError(
                f"ivf-pq: pq_m={self.pq_m} must divide the vector dimension {dim} "
                f"(e.g. pq_m={_largest_divisor_at_most(dim, self.pq_m)})"
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "pq_m": self.pq_m,
            "refine": self.refine,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "IndexConfig":
        known = {"kind", "nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "refine"}
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


def _largest_divisor_at_most(n: int, m: int) -> int:
    for c in range(min(n, m), 0, -1):
        if n % c == 0:
            return c
    return 1


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "GpuIndexFlatIP"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:  # pragma: no cover - defensive: odd builds
        return False


def resolve_device(device: str, kind: str) -> str:
    """Resolve ``"auto" | "cpu" | "cuda"`` to ``"cpu"`` or ``"cuda"``.

    ``"auto"`` picks ``"cuda"`` when faiss has GPU support, a GPU is visible and
    the kind runs on GPU (every kind but hnsw); ``"cuda"`` without those is a
    :class:`ConfigError`.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={device!r} must be 'auto', 'cpu' or 'cuda'")
    if device == "cpu":
        return "cpu"
    has_gpu = gpu_available()
    if device == "auto":
        return "cuda" if has_gpu and kind != "hnsw" else "cpu"
    if not hasattr(faiss, "StandardGpuResources"):
        raise ConfigError(
            "device='cuda' but this faiss build has no GPU support "
            "(install faiss-gpu instead of faiss-cpu, or use device='cpu')"
        )
    if not has_gpu:
        raise ConfigError("device='cuda' but faiss sees no GPU (faiss.get_num_gpus() == 0)")
    if kind == "hnsw":
        raise ConfigError("index kind 'hnsw' has no GPU implementation; use device='cpu'")
    return "cuda"


def effective_nlist(config: IndexConfig, n: int) -> int:
    """Number of inverted lists for ``n`` training vectors (0 = too few: stay flat)."""
    wanted = config.nlist if config.nlist is not None else max(1, int(round(4 * math.sqrt(n))))
    return min(wanted, n // MIN_POINTS_PER_CENTROID)


def plan_kind(config: IndexConfig, n: int) -> tuple[str, int]:
    """The kind actually built for ``n`` vectors and its nlist.

    ivf kinds need enough vectors to train: ``n >= 39 * 4`` (and ``n >= 256 * 39``
    for ivf-pq). With fewer, the index is flat, i.e. exact: a small catalogue
    searches fast exactly anyway. A requested ``nlist`` above ``n // 39`` is clamped.
    """
    if not config.is_ivf:
        return config.kind, 0
    nlist = effective_nlist(config, n)
    if nlist < MIN_NLIST or (config.kind == "ivf-pq" and n < PQ_MIN_TRAIN):
        return "flat", 0
    if config.nlist is not None and nlist < config.nlist:
        logger.warning(
            "index: nlist=%d clamped to %d for %d training vectors (%d per list minimum)",
            config.nlist, nlist, n, MIN_POINTS_PER_CENTROID,
        )
    return config.kind, nlist


def new_faiss_index(config: IndexConfig, dim: int, kind: str, nlist: int) -> faiss.Index:
    """An empty CPU faiss index for ``kind`` whose labels are caller-chosen int64 ids.

    flat and hnsw are wrapped in ``IndexIDMap2``; ivf kinds keep ids natively.
    ivf kinds are returned untrained.
    """
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
        hnsw.hnsw.efConstruction = max(40, 2 * config.hnsw_m)
        hnsw.hnsw.efSearch = config.ef_search
        return faiss.IndexIDMap2(hnsw)
    spec = {"ivf": "Flat", "ivf-sq8": "SQ8", "ivf-pq": f"PQ{config.pq_m}"}[kind]
    index = faiss.index_factory(dim, f"IVF{nlist},{spec}", ip)
    faiss.extract_index_ivf(index).nprobe = min(config.nprobe, nlist)
    return index

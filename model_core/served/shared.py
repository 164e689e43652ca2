"""The served model's item side as a replicated log: deltas every worker applies, and snapshots.

A worker learns a batch in two halves. The worker that owns the batch's users
derives what the batch teaches the item side (``ServedModel.plan_step``
puts it in ``Step.delta``): an ``ItemDelta``, keyed by item id and by a keyed
hash of the user id (``user_key``), never by a process's vocabulary rows or a
raw user id. Every replica of the item side, the owner's included, then applies
the same deltas in the same order (``ServedModel.learn``), so replicas that
applied the same prefix of the log hold the same state: the streams layer puts
the deltas on a one-partition topic that every worker reads.

What a delta carries:

- ``items``: (item, event weight, event time, category) per event, in order
  (trending, popularity, freshness, categories);
- ``sequences``: per user, (user key, earlier items with times, new events), from
  which sequential rules, co-visitation and the user's session-kNN record follow;
- ``new_items``: (item, user key, weight) and one vector per row of ``new_vectors``,
  the contributions to items with no trained vector (folded in by every replica);
- ``examples``: the ranker's training lists (features by position, no rows);
- ``forget``: user keys whose session-kNN record and new-item contributions go
  (an erase).

``encode_delta`` / ``decode_delta`` are the wire form (zlib-compressed JSON, the
arrays as little-endian bytes); ``as_decoded`` is what ``decode_delta`` would give, for the
worker that made the delta and reads its own record back; ``snapshot`` / ``restore`` save and load a whole
item side with the log position it covers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from model_core.errors import BadInputError, ModelIncompatibleError
from model_core.events import MAX_WEIGHT
from model_core.served.signals import FEATURES, Examples, Sequence_, StreamSignals

if TYPE_CHECKING:
    from model_core.served.model import ServedModel

__all__ = ["ItemDelta", "as_decoded", "decode_delta", "encode_delta", "encode_parts", "pack", "restore", "snapshot",
           "snapshot_arrays", "user_key"]

_FORMAT = 1


def user_key(user_id: str) -> str:
    """The pseudonym the item side keeps a user's contributions under (never the raw id)."""
    return hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=12,
                           person=b"freshrec-user").hexdigest()


@dataclass
class ItemDelta:
    """What one batch teaches the item side (see the module docstring)."""

    items: list[tuple[str, float, float, str | None]] = field(default_factory=list)
    sequences: list[Sequence_] = field(default_factory=list)
    new_items: list[tuple[str, str, float]] = field(default_factory=list)
    new_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    examples: Examples | None = None
    forget: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items or self.sequences or self.new_items or self.forget
                    or (self.examples is not None and self.examples.lists))

    def split(self) -> list[ItemDelta]:
        """Two deltas that applied in order do what this one does (for a record too large)."""
        h = len(self.items) // 2
        s = len(self.sequences) // 2
        n = len(self.new_items) // 2
        first = ItemDelta(self.items[:h], self.sequences[:s], self.new_items[:n], self.new_vectors[:n],
                          self.examples, self.forget)
        second = ItemDelta(self.items[h:], self.sequences[s:], self.new_items[n:], self.new_vectors[n:])
        return [first, second]


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def _arr(s: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def encode_delta(d: ItemDelta) -> bytes:
    """The wire form of a delta (zlib-compressed JSON; feature rows as float32)."""
    doc: dict[str, Any] = {"v": _FORMAT, "items": d.items, "seq": d.sequences, "new": d.new_items,
                           "forget": d.forget}
    if d.new_items:
        doc["vec"] = [int(d.new_vectors.shape[1]), _b64(d.new_vectors, "<f4")]
    ex = d.examples
    if ex is not None and ex.lists:
        doc["ex"] = [ex.lists, int(ex.x.shape[1]), _b64(ex.list_of, "<i4"), _b64(ex.positive, "u1"),
                     _b64(ex.x, "<f4")]
    return zlib.compress(orjson.dumps(doc), 1)


def as_decoded(d: ItemDelta) -> ItemDelta:
    """``decode_delta(encode_delta(d))`` without the wire, for the worker that made ``d`` and
    reads its record back: the ranker's features rounded to float32 as the wire carries them,
    and the arrays in the types ``decode_delta`` gives (``test_shared.py`` checks that a replica
    learning this one and a replica learning the record hold the same item side)."""
    ex = d.examples
    if ex is not None:
        ex = Examples(ex.list_of.astype(np.int64), ex.x.astype(np.float32).astype(np.float64),
                      ex.positive.astype(bool), ex.lists) if ex.lists else None
    vectors = np.asarray(d.new_vectors, np.float32).reshape(len(d.new_items), -1) if d.new_items \
        else np.zeros((0, 0), np.float32)
    return ItemDelta(d.items, d.sequences, d.new_items, vectors, ex, d.forget)


def decode_delta(data: bytes) -> ItemDelta:
    """A delta from ``encode_delta``'s bytes; BadInputError for anything else."""
    try:
        doc = orjson.loads(zlib.decompress(data))
        if doc.get("v") != _FORMAT:
            raise BadInputError(f"item delta format {doc.get('v')!r}, expected {_FORMAT}")
        items = [(str(i), float(w), float(t), None if c is None else str(c)) for i, w, t, c in doc["items"]]
        seqs: list[Sequence_] = [
            (str(k), [(str(i), float(t)) for i, t in prev], [(str(i), float(w), float(t)) for i, w, t in new])
            for k, prev, new in doc["seq"]]
        new_items = [(str(i), str(k), float(w)) for i, k, w in doc["new"]]
        vectors = np.zeros((0, 0), np.float32)
        if new_items:
            k, raw = doc["vec"]
            vectors = _arr(raw, "<f4").astype(np.float32).reshape(len(new_items), int(k))
        examples = None
        if "ex" in doc:
            lists, f, seg, pos, x = doc["ex"]
            list_of = _arr(seg, "<i4").astype(np.int64)
            examples = Examples(list_of, _arr(x, "<f4").astype(np.float64).reshape(len(list_of), int(f)),
                                _arr(pos, "u1").astype(bool), int(lists))
        delta = ItemDelta(items, seqs, new_items, vectors, examples, [str(k) for k in doc["forget"]])
    except BadInputError:
        raise
    except Exception as exc:  # zlib, JSON, shapes: a record that is not a delta
        raise BadInputError(f"not an item delta: {exc!r}") from exc
    _check(delta)
    return delta


def _check(d: ItemDelta) -> None:
    """BadInputError unless every number is one a validated event could have produced: a record
    written to the deltas topic by anything else must not poison the item side."""
    weights = [w for _, w, _, _ in d.items] + [w for _, _, new in d.sequences for _, w, _ in new]
    times = [t for _, _, t, _ in d.items] + [t for _, prev, _ in d.sequences for _, t in prev]
    times += [t for _, _, new in d.sequences for _, _, t in new]
    if not all(math.isfinite(w) and 0 <= w <= MAX_WEIGHT for w in weights):
        raise BadInputError(f"item delta: an event weight that is not a number in [0, {MAX_WEIGHT:g}]")
    if not all(math.isfinite(w) and w >= 0 for _, _, w in d.new_items):  # summed history weights (fold-in clamps)
        raise BadInputError("item delta: a new item's weight that is not a finite number >= 0")
    if not all(math.isfinite(t) for t in times):
        raise BadInputError("item delta: a time that is not finite")
    if not np.isfinite(d.new_vectors).all():
        raise BadInputError("item delta: a new item's vector that is not finite")
    ex = d.examples
    if ex is not None:
        if ex.lists < 1 or len(ex.x) != len(ex.list_of) or len(ex.positive) != len(ex.list_of):
            raise BadInputError("item delta: ranker examples of inconsistent sizes")
        if len(ex.list_of) and (ex.list_of.min() < 0 or ex.list_of.max() >= ex.lists or np.any(np.diff(ex.list_of) < 0)):
            raise BadInputError("item delta: ranker examples not in list order")
        if ex.x.ndim != 2 or ex.x.shape[1] != len(FEATURES) or not np.isfinite(ex.x).all():
            raise BadInputError("item delta: ranker features of the wrong width or not finite")


# -- snapshots --------------------------------------------------------------------------------------

def _edges(graph: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, w = [], [], []
    for r, e in enumerate(graph.edges):
        if e:
            a.extend([r] * len(e))
            b.extend(e.keys())
            w.extend(e.values())
    return np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(w, np.float64)


def _set_edges(graph: Any, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
    for x, y, v in zip(a.tolist(), b.tolist(), w.tolist()):
        graph.edges[x][y] = v
    graph.dirty[: len(graph.edges)] = True


def encode_parts(d: ItemDelta, max_bytes: int) -> list[bytes]:
    """``encode_delta``, split into records of at most ``max_bytes`` where it can be (applied
    in order they do what ``d`` does); a delta that cannot be split further is one record."""
    wire = encode_delta(d)
    if len(wire) <= max_bytes or (len(d.items) < 2 and len(d.sequences) < 2 and len(d.new_items) < 2):
        return [wire]
    return [part for half in d.split() for part in encode_parts(half, max_bytes)]


def snapshot(rec: ServedModel, position: int) -> bytes:
    """The item side of ``rec`` (signals, ranker, new items' contributions, availability) as
    bytes, with the log ``position`` it covers (the next delta to apply after it)."""
    return pack(snapshot_arrays(rec, position))


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """``snapshot_arrays`` as bytes (compressed: the costly half, which needs no lock)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def snapshot_arrays(rec: ServedModel, position: int) -> dict[str, np.ndarray]:
    """A copy of the item side of ``rec`` as arrays (the quick half of ``snapshot``: run it where
    nothing learns meanwhile)."""
    sig = rec.signals
    n = len(sig.ids)
    ses = sig.sessions
    meta = {
        "v": _FORMAT, "position": position, "ids": sig.ids, "categories": list(sig.categories),
        "anchor": sig._anchor, "events": sig.events, "trained_lists": sig.trained_lists,
        "owner": [[k, s, g] for k, (s, g) in ses.owner.items()], "next_slot": ses._next,
        "new_items": [[item, [[k, w] for k, (_, w) in seen.items()]] for item, seen in rec._new_items.items()],
        "unavailable": sorted(rec.unavailable), "model_version": rec.model_version,
        "shape": [int(sig.hw.shape[0]), int(ses.items.shape[0]), int(ses.items.shape[1]), int(ses.p)],
    }
    vecs = [v for seen in rec._new_items.values() for v, _ in seen.values()]
    arrays: dict[str, np.ndarray] = {
        "trend": sig.trend[:n], "count": sig.count[:n], "last_seen": sig.last_seen[:n],
        "category": sig.category[:n], "unavail": sig.unavailable[:n],
        "ses_items": ses.items, "ses_gen": ses.gen, "ses_time": ses.last_time,
        "post_slot": ses.post_slot[:n], "post_gen": ses.post_gen[:n], "post_next": ses.post_next[:n],
        "w": sig.w, "hw": sig.hw, "hb": sig.hb, "hv": sig.hv,
        "vecs": np.asarray(vecs, np.float32).reshape(len(vecs), rec._fold.factors),
    }
    for i, g2 in enumerate(sig._g2):
        arrays[f"g2_{i}"] = g2
    for name, graph in (("sr", sig.sr), ("covisit", sig.covisit)):
        for part, a in zip("abw", _edges(graph)):
            arrays[f"{name}_{part}"] = a
    arrays = {k: np.array(a, copy=True) for k, a in arrays.items()}
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), np.uint8).copy()
    return arrays


def restore(rec: ServedModel, data: bytes) -> int:
    """Load a ``snapshot`` into a fresh ``rec`` (nothing learned yet); returns its log position.

    ModelIncompatibleError when the snapshot is unreadable or its shapes do not fit
    ``rec``'s settings (ranker width, session store): start without it then.
    """
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        meta = orjson.loads(z["meta"].tobytes())
        if meta.get("v") != _FORMAT:
            raise ModelIncompatibleError(f"online-state snapshot format {meta.get('v')!r}, expected {_FORMAT}")
        arrays = {k: z[k] for k in z.files if k != "meta"}
    except ModelIncompatibleError:
        raise
    except Exception as exc:
        raise ModelIncompatibleError(f"unreadable online-state snapshot: {exc!r}") from exc
    sig: StreamSignals = rec.signals
    ses = sig.sessions
    want = [int(sig.hw.shape[0]), int(ses.items.shape[0]), int(ses.items.shape[1]), int(ses.p)]
    if meta["shape"] != want:
        raise ModelIncompatibleError(f"online-state snapshot shapes {meta['shape']} (ranker hidden, sessions, "
                                     f"session length, postings) do not fit these settings {want}")
    if sig.ids:
        raise ModelIncompatibleError("restore needs a recommender that has learned nothing")
    for item in meta["ids"]:
        sig.row(item)
    n = len(sig.ids)
    sig.trend[:n], sig.count[:n], sig.last_seen[:n] = arrays["trend"], arrays["count"], arrays["last_seen"]
    sig.unavailable[:n] = arrays["unavail"]
    cats = meta["categories"]
    sig.set_category([sig.ids[r] for r in np.flatnonzero(arrays["category"] >= 0).tolist()],
                     [cats[c] for c in arrays["category"][arrays["category"] >= 0].tolist()])
    sig._anchor, sig.events, sig.trained_lists = meta["anchor"], meta["events"], meta["trained_lists"]
    ses.items[:], ses.gen[:], ses.last_time[:] = arrays["ses_items"], arrays["ses_gen"], arrays["ses_time"]
    ses.post_slot[:n], ses.post_gen[:n], ses.post_next[:n] = (arrays["post_slot"], arrays["post_gen"],
                                                              arrays["post_next"])
    ses.owner = {k: (int(s), int(g)) for k, s, g in meta["owner"]}
    ses._next = int(meta["next_slot"])
    sig.w[:], sig.hw[:], sig.hb[:], sig.hv[:] = arrays["w"], arrays["hw"], arrays["hb"], arrays["hv"]
    for i, g2 in enumerate(sig._g2):
        g2[:] = arrays[f"g2_{i}"]
    for name, graph in (("sr", sig.sr), ("covisit", sig.covisit)):
        _set_edges(graph, arrays[f"{name}_a"], arrays[f"{name}_b"], arrays[f"{name}_w"])
    vecs = arrays["vecs"]
    at = 0
    # contributions are user embeddings under the snapshot's model: another version folds anew
    same_model = meta["model_version"] == rec.model_version
    for item, seen in meta["new_items"] if same_model else ():
        rec._new_items[item] = {k: (vecs[at + j], float(w)) for j, (k, w) in enumerate(seen)}
        at += len(seen)
    rec._fold_items([i for i in rec._new_items if rec._new_items[i]])
    if meta["unavailable"]:
        rec.set_available(meta["unavailable"], False)
    return int(meta["position"])

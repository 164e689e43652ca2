"""The served model of one worker: loading, hot swaps, and the one compute thread it runs on.

Every change to the model (a batch's learning, a catalog update, a swap to a newer
version, an erase) runs on the compute thread (``executor``), so none of them can
land in the middle of another, and none runs on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from model_core.als import ALSModel, latest_model_dir
from model_core.config import FoldInConfig
from model_core.errors import ModelIncompatibleError
from model_core.events import Event
from model_core.index import IndexConfig
from model_core.served.model import ServedModel, Step
from model_core.served.shared import ItemDelta, as_decoded, encode_parts
from model_core.state import UserHistory
from streams.kafka import DELTA_MAX_BYTES
from streams.settings import Settings
from streams.worker.metrics import Metrics

__all__ = ["WorkerModel"]

log = logging.getLogger("freshrec.worker")

_OWN_KEPT = 256  # own deltas records remembered until read back (a few seconds of batches)


@dataclass
class WorkerModel:
    """The model a worker serves, its swaps, and the compute thread."""

    settings: Settings
    model_root: Path
    foldin: FoldInConfig = field(default_factory=FoldInConfig)
    metrics: Metrics = field(default_factory=Metrics)
    rec: ServedModel | None = None
    bad_versions: set[str] = field(default_factory=set)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "freshrec-compute"))
    own: dict[bytes, ItemDelta] = field(default_factory=dict)
    """Deltas records this worker wrote and has not read back yet, as ``decode_delta`` gives them
    (compute thread): learned from memory when they come back, not decoded again."""

    def load_initial(self) -> None:
        model = ALSModel.load(self.model_root)
        self.rec = self._serve(model)
        self._note_versions()
        log.info("serving model %s (%d items, k=%d) on %s from %s", model.version, len(model.item_ids),
                 model.config.factors, self.rec.device, latest_model_dir(self.model_root))

    def warm_up(self) -> None:
        """The served model's one-time costs, paid before the first batch (compute thread)."""
        assert self.rec is not None
        self.rec.warm_up(self.settings.k)

    def _check_serving(self, model: ALSModel) -> None:
        serving = {"foldin": self.foldin.to_dict(), "index": self.settings.index}
        trained = model.metadata.get("serving")
        log.info("model %s: fold-in %s, index %s", model.version, serving["foldin"], serving["index"])
        if trained is not None and trained != serving:
            log.warning("model %s was trained with serving settings %s; serving it with %s", model.version,
                        trained, serving)

    def _serve(self, model: ALSModel) -> ServedModel:
        self._check_serving(model)
        return ServedModel(model, self.foldin, IndexConfig(kind=self.settings.index),  # type: ignore[arg-type]
                                 device=self.settings.device)

    def _note_versions(self) -> None:
        assert self.rec is not None
        self.metrics.model_version = self.rec.model_version
        self.metrics.index_version = self.rec.index_version

    def newer_version(self) -> Path | None:
        """The newest model directory if it is newer than the served one (and not known bad)."""
        try:
            path = latest_model_dir(self.model_root)
        except ModelIncompatibleError:
            return None
        assert self.rec is not None
        if path.name == self.rec.model_version or path.name in self.bad_versions:
            return None
        return path if path.name > self.rec.model_version else None

    def swap_to(self, path: Path) -> tuple[ServedModel, ServedModel]:
        """Load, index and install a model version; returns (old, new). Compute thread only."""
        old = self.rec
        assert old is not None
        model = ALSModel.load(path)
        self._check_serving(model)
        fresh = old.successor(model, device=self.settings.device)  # what the stream taught carries over
        fresh.warm_up(self.settings.k)
        self.rec = fresh
        self._note_versions()
        return old, fresh

    def plan(self, events: list[Event], histories: dict[str, UserHistory]
             ) -> tuple[ServedModel, Step, list[bytes]]:
        """A batch's lists for its users and its item-side delta as records, learning nothing
        (compute thread; safe to retry).

        Returns the model that made them, so the lists name the right versions even if a
        newer model is swapped in before they are published.
        """
        rec = self.rec
        assert rec is not None
        plan = rec.plan_step(events, histories, self.settings.k)
        wire = encode_parts(plan.delta, DELTA_MAX_BYTES) if plan.delta else []
        if len(wire) == 1:  # a split delta (rare) is decoded like anyone else's
            self.own[wire[0]] = as_decoded(plan.delta)
            while len(self.own) > _OWN_KEPT:  # records of failed batches never come back
                del self.own[next(iter(self.own))]
        return rec, plan, wire

    def own_delta(self, value: bytes) -> ItemDelta | None:
        """The delta of a record this worker wrote (taken out of ``own``), or None (compute thread)."""
        return self.own.pop(value, None)

    def trending(self, n: int) -> tuple[str, list[tuple[str, float]]]:
        """(model version, the n most trending available items) (compute thread)."""
        assert self.rec is not None
        return self.rec.model_version, self.rec.signals.top(n)

    def forget(self, users: Iterable[str]) -> list[bytes]:
        """Erase: drop what the model keeps under these users' ids (compute thread); returns the
        delta records that make every worker forget them."""
        assert self.rec is not None
        return encode_parts(self.rec.forget_users(users), DELTA_MAX_BYTES)

    def catalog(self, item: str, available: bool, category: str | None) -> None:
        """Catalog update (compute thread, so never during a batch's search)."""
        assert self.rec is not None
        self.rec.set_available([item], available)
        if category is not None:
            self.rec.set_category([item], [category])

"""One streaming worker: the served model and its swaps, wired into the Faust app.

``streams.worker.agent`` holds the event agent (decode -> state -> model -> publish),
``streams.worker.catalog`` the catalog listener, ``streams.worker.app`` the Faust app's
settings, ``streams.worker.embedded`` the embedded broker's workarounds and
``streams.worker.userstate`` the per-user state and its recovery.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import sys
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from model_core.als import ALSModel, latest_model_dir
from model_core.config import FoldInConfig
from model_core.errors import FreshrecError, ModelIncompatibleError
from model_core.events import Event
from model_core.index import IndexConfig
from model_core.online import OnlineRecommender
from model_core.state import UserHistory
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.worker.agent import EXIT_FATAL, EventAgent, Health
from streams.worker.app import make_app
from streams.worker.catalog import CATALOG_EVENTS, CatalogListener
from streams.worker.embedded import lag
from streams.worker.metrics import Metrics

__all__ = ["CATALOG_EVENTS", "EXIT_FATAL", "WorkerState", "build_app", "run_worker"]

log = logging.getLogger("freshrec.worker")


@dataclass
class WorkerState:
    """Everything the agents share: the served model, metrics, one compute thread."""

    settings: Settings
    model_root: Path
    foldin: FoldInConfig = field(default_factory=FoldInConfig)
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=lambda: Health(60.0))
    rec: OnlineRecommender | None = None
    bad_versions: set[str] = field(default_factory=set)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "freshrec-compute"))

    def load_initial(self) -> None:
        model = ALSModel.load(self.model_root)
        self.rec = self._serve(model)
        self._note_versions()
        log.info("serving model %s (%d items, k=%d) on %s from %s", model.version, len(model.item_ids),
                 model.config.factors, self.rec.device, latest_model_dir(self.model_root))

    def _check_serving(self, model: ALSModel) -> None:
        serving = {"foldin": self.foldin.to_dict(), "index": self.settings.index}
        trained = model.metadata.get("serving")
        log.info("model %s: fold-in %s, index %s", model.version, serving["foldin"], serving["index"])
        if trained is not None and trained != serving:
            log.warning("model %s was trained with serving settings %s; serving it with %s", model.version,
                        trained, serving)

    def _serve(self, model: ALSModel) -> OnlineRecommender:
        self._check_serving(model)
        return OnlineRecommender(model, self.foldin, IndexConfig(kind=self.settings.index),  # type: ignore[arg-type]
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

    def swap_to(self, path: Path) -> tuple[OnlineRecommender, OnlineRecommender]:
        """Load, index and install a model version; returns (old, new).

        Runs in the compute thread, like batches and catalog updates, so none of
        them can land on the old model between the hand-over and the install.
        """
        old = self.rec
        assert old is not None
        model = ALSModel.load(path)
        self._check_serving(model)
        fresh = old.successor(model, device=self.settings.device)  # what the stream taught carries over
        self.rec = fresh
        self._note_versions()
        return old, fresh

    def compute(
        self, events: list[Event], histories: dict[str, UserHistory]
    ) -> tuple[OnlineRecommender, list[list[tuple[str, float]]]]:
        """Learn a batch and recommend for its users (runs in the compute thread).

        Returns the model that made the lists, so they name the right versions
        even if a newer model is swapped in meanwhile.
        """
        rec = self.rec
        assert rec is not None
        return rec, rec.step(events, histories, self.settings.k)  # one candidate search for learning and lists

    def catalog(self, item: str, available: bool, category: str | None) -> None:
        """Catalog update (runs in the compute thread, so never during a batch's search)."""
        assert self.rec is not None
        self.rec.set_available([item], available)
        if category is not None:
            self.rec.set_category([item], [category])


def build_app(settings: Settings, state: WorkerState) -> faust.App:
    """The Faust app of one worker: the event agent, the catalog listener, model swaps, metrics
    and health pages."""
    app = make_app(settings)
    agent = EventAgent(app, settings, state)
    metrics, health = state.metrics, state.health

    @app.timer(settings.model_poll_s)
    async def watch_model() -> None:
        path = state.newer_version()
        if path is None:
            return
        loop = asyncio.get_running_loop()
        try:
            old, fresh = await loop.run_in_executor(state.executor, state.swap_to, path)
        except FreshrecError as exc:
            state.bad_versions.add(path.name)
            metrics.inc("model_errors")
            log.error("model %s not loaded, still serving %s: %s", path.name, state.rec.model_version, exc)  # type: ignore[union-attr]
            return
        metrics.inc("model_swaps")
        log.info("swapped model %s -> %s without a restart", old.model_version, fresh.model_version)

    @app.timer(settings.metrics_interval_s)
    async def report() -> None:
        metrics.lag = lag(app, settings.events_topic)
        log.info("%s", metrics.log_line())

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.bytes(metrics.prometheus(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def liveness(web: Any, request: Any) -> Any:
        ok, why = health.live(lag(app, settings.events_topic))
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

    @app.page("/ready")
    async def readiness(web: Any, request: Any) -> Any:
        ok, why = health.ready(agent.store)
        return web.json({"ok": ok, "reason": why}, status=200 if ok else 503)

    @app.task
    async def start_catalog() -> None:
        # after mode's own handlers: its SIGUSR2 would enter pdb (and raise BdbQuit without a tty)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_async_generators)
        listener = CatalogListener(settings, asyncio.get_running_loop(), state.executor, state.catalog, metrics)
        listener.start()
        app._freshrec_catalog = listener  # type: ignore[attr-defined]
        log.info("worker ready: consuming %s (group %s), publishing %s", settings.events_topic, settings.group,
                 settings.recommendations_topic)

    @app.on_before_shutdown.connect  # type: ignore[misc, arg-type]
    def stop_catalog(app_: Any, **kwargs: Any) -> None:
        listener = getattr(app_, "_freshrec_catalog", None)
        if listener is not None:
            listener.stopping.set()
        agent.loader.shutdown(wait=False)
        agent.out.close()
        log.info("shutting down: %s", metrics.log_line())

    return app


def _limit_compute_threads(n: int) -> None:
    """BLAS and OpenMP (FAISS) thread pools of this process: only the compute thread uses them."""
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    faiss.omp_set_num_threads(n)
    log.info("compute thread: %d BLAS/OpenMP thread(s) (FRESHREC_COMPUTE_THREADS)", n)


def _dump_async_generators() -> None:
    """Where each suspended async generator waits (asyncio's task dump truncates those), to stderr."""
    out = ["async generators:"]
    with warnings.catch_warnings():  # isinstance on some library objects warns of deprecations
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, types.AsyncGeneratorType)]
    for obj in objects:
        if obj.ag_frame is None:
            continue
        chain: list[str] = []
        at: Any = obj
        while at is not None and len(chain) < 20:
            f = getattr(at, "ag_frame", None) or getattr(at, "cr_frame", None)
            if f is None:
                chain.append(repr(at)[:200])
                break
            chain.append(f"{f.f_code.co_qualname} ({f.f_code.co_filename}:{f.f_lineno})")
            at = getattr(at, "ag_await", None) or getattr(at, "cr_await", None)
        out.append("  " + " -> ".join(chain))
    print("\n".join(out), file=sys.stderr, flush=True)


def run_worker(settings: Settings, model_root: str | Path, *, foldin: FoldInConfig | None = None) -> int:
    """Create topics, load the model, and run one worker until SIGTERM/SIGINT.

    For a worker that looks stuck: ``kill -QUIT <pid>`` writes every thread's stack to stderr
    (from the signal itself: it works while the event loop is blocked); ``kill -USR1 <pid>`` logs
    every asyncio task (Faust's own dump) and ``kill -USR2 <pid>`` where each live async
    generator (the agents' streams) is waiting.
    """
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    ensure_topics(settings)
    state = WorkerState(settings, Path(model_root), foldin or settings.foldin, health=Health(settings.health_stall_s))
    _limit_compute_threads(settings.compute_threads)
    state.load_initial()
    state.health.model_loaded = True
    app = build_app(settings, state)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False,
                          override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # faust exits the process on shutdown; report our own code
        return int(exc.code or 0)
    finally:
        state.executor.shutdown(wait=False)
    return 0

"""The dashboard at ``/``: the pipeline at a glance and a user lookup, from this process's store.

One HTML page (``static/dashboard.html``) with uPlot (``static/uPlot.iife.min.js``, MIT,
vendored from the npm package ``uplot``: nothing is fetched from the internet) polls
``/v1/dashboard`` every two seconds. Live quality per model version and the workers' DLQ
count come from the workers' Prometheus /metrics when ``--worker-metrics`` names them
(``freshrec_live_hits_total`` / ``freshrec_live_points_total`` by ``model_version``); without
them the page says n/a. Each element that shows a number carries ``data-metric`` naming the
/metrics series it mirrors (the browser test compares them).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from streams.serve.store import Store
from streams.settings import Settings

__all__ = ["WorkerScraper", "add_dashboard"]

log = logging.getLogger("freshrec.serve")

STATIC = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css",
          "uPlot.LICENSE": "text/plain", "dashboard.js": "application/javascript"}


def _static(name: str) -> bytes:
    return resources.files("streams.serve").joinpath("static").joinpath(name).read_bytes()


class WorkerScraper:
    """Scrapes the workers' /metrics (at most every ``every`` seconds; 1 s timeout each)."""

    def __init__(self, urls: list[str], every: float = 2.0) -> None:
        self.urls, self.every = urls, every
        self._at = 0.0
        self._last: dict[str, Any] = {"live_quality": {}, "dlq": None, "workers_up": 0}
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        """``{"live_quality": {version: {"hits", "points", "hit_rate"}}, "dlq": int|None, "workers_up"}``."""
        with self._lock:
            if self.urls and time.monotonic() - self._at >= self.every:
                self._at = time.monotonic()
                self._last = self._scrape()
            return self._last

    def _scrape(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        hits: dict[str, float] = {}
        points: dict[str, float] = {}
        dlq: float | None = None
        up = 0
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:  # noqa: S310 - operator-given URL
                    text = r.read().decode()
            except Exception as exc:  # noqa: BLE001 - a worker away shows as fewer workers up
                log.debug("cannot scrape %s: %s", url, exc)
                continue
            up += 1
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    version = sample.labels.get("model_version", "")
                    if sample.name == "freshrec_live_hits_total":
                        hits[version] = hits.get(version, 0.0) + sample.value
                    elif sample.name == "freshrec_live_points_total":
                        points[version] = points.get(version, 0.0) + sample.value
                    elif sample.name == "freshrec_dlq_total":
                        dlq = (dlq or 0.0) + sample.value
        quality = {v: {"hits": hits.get(v, 0.0), "points": n, "hit_rate": (hits.get(v, 0.0) / n) if n else None}
                   for v, n in points.items()}
        return {"live_quality": quality, "dlq": None if dlq is None else int(dlq), "workers_up": up}


def summary(settings: Settings, store: Store, workers: WorkerScraper, minutes: int = 5) -> dict[str, Any]:
    """What the dashboard shows (plain numbers; the page formats them)."""
    by_model = store.by_model()
    held = sum(by_model.values())
    scraped = workers.get()
    return {
        "now": time.time(),
        "topics": {"recommendations": settings.recommendations_topic, "items": settings.items_topic,
                   "partitions": settings.serve_partitions or "all"},
        "ready": store.ready_at is not None,
        "lists": len(store.lists),
        "lists_received": store.received,
        "lists_per_s": store.lists_per_s(),
        "erased_users": len(store.erased),
        "unavailable_items": len(store.unavailable),
        "lag": store.lag,
        "dlq_messages": store.dlq_messages,
        "dlq_workers": scraped["dlq"],
        "models": [{"model_version": v, "lists": n, "share": n / held if held else 0.0}
                   for v, n in sorted(by_model.items(), key=lambda kv: -kv[1])],
        "live_quality": scraped["live_quality"],
        "workers": {"configured": len(workers.urls), "up": scraped["workers_up"]},
        "trending": None if store.trending is None else {
            "items": len(store.trending.item_ids), "model_version": store.trending.model_version,
            "published_at": store.trending.published_at},
        "series": store.series(seconds=minutes * 60, step=10),
    }


def add_dashboard(app: FastAPI, settings: Settings, store: Store) -> None:
    """``/`` (the page), ``/static/*`` (its assets), ``/v1/dashboard`` and ``/v1/users/{id}/events``."""
    workers = WorkerScraper(settings.worker_metrics_urls)
    page = _static("dashboard.html")
    assets = {name: _static(name) for name in STATIC}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
        return Response(assets[name], media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/dashboard")
    def dashboard_summary(minutes: int = Query(5, ge=1, le=10)) -> dict[str, Any]:
        """The dashboard's numbers: lists, rates, freshness series, model shares, live quality, DLQ, lag."""
        return summary(settings, store, workers, minutes)  # a plain def: scraping runs on the thread pool

    @app.get("/v1/users/{user_id}/events")
    def user_events(user_id: str, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
        """The user's newest events among the last ``serve_recent_events`` messages of the events topic."""
        return {"user_id": user_id, "kept": len(store.recent_events) if store.reads_events else 0,
                "reads_events": store.reads_events, "events": store.events_of(user_id, limit)}

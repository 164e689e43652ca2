"""The HTTP side of ``freshrec serve``: a FastAPI app over a :class:`~streams.serve.store.Store`.

Why FastAPI (on uvicorn with uvloop and httptools): typed request and response models that
are also the OpenAPI document (``/docs``, ``/openapi.json``), validation that answers 4xx
before a handler runs, and a response path that serialises a pydantic model straight to
JSON in Rust. aiohttp (which Faust brings) serves as fast but has no typed models or
OpenAPI of its own: we would write and keep both by hand.

Every error is a JSON object ``{"error": "<one line>"}`` with a 4xx (5xx only for a bug,
still one line): never a traceback.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from streams.serve.store import Entry, Store, StoreReader
from streams.settings import Settings

__all__ = ["build_app"]

MAX_K = 1000
MAX_BATCH_USERS = 1000
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Item(BaseModel):
    item_id: str
    score: float
    sources: list[str] | None = Field(None, description="the candidate sources that put the item on the list; "
                                      "null when the list does not say")


class UserRecommendations(BaseModel):
    user_id: str
    items: list[Item]
    source: Literal["user", "trending"] = Field(description="the user's own list, or the trending fallback")
    model_version: str
    index_version: int | None = Field(None, description="null for the trending list")
    published_at: float = Field(description="Unix seconds the list was published")
    age_s: float = Field(description="seconds since published_at")
    freshness_ms: float | None = Field(None, description="broker time of the newest event the list reflects "
                                       "to the list held here, ms (null when the list does not say)")
    events_applied: int | None = None
    last_event_id: str | None = None
    last_event_time: float | None = None
    filtered: int = Field(description="items of the stored list removed by the filters (before the cut to k)")


class RecommendationQuery(BaseModel):
    """The query of GET /v1/users/{user_id}/recommendations."""

    k: int | None = Field(None, ge=1, le=MAX_K, description="items to return (default: the whole list)")
    exclude: list[str] = Field(default_factory=list,
                               description="item ids to leave out (comma-separated or repeated)")
    category: str | None = Field(None, max_length=256, description="only items of this catalog category")
    available_only: bool = Field(True, description="leave out items the catalog marks unavailable")
    fallback: Literal["none", "trending"] = Field("none", description="unknown/erased user: 404 or trending")


QUERY_PARAMETERS = [
    {"name": name, "in": "query", "required": False, "description": prop.pop("description", ""), "schema": prop}
    for name, prop in RecommendationQuery.model_json_schema()["properties"].items()
]


def parse_query(request: Request) -> RecommendationQuery:
    """The request's query as a :class:`RecommendationQuery`; RequestValidationError (400) if it is not one."""
    from pydantic import ValidationError

    params = request.query_params
    raw: dict[str, Any] = {name: params[name] for name in ("k", "category", "available_only", "fallback")
                           if name in params}
    if "exclude" in params:
        raw["exclude"] = params.getlist("exclude")
    try:
        return RecommendationQuery.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


class BatchRequest(BaseModel):
    users: list[str] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    k: int | None = Field(None, ge=1, le=MAX_K)
    exclude: list[str] = Field(default_factory=list)
    category: str | None = None
    available_only: bool = True
    fallback: Literal["none", "trending"] = "none"


class BatchResponse(BaseModel):
    results: dict[str, UserRecommendations]
    missing: list[str] = Field(description="users with no list (unknown or erased) and no fallback")


class Health(BaseModel):
    status: Literal["ok", "failing"]
    reason: str | None = None


class Ready(BaseModel):
    ready: bool
    lists: int
    ready_at: float | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _split(values: list[str]) -> list[str]:
    """``exclude=a,b&exclude=c`` -> [a, b, c]."""
    return [v for raw in values for v in raw.split(",") if v]


class _Timing:
    """Pure ASGI middleware: request latency per route into a histogram (no per-request task)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.histogram.labels(name).observe(time.perf_counter() - start)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        s = self.store
        yield GaugeMetricFamily("freshrec_serve_lists", "User lists held", value=len(s.lists))
        yield GaugeMetricFamily("freshrec_serve_erased_users", "Users whose tombstone was read", value=len(s.erased))
        yield GaugeMetricFamily("freshrec_serve_unavailable_items", "Items marked unavailable by the catalog",
                                value=len(s.unavailable))
        yield GaugeMetricFamily("freshrec_serve_lag", "Records of the recommendations topic not read yet "
                                "(high watermark - position; reads low on the embedded broker)",
                                value=-1 if s.lag is None else s.lag)
        yield GaugeMetricFamily("freshrec_serve_ready", "1 once caught up with the topics at start",
                                value=0 if s.ready_at is None else 1)
        yield GaugeMetricFamily("freshrec_serve_lists_per_second", "Lists received per second (last 10 s)",
                                value=s.lists_per_s())
        yield GaugeMetricFamily("freshrec_serve_dlq_messages", "Messages on the dead-letter topic",
                                value=s.dlq_messages)
        for name, doc, value in (("lists_received", "Recommendation messages read", s.received),
                                 ("tombstones", "Tombstones (erasures) read", s.tombstones),
                                 ("catalog_updates", "Catalog messages applied", s.catalog_updates),
                                 ("skipped", "Undecodable messages skipped",
                                  s.skipped + s.lists_skipped)):
            c = CounterMetricFamily(f"freshrec_serve_{name}", doc)
            c.add_metric([], value)
            yield c
        g = GaugeMetricFamily("freshrec_serve_model_lists", "Lists held per model version", labels=["model_version"])
        for version, n in sorted(s.by_model().items()):
            g.add_metric([version], n)
        yield g
        t = s.trending
        yield GaugeMetricFamily("freshrec_serve_trending_items", "Items of the trending list held",
                                value=0 if t is None else len(t.item_ids))


def build_app(settings: Settings, store: Store, reader: StoreReader | None = None) -> FastAPI:
    """The app: the API under /v1, /health, /ready, /metrics, the dashboard at /."""
    from streams.serve.dashboard import add_dashboard

    app = FastAPI(title="freshrec serve", version="1",
                  description="The newest recommendation list per user, read from the recommendations topic.")
    registry = CollectorRegistry(auto_describe=True)
    latency = Histogram("freshrec_serve_request_seconds", "HTTP request latency (handler and serialisation)",
                        ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    registry.register(_StoreCollector(store))
    app.add_middleware(_Timing, histogram=latency)
    max_id = settings.max_id_length

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path"))
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}")

    def answer(user_id: str, k: int | None, exclude: list[str], category: str | None, available_only: bool,
               fallback: str, now: float) -> dict[str, Any] | None:
        """The body of a :class:`UserRecommendations` as a dict, or None (no list, no fallback).

        Built by hand and written with orjson: the pydantic models are the documented contract
        (OpenAPI, and the tests check answers against them), but validating and serialising the
        model on every request tripled the CPU time of a GET.
        """
        entry: Entry | None = store.get(user_id)
        if entry is not None:
            sel = store.select(entry.item_ids, entry.scores, entry.sources, k, exclude, category, available_only)
            fresh = entry.freshness_s
            return {
                "user_id": user_id, "source": "user",
                "items": [{"item_id": i, "score": s, "sources": src} for i, s, src in sel.items],
                "model_version": entry.model_version, "index_version": entry.index_version,
                "published_at": entry.published_at, "age_s": round(now - entry.published_at, 3),
                "freshness_ms": None if fresh is None else round(fresh * 1000.0, 1),
                "events_applied": entry.events_applied, "last_event_id": entry.last_event_id,
                "last_event_time": entry.last_event_time, "filtered": sel.filtered}
        trending = store.trending
        if fallback == "trending" and trending is not None:
            sel = store.select(trending.item_ids, trending.scores, None, k, exclude, category, available_only)
            return {
                "user_id": user_id, "source": "trending",
                "items": [{"item_id": i, "score": s, "sources": ["trending"]} for i, s, _ in sel.items],
                "model_version": trending.model_version, "index_version": None,
                "published_at": trending.published_at, "age_s": round(now - trending.published_at, 3),
                "freshness_ms": None, "events_applied": None, "last_event_id": None, "last_event_time": None,
                "filtered": sel.filtered}
        return None

    def missing_reason(user_id: str, fallback: str) -> str:
        what = "was erased" if user_id in store.erased else "has no list"
        more = "; no trending list has been published yet" if fallback == "trending" else \
            "; ask with fallback=trending for the trending list"
        return f"user {user_id!r} {what}{more}"

    @app.get("/v1/users/{user_id}/recommendations", response_model=UserRecommendations,
             responses={404: {"description": "unknown or erased user (and no fallback)"},
                        400: {"description": "bad parameter"}},
             openapi_extra={"parameters": QUERY_PARAMETERS})
    async def user_recommendations(user_id: str, request: Request) -> Response:
        """The user's newest list, filtered, cut to k.

        The query is validated by :class:`RecommendationQuery` here rather than declared as
        FastAPI parameters: FastAPI re-inspects every declared parameter's type on each request,
        which was 60% of a GET's CPU time; the OpenAPI document lists the same parameters.
        """
        q = parse_query(request)
        if len(user_id) > max_id:
            return _error(400, f"user_id of {len(user_id)} characters is over the limit of {max_id}")
        got = answer(user_id, q.k, _split(q.exclude), q.category, q.available_only, q.fallback, time.time())
        if got is None:
            return _error(404, missing_reason(user_id, q.fallback))
        return _json(got)

    def batch(users: list[str], k: int | None, exclude: list[str], category: str | None, available_only: bool,
              fallback: str) -> Response:
        if len(users) > MAX_BATCH_USERS:
            return _error(400, f"{len(users)} users in one request; at most {MAX_BATCH_USERS}")
        now = time.time()
        results: dict[str, Any] = {}
        missing: list[str] = []
        for user in users:
            got = answer(user, k, exclude, category, available_only, fallback, now) if len(user) <= max_id else None
            if got is None:
                missing.append(user)
            else:
                results[user] = got
        return _json({"results": results, "missing": missing})

    @app.post("/v1/recommendations", response_model=BatchResponse)
    async def batch_post(body: BatchRequest) -> Response:
        """Many users in one request (at most 1000): their lists, and the users without one."""
        return batch(body.users, body.k, _split(body.exclude), body.category, body.available_only, body.fallback)

    @app.get("/v1/recommendations", response_model=BatchResponse)
    async def batch_get(
        users: list[str] = Query(..., description="user ids, comma-separated or repeated (at most 1000)"),
        k: int | None = Query(None, ge=1, le=MAX_K),
        exclude: list[str] = Query([]),
        category: str | None = Query(None, max_length=256),
        available_only: bool = True,
        fallback: Literal["none", "trending"] = "none",
    ) -> Response:
        """The batch form as a GET: ``users=a,b,c``."""
        ids = _split(users)
        if not ids:
            return _error(400, "users: give at least one user id")
        return batch(ids, k, _split(exclude), category, available_only, fallback)

    @app.get("/v1/trending", response_model=UserRecommendations, responses={404: {"description": "none yet"}})
    async def trending(k: int | None = Query(None, ge=1, le=MAX_K), category: str | None = None,
                       available_only: bool = True) -> Response:
        """The global trending list (what fallback=trending answers)."""
        got = answer("", k, [], category, available_only, "trending", time.time())
        if got is None:
            return _error(404, "no trending list has been published yet")
        return _json(got)

    @app.get("/health", response_model=Health, responses={503: {"description": "the topic reader stopped"}})
    async def health() -> Health | JSONResponse:
        """200 while the topic reader runs; 503 with the reason once it stopped."""
        if reader is not None and not reader.is_alive() and not reader.stopping.is_set():
            why = f"topic reader stopped: {reader.error}" if reader.error else "topic reader stopped"
            return JSONResponse(Health(status="failing", reason=why).model_dump(), status_code=503)
        return Health(status="ok")

    @app.get("/ready", response_model=Ready, responses={503: {"description": "still reading the topics"}})
    async def ready() -> Ready | JSONResponse:
        """200 once the lists held are caught up with the topics as they were at start."""
        body = Ready(ready=store.ready_at is not None, lists=len(store.lists), ready_at=store.ready_at)
        return body if body.ready else JSONResponse(body.model_dump(), status_code=503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: request latency, lists held, lag, counters."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    add_dashboard(app, settings, store)
    return app


"""The Faust app of a worker, built from settings (the same for the worker and its benchmark ceiling)."""

from __future__ import annotations

from typing import Any

import faust

from streams.settings import Settings
from streams.worker.transport import transport_scheme

__all__ = ["make_app"]


def make_app(settings: Settings, app_id: str | None = None, *, stock: bool = False) -> faust.App:
    """A Faust app configured from settings: transport and timeouts per profile, raw bytes
    in and out, no tables (freshrec keeps its own state, see streams.worker.userstate).

    ``stock=True`` uses Faust's own ``kafka://`` transport instead of freshrec's (the
    benchmark's comparison; on the embedded broker it waits 1.5 s per fetch).
    """
    embedded = settings.profile == "embedded"
    scheme = "kafka" if stock else transport_scheme(embedded)
    extra: dict[str, Any] = {}
    if embedded:
        extra.update(broker_session_timeout=6, broker_heartbeat_interval=1, broker_rebalance_timeout=10)
    return faust.App(
        app_id or settings.group,
        broker=[f"{scheme}://{hp.strip()}" for hp in settings.brokers.split(",")],
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        **extra,
    )

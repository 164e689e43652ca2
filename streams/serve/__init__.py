"""``freshrec serve``: the read side. Materialises the recommendations, catalog and trending
topics in memory and answers HTTP (the API under /v1, /health, /ready, /metrics, a dashboard at /).

``store`` holds the data and reads the topics, ``api`` is the FastAPI app, ``dashboard`` the page.
"""

from __future__ import annotations

from streams.serve.api import build_app
from streams.serve.store import Store, StoreReader

__all__ = ["Store", "StoreReader", "build_app"]

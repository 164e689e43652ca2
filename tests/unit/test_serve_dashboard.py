"""The dashboard's worker scrape (live quality, DLQ) against a local /metrics, and serve's flags."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streams.cli import _settings, build_parser
from streams.serve.dashboard import WorkerScraper

WORKER_METRICS = b"""# TYPE freshrec_live_hits_total counter
freshrec_live_hits_total{model_version="v1"} 30.0
freshrec_live_hits_total{model_version="v2"} 5.0
# TYPE freshrec_live_points_total counter
freshrec_live_points_total{model_version="v1"} 100.0
freshrec_live_points_total{model_version="v2"} 10.0
# TYPE freshrec_dlq_total counter
freshrec_dlq_total 3.0
"""


@pytest.fixture
def metrics_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(WORKER_METRICS)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_worker_scrape_sums_live_quality_per_model_version(metrics_url: str) -> None:
    got = WorkerScraper([metrics_url, metrics_url, "http://127.0.0.1:9/metrics"]).get()
    assert got["workers_up"] == 2 and got["dlq"] == 6
    assert got["live_quality"]["v1"] == {"hits": 60.0, "points": 200.0, "hit_rate": 0.3}
    assert got["live_quality"]["v2"]["hit_rate"] == 0.5


def test_no_workers_means_no_live_quality() -> None:
    assert WorkerScraper([]).get() == {"live_quality": {}, "dlq": None, "workers_up": 0}


def test_serve_flags_become_settings() -> None:
    args = build_parser().parse_args(["serve", "--port", "9000", "--partitions", "0,2", "--worker-metrics", "http://a",
                                      "--worker-metrics", "http://b", "--recent-events", "0"])
    s = _settings(args)
    assert (s.serve_port, s.serve_partition_ids, s.worker_metrics_urls, s.serve_recent_events) == (
        9000, [0, 2], ["http://a", "http://b"], 0)

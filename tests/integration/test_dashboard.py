"""The dashboard in a real browser: headless Chromium loads ``/`` of a serve process over the
session's broker, and the numbers it shows match /metrics. Skipped (not failed) where no
Chromium is installed (CI installs nothing beyond pip).

``UPDATE_DASHBOARD_PNG=1`` also writes the screenshot to docs/dashboard.png (after a longer
stream of lists, so the chart has a few points).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from serve_process import ROOT, ServeProcess, rec

from streams.kafka import client_config, ensure_topics
from streams.settings import Settings

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium) to "
                                "load the dashboard in a real browser")


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--hide-scrollbars", "--virtual-time-budget=8000", *args],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def stream_lists(settings: Settings, seconds: float, rate: float = 200.0) -> None:
    """Lists for u0..u499 at ``rate``/s, each reflecting an event 10-90 ms before it was published."""
    from confluent_kafka import Producer

    p = Producer(client_config(settings, "producer", **{"linger.ms": 5}))
    rng = random.Random(0)
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        user = f"u{rng.randrange(500)}" if n else "u1"  # u1 first: the user the page looks up
        items = [f"i{rng.randrange(300)}" for _ in range(10)]
        now = time.time()
        p.produce(settings.recommendations_topic, rec(user, items, published_at=now,
                                                      model="20261206T0800Z" if n % 4 else "20261205T0800Z",
                                                      sources=[["foldin"], ["covisit", "foldin"]] + [None] * 8,
                                                      last_event_at=now - rng.uniform(0.01, 0.09)), user.encode())
        p.poll(0)
        n += 1
        time.sleep(max(0.0, n / rate - (time.time() - (end - seconds))))
    p.flush(10)


def metric_values(text: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_dashboard_shows_what_metrics_says(settings: Settings, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    ensure_topics(settings)
    p = Producer(client_config(settings, "producer", **{"linger.ms": 0}))
    p.produce(settings.items_topic, b'{"item_id": "i1", "event": "unavailable"}', b"i1")
    p.produce(settings.dlq_topic, b'{"reason": "test"}')
    p.produce(settings.recommendations_topic, rec("gone", ["i1"]), b"gone")
    p.produce(settings.recommendations_topic, None, b"gone")
    assert p.flush(10) == 0
    srv = ServeProcess(settings, tmp_path / "serve.log")
    try:
        srv.wait_ready()
        # serve keeps the events topic's newest messages from the time it started
        p.produce(settings.events_topic, b'{"user_id": "u1", "item_id": "i7", "type": "view", "time": 1.8e9}', b"u1")
        assert p.flush(10) == 0
        long_run = os.environ.get("UPDATE_DASHBOARD_PNG") == "1"
        if long_run:  # a screenshot with some history in the chart
            feeder = threading.Thread(target=stream_lists, args=(settings, 60.0, 150.0))
            feeder.start()
            time.sleep(50)
            shot = tmp_path / "dashboard.png"
            chromium("--window-size=1280,1000", f"--screenshot={shot}", f"{srv.url}/?user=u1")
            feeder.join()
        else:
            stream_lists(settings, 2.0)
        # every list read (nothing in flight) before the page and /metrics are compared
        deadline = time.monotonic() + 20
        while srv.request("/v1/dashboard")[1]["lag"] != 0 or srv.request("/v1/users/u1/recommendations")[0] != 200:
            assert time.monotonic() < deadline, srv.request("/v1/dashboard")[1]["lag"]
            time.sleep(0.2)
        time.sleep(1.0)

        dom = chromium("--dump-dom", f"{srv.url}/?user=u1")
        metrics = metric_values(srv.request("/metrics")[1])
        assert 'data-loaded="1"' in dom, dom[:3000]
        shown = {m.group(1): m.group(2) for m in re.finditer(
            r'<div class="v" id="[a-z_]+" data-metric="([a-z_]+)">([^<]*)</div>', dom)}
        assert set(shown) >= {"freshrec_serve_lists", "freshrec_serve_lists_received_total", "freshrec_serve_lag",
                              "freshrec_serve_dlq_messages", "freshrec_serve_erased_users",
                              "freshrec_serve_unavailable_items"}, shown
        for series, text in shown.items():
            assert float(text.replace(",", "")) == metrics[series], (series, text, metrics[series])
        assert metrics["freshrec_serve_dlq_messages"] == 1 and metrics["freshrec_serve_erased_users"] == 1
        assert metrics["freshrec_serve_lists"] > 100
        for version in ("20261206T0800Z", "20261205T0800Z"):  # the model table and its shares
            held = int(metrics['freshrec_serve_model_lists{model_version="%s"}' % version])
            assert f"<td>{version}</td><td>{held:,}</td>" in dom
        assert "n/a" in dom  # no --worker-metrics: live quality says n/a
        assert "u1: " in dom and "i7" in dom  # the user lookup: the list and the recent event
        assert "<canvas" in dom  # the freshness chart was drawn (uPlot, served by this process)
        if long_run:
            shutil.copy(tmp_path / "dashboard.png", ROOT / "docs" / "dashboard.png")
    finally:
        srv.stop()

"""`freshrec demo`, small: its own broker, a worker process, replay, and an honest summary."""

from __future__ import annotations

import json
from pathlib import Path

from streams.cli import main


def test_demo_applies_every_event_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    code = main(["demo", "--users", "300", "--items", "200", "--events", "6000", "--rate", "3000",
                 "--workdir", str(tmp_path / "work"), "--json", str(out), "--quiet", "--device", "cpu"])
    summary = json.loads(out.read_text())
    assert code == 0, summary
    replayed = 6000 - int(6000 * 0.7)
    assert summary["events_produced"] == replayed
    assert summary["events_applied"] == replayed
    assert summary["dlq"] == 3  # the demo's deliberately malformed messages
    assert 0 < summary["users_with_lists"] <= 300
    assert summary["lists_published"] >= summary["users_with_lists"]
    assert summary["latency_ms"]["p50"] is not None and summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    fresh = summary["freshness_ms"]  # received - last_event_at at the demo's subscriber
    assert fresh["p50"] is not None and 0 < fresh["p50"] <= fresh["p99"]
    assert summary["events_per_s"] > 0 and summary["model_version"]
    retrained = summary["retrained"]  # one round of training from the topic, gated
    assert retrained["version"] > summary["model_version"] and isinstance(retrained["promoted"], bool)
    assert retrained["why"] and summary["model_version"] in summary["lists_by_model"]
    if retrained["promoted"]:  # the replay's last third waited for the swap: its lists name the new version
        assert summary["lists_by_model"].get(retrained["version"], 0) > 0, summary["lists_by_model"]
    assert summary["replay_paused_s"] >= 0
    live = summary["live_quality"]  # the worker's published lists against its users' next events
    assert live["k"] == 20 and 0 < live["hits"] <= live["points"]
    assert live["hr"] == round(live["hits"] / live["points"], 4)
    assert summary["model_version"] in live["by_model"]
    served = summary["serve"]  # the demo's own `freshrec serve`, measured over HTTP
    assert served["url"].startswith("http://127.0.0.1:") and served["requests"] == 300
    assert served["ok"] == 300 and 0 < served["get_latency_ms"]["p50"] <= served["get_latency_ms"]["p99"]

"""``freshrec demo``: the whole pipeline on one machine, no arguments needed.

Starts the embedded broker, generates a shop log, trains on its first part,
starts a worker, replays the rest at a steady rate while printing lists as they
update, then stops everything and prints (and with --json writes) a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.events import event_to_json
from model_core.offline.synth import SynthConfig, generate_events
from streams.broker import EmbeddedBroker, free_port
from streams.errors import BrokerUnavailableError, ConfigError
from streams.kafka import client_config
from streams.metrics import scrape
from streams.replay import ReplayStats, replay
from streams.settings import Settings
from streams.tail import RecommendationClient

__all__ = ["add_parser", "run", "run_demo"]

log = logging.getLogger("freshrec.demo")

BAD_EVENTS = [b"{this is not json", b'{"user_id": "u1", "item_id": "i1"}', b'{"user_id": "u2", "item_id": "i2", '
              b'"type": "teleport", "time": 1}']


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline on this machine (broker, data, worker, live lists)",
        description="Start the embedded broker, generate a synthetic shop log, train on its first part, start a "
        "worker, replay the rest at a steady rate and show recommendation lists updating live; then stop "
        "everything cleanly and print a summary (events produced/applied, DLQ, lists, latency p50/p99, "
        "freshness p50/p99 at the subscriber: list received - broker time of the newest event it reflects).",
    )
    p.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    p.add_argument("--items", type=int, default=1000, help="synthetic items (default 1000)")
    p.add_argument("--events", type=int, default=60_000, help="events in the log (default 60000)")
    p.add_argument("--train-fraction", type=float, default=0.75, help="part of the log to train on (0.75)")
    p.add_argument("--rate", type=float, default=1000.0, help="replay rate, events/s (default 1000)")
    p.add_argument("--workdir", default=None, help="keep the log, model and logs here (default: a temp dir)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the summary as JSON")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="model device (default auto)")
    p.add_argument("--quiet", action="store_true", help="no live view, summary only")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 < args.train_fraction < 1:
        raise ConfigError(f"--train-fraction {args.train_fraction} must be between 0 and 1")
    if args.rate <= 0:
        raise ConfigError(f"--rate {args.rate} must be > 0")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="freshrec-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary = run_demo(settings, workdir, SynthConfig(users=args.users, items=args.items, events=args.events),
                       train_fraction=args.train_fraction, rate=args.rate, live=not args.quiet)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["events_applied"] == summary["events_produced"] else 1


def _percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), rounded to 0.1; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)


def _say(live: bool, text: str) -> None:
    if live:
        print(text, file=sys.stderr, flush=True)


def run_demo(base: Settings, workdir: Path, synth: SynthConfig, *, train_fraction: float = 0.75,
             rate: float = 1000.0, live: bool = True) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the summary dict."""
    with EmbeddedBroker(log_path=workdir / "broker.log").start() as broker:
        settings = broker.settings(base).with_(partitions=2, web_port=free_port(), model_poll_s=2.0,
                                               data_dir=str(workdir / "worker-data"))
        _say(live, f"[1/5] embedded broker on {broker.bootstrap} (log: {workdir / 'broker.log'})")

        events = list(generate_events(synth))
        split = int(len(events) * train_fraction)
        replay_log = workdir / "replay.jsonl"
        with open(replay_log, "w") as f:
            f.writelines(event_to_json(ev) + "\n" for ev in events[split:])
        _say(live, f"[2/5] generated {len(events)} events ({synth.users} users, {synth.items} items); "
                   f"training on the first {split}, replaying {len(events) - split}")

        model = train_als(events[:split], ALSConfig(), device=settings.device)
        model.save(workdir / "models")
        _say(live, f"[3/5] trained model {model.version} in {model.metadata['train_seconds']}s")

        env = dict(os.environ, **{f"FRESHREC_{k.upper()}": str(v) for k, v in {
            "brokers": settings.brokers, "profile": "embedded", "topic_prefix": settings.topic_prefix,
            "partitions": settings.partitions, "web_port": settings.web_port, "data_dir": settings.data_dir,
            "device": settings.device, "model_dir": workdir / "models", "metrics_interval_s": 5}.items()})
        worker_log = workdir / "worker.log"
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 90
            while "worker ready" not in worker_log.read_text(errors="replace"):
                if worker.poll() is not None or time.time() > deadline:
                    raise BrokerUnavailableError(f"the worker did not start; see {worker_log}")
                time.sleep(0.2)
            _say(live, f"[4/5] worker ready (log: {worker_log}; metrics: http://127.0.0.1:{settings.web_port}/metrics)")
            return _stream(settings, replay_log, rate, worker, model.version, live)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            _say(live, f"stopped worker (exit {worker.returncode}) and broker; files in {workdir}")


def _stream(settings: Settings, replay_log: Path, rate: float, worker: subprocess.Popen[bytes],
            model_version: str, live: bool) -> dict[str, Any]:
    from confluent_kafka import Producer

    stats: dict[str, ReplayStats] = {}
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            p = Producer(client_config(settings, "producer"))
            for bad in BAD_EVENTS:  # shows the dead-letter path: these must not stop the stream
                p.produce(settings.events_topic, key=b"u1", value=bad)
            p.flush(10)
            stats["replay"] = replay(replay_log, settings, rate=rate)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    client = RecommendationClient(settings)
    started = time.time()
    producer = threading.Thread(target=produce, name="demo-replay", daemon=True)
    producer.start()
    _say(live, f"[5/5] replaying at {rate:.0f} events/s; lists as they arrive (Ctrl-C stops early):")
    last_print, total, last_list = 0.0, 0, started
    fresh_ms: list[float] = []
    try:
        while True:
            rec = client.poll(0.2)
            now = time.time()
            if rec is not None:
                total, last_list = total + 1, now
                if rec.last_event_at is not None:  # freshness as this subscriber sees it
                    fresh_ms.append((now - rec.last_event_at) * 1000.0)
                if live and now - last_print >= 1.0:
                    last_print = now
                    top = ", ".join(i for i in rec.item_ids[:5])
                    print(f"  {now - started:5.1f}s  lists={total:<6} users={len(client.latest):<5} "
                          f"{rec.user_id:>6} ({rec.events_applied} events) -> {top}", file=sys.stderr, flush=True)
            if failure:
                raise failure[0]
            if worker.poll() is not None:
                raise BrokerUnavailableError("the worker stopped during the demo; see its log")
            if not producer.is_alive() and "replay" in stats:
                metrics = scrape(settings.web_port)
                sent = stats["replay"].delivered
                if metrics.get("freshrec_events_applied_total", 0) >= sent and last_list < now - 1.0:
                    break
                if now - started > 600:
                    log.warning("stopping: the worker has not applied every event after 10 minutes")
                    break
    finally:
        client.close()
    elapsed = last_list - started
    metrics = scrape(settings.web_port)
    sent = stats["replay"].delivered
    return {
        "events_produced": sent,
        "events_applied": int(metrics.get("freshrec_events_applied_total", 0)),
        "dlq": int(metrics.get("freshrec_dlq_total", 0)),
        "users_with_lists": len(client.latest),
        "lists_published": int(metrics.get("freshrec_lists_out_total", 0)),
        "latency_ms": {"p50": metrics.get('freshrec_latency_ms{quantile="0.5"}'),
                       "p99": metrics.get('freshrec_latency_ms{quantile="0.99"}')},
        "freshness_ms": {"p50": _percentile(fresh_ms, 50), "p99": _percentile(fresh_ms, 99)},
        "events_per_s": round(sent / elapsed, 1) if elapsed > 0 else None,
        "model_version": model_version,
    }

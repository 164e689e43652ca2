"""``freshrec demo``: the whole pipeline on one machine, no arguments needed.

Starts the embedded broker, generates a shop log, trains on its first part and
puts that part on the events topic as the shop's history (the worker group
starts after it), starts a worker, replays the rest at a steady rate while
printing lists as they update, retrains once from the topic during the replay
(the gate decides; the worker swaps a promoted version in and the lists name
it; the replay's last third waits for the retrain and the swap, so it shows), then stops everything and prints (and with --json writes) a summary, with the
worker's live quality (its published lists' HR@K against the users' next events, from
its /metrics).
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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_core.config import ALSConfig
from model_core.events import Event, event_to_json
from streams.broker import EmbeddedBroker, free_port
from streams.errors import BrokerUnavailableError, ConfigError
from streams.heap import freeze_long_lived
from streams.kafka import client_config, ensure_topics, produce
from streams.recommendation_client import RecommendationClient
from streams.settings import Settings

if TYPE_CHECKING:  # torch, FAISS and Faust load when the demo runs, not when the CLI parses its flags
    from model_core.offline.synth import SynthConfig
    from streams.cli.replay import ReplayStats


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {series: value} (``streams.worker.metrics.scrape``)."""
    from streams.worker.metrics import scrape as _scrape

    return _scrape(port)

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
    p.add_argument("--train-fraction", type=float, default=0.7, help="part of the log to train on (0.7)")
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
    from model_core.offline.synth import SynthConfig

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


def run_demo(base: Settings, workdir: Path, synth: SynthConfig, *, train_fraction: float = 0.7,
             rate: float = 1000.0, live: bool = True) -> dict[str, Any]:
    """Run the demo in ``workdir``; returns the summary dict."""
    from model_core.als import train_als
    from model_core.offline.synth import generate_events

    with EmbeddedBroker(log_path=workdir / "broker.log").start() as broker:
        settings = broker.settings(base).with_(partitions=2, web_port=free_port(), model_poll_s=2.0,
                                               data_dir=str(workdir / "worker-data"))
        _say(live, f"[1/5] embedded broker on {broker.bootstrap} (log: {workdir / 'broker.log'})")

        events = list(generate_events(synth))
        split = int(len(events) * train_fraction)
        # the replay in two parts: the second waits for the retrain, so the lists show the swap
        rest = events[split:]
        replay_logs = (workdir / "replay-1.jsonl", workdir / "replay-2.jsonl")
        for path, part in zip(replay_logs, (rest[: len(rest) * 2 // 3], rest[len(rest) * 2 // 3:])):
            with open(path, "w") as f:
                f.writelines(event_to_json(ev) + "\n" for ev in part)
        _say(live, f"[2/5] generated {len(events)} events ({synth.users} users, {synth.items} items); "
                   f"training on the first {split}, replaying {len(events) - split}")

        model = train_als(events[:split], ALSConfig(), device=settings.device)
        model.save(workdir / "models")
        _seed_history(settings, events[:split])
        _say(live, f"[3/5] trained model {model.version} in {model.metadata['train_seconds']}s; its events are "
                   f"on {settings.events_topic} as the shop's history")

        env = dict(os.environ, **{f"FRESHREC_{k.upper()}": str(v) for k, v in {
            "brokers": settings.brokers, "profile": "embedded", "topic_prefix": settings.topic_prefix,
            "partitions": settings.partitions, "web_port": settings.web_port, "data_dir": settings.data_dir,
            "device": settings.device, "model_dir": workdir / "models", "metrics_interval_s": 5,
            "model_poll_s": 1}.items()})
        worker_log = workdir / "worker.log"
        serve: subprocess.Popen[bytes] | None = None
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 90
            # ready, and owning every partition: the group join takes seconds, and events sent
            # before it would wait for it (the first lists' freshness would be the join's)
            while not ("worker ready" in (text := worker_log.read_text(errors="replace"))
                       and text.count(" starts at offset ") >= settings.partitions):
                if worker.poll() is not None or time.time() > deadline:
                    raise BrokerUnavailableError(f"the worker did not start; see {worker_log}")
                time.sleep(0.2)
            _say(live, f"[4/5] worker ready (log: {worker_log}; metrics: http://127.0.0.1:{settings.web_port}/metrics)")
            serve, serve_url = _start_serve(env, settings, workdir / "serve.log")
            print(f"serve: {serve_url}/ (dashboard), {serve_url}/docs (API); log: {workdir / 'serve.log'}",
                  file=sys.stderr, flush=True)
            # retrain once a sixth of the replay is applied (the gate needs events the model has not seen)
            summary = _stream(settings, replay_logs, rate, worker, model.version, live, workdir / "models",
                              retrain_after=max(1, (len(events) - split) // 6))
            summary["serve"] = {"url": serve_url, **_measure_serve(serve_url, summary.pop("_users"))}
            return summary
        finally:
            if serve is not None and serve.poll() is None:
                serve.send_signal(signal.SIGTERM)
                try:
                    serve.wait(15)
                except subprocess.TimeoutExpired:
                    serve.kill()
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            _say(live, f"stopped worker (exit {worker.returncode}) and broker; files in {workdir}")


def _start_serve(env: dict[str, str], settings: Settings, log_path: Path,
                 timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """``freshrec serve`` on a free port (same broker and topics); returns it and its URL once ready."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--port", str(port),
                                 "--worker-metrics", f"http://127.0.0.1:{settings.web_port}/metrics"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise BrokerUnavailableError(f"serve did not get ready; see {log_path}")
        time.sleep(0.2)


def _measure_serve(url: str, users: list[str], requests: int = 300) -> dict[str, Any]:
    """``requests`` sequential GETs of users' lists over one keep-alive connection: latency p50/p99 (ms)."""
    import http.client
    import random
    from urllib.parse import quote, urlsplit

    if not users:
        return {"requests": 0, "get_latency_ms": {"p50": None, "p99": None}}
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    rng = random.Random(0)
    times, ok = [], 0
    try:
        for _ in range(requests):
            start = time.perf_counter()
            conn.request("GET", f"/v1/users/{quote(rng.choice(users), safe='')}/recommendations?k=10")
            r = conn.getresponse()
            r.read()
            times.append((time.perf_counter() - start) * 1000.0)
            ok += r.status == 200
    finally:
        conn.close()
    times.sort()
    return {"requests": requests, "ok": ok, "get_latency_ms": {
        "p50": round(times[len(times) // 2], 2), "p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2)}}


def _seed_history(settings: Settings, events: list[Event]) -> None:
    """Put the training events on the events topic (the history a shop's topic holds) and
    commit the worker group's offsets after them: the worker starts with the new events."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            raise BrokerUnavailableError(f"could not write the history: {err}")
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    ensure_topics(settings)
    p = Producer(client_config(settings, "producer"))  # the embedded profile's linger: few, large batches
    for ev in events:
        produce(p, settings.events_topic, event_to_json(ev).encode(), ev.user_id.encode(), on_delivery=delivered)
        p.poll(0)
    if p.flush(60) != 0:
        raise BrokerUnavailableError("could not write the history to the events topic")
    c = Consumer(client_config(settings, "consumer", **{"group.id": settings.group, "enable.auto.commit": False}))
    try:  # exact end offsets from the delivery reports (the embedded broker under-reports its own)
        c.commit(offsets=[TopicPartition(settings.events_topic, part, end) for part, end in ends.items()],
                 asynchronous=False)
    finally:
        c.close()


RETRAIN_NICE = 10
"""The demo's retrain runs in a process of its own at this niceness: on a small machine the
training and the gate's replay must not take the worker's cores (the lists' freshness)."""


def _retrain(settings: Settings, models: Path) -> dict[str, Any]:
    """One round of `freshrec train --from-topic` (the gate included), as the trainer runs it, in
    a lower-priority process of its own (a trainer is a process of its own in a deployment too)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice,
                             initargs=(RETRAIN_NICE,)) as pool:
        return pool.submit(_train_round, settings, models).result()


def _train_round(settings: Settings, models: Path) -> dict[str, Any]:
    from streams.cli.trainer import TrainOptions, train_from_topic

    return train_from_topic(settings, ALSConfig(), models, TrainOptions(holdout=600, warmup=2000, keep=0))


def _stream(settings: Settings, replay_logs: tuple[Path, Path], rate: float, worker: subprocess.Popen[bytes],
            model_version: str, live: bool, models: Path, retrain_after: int) -> dict[str, Any]:
    """Replay the first log; wait for the retrain (and, when its version is promoted, for the
    worker to swap it in); replay the second; follow the lists all along."""
    from confluent_kafka import Producer

    from streams.cli.replay import replay
    from streams.worker.metrics import live_quality

    stats: dict[str, ReplayStats] = {}
    failure: list[BaseException] = []
    retrained: dict[str, Any] = {}
    paused: list[float] = []  # seconds the replay waited for the retrain and the swap

    def retrain() -> None:
        try:
            while scrape(settings.web_port).get("freshrec_events_applied_total", 0) < retrain_after:
                if failure or worker.poll() is not None:
                    return
                time.sleep(0.2)
            retrained.update(_retrain(settings, models))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    def produce() -> None:
        try:
            p = Producer(client_config(settings, "producer"))
            for bad in BAD_EVENTS:  # shows the dead-letter path: these must not stop the stream
                p.produce(settings.events_topic, key=b"u1", value=bad)
            p.flush(10)
            first = replay(replay_logs[0], settings, rate=rate)
            t0 = time.time()
            if trainer.is_alive():
                _say(live, f"  {t0 - started:5.1f}s  replayed {first.delivered} events; the rest waits for the "
                           "retrain (training, then the gate replays both versions on the newest events)")
            trainer.join(300)  # the gate takes seconds to tens of seconds on a busy machine
            if retrained.get("promoted"):
                deadline = time.time() + 60
                while scrape(settings.web_port).get("freshrec_model_swaps_total", 0) < 1 and time.time() < deadline:
                    if failure or worker.poll() is not None:
                        return
                    time.sleep(0.2)
            paused.append(time.time() - t0)
            second = replay(replay_logs[1], settings, rate=rate)
            stats["replay"] = replace(second, sent=first.sent + second.sent, delivered=first.delivered + second.delivered,
                                      failed=first.failed + second.failed, skipped=first.skipped + second.skipped,
                                      seconds=first.seconds + second.seconds)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    client = RecommendationClient(settings)
    freeze_long_lived("the demo's setup")  # this process is the subscriber that measures freshness
    started = time.time()
    trainer = threading.Thread(target=retrain, name="demo-retrain", daemon=True)
    producer = threading.Thread(target=produce, name="demo-replay", daemon=True)
    trainer.start()
    producer.start()
    _say(live, f"[5/5] replaying at {rate:.0f} events/s, retraining from the topic after {retrain_after} events "
               "(the last third of the replay waits for it); lists as they arrive (Ctrl-C stops early):")
    last_print, total, last_list = 0.0, 0, started
    fresh_ms: list[float] = []
    by_model: dict[str, int] = {}
    said_retrain = False
    try:
        while True:
            rec = client.poll(0.2)
            now = time.time()
            if retrained and not said_retrain:
                said_retrain = True
                _say(live, f"  {now - started:5.1f}s  retrained from {settings.events_topic}: model "
                           f"{retrained['version']} {'promoted' if retrained['promoted'] else 'kept back'} "
                           f"({retrained['gate']['why']})")
            if rec is not None:
                total, last_list = total + 1, now
                by_model[rec.model_version] = by_model.get(rec.model_version, 0) + 1
                if rec.last_event_at is not None:  # freshness as this subscriber sees it
                    fresh_ms.append((now - rec.last_event_at) * 1000.0)
                if live and now - last_print >= 1.0:
                    last_print = now
                    top = ", ".join(i for i in rec.item_ids[:5])
                    print(f"  {now - started:5.1f}s  lists={total:<6} users={len(client.latest):<5} "
                          f"{rec.user_id:>6} ({rec.events_applied} events) -> {top}  [model {rec.model_version}]",
                          file=sys.stderr, flush=True)
            if failure:
                raise failure[0]
            if worker.poll() is not None:
                raise BrokerUnavailableError("the worker stopped during the demo; see its log")
            if not producer.is_alive() and "replay" in stats and not trainer.is_alive():
                metrics = scrape(settings.web_port)
                sent = stats["replay"].delivered
                if metrics.get("freshrec_events_applied_total", 0) >= sent and last_list < now - 1.0:
                    break
                if now - started > 600:
                    log.warning("stopping: the worker has not applied every event after 10 minutes")
                    break
    finally:
        client.close()
    elapsed = last_list - started - sum(paused)
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
        "retrained": {"version": retrained.get("version"), "promoted": retrained.get("promoted"),
                      "why": retrained.get("gate", {}).get("why"), "seconds": retrained.get("seconds")},
        "lists_by_model": by_model,
        "replay_paused_s": round(sum(paused), 1),  # waiting for the retrain and the swap (not in events_per_s)
        # the worker's published lists against its users' next events: HR@k as served
        "live_quality": {"k": settings.k, **live_quality(metrics)},
        "_users": sorted(client.latest)[:1000],
    }

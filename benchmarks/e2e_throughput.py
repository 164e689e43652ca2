"""End-to-end throughput of freshrec workers against the ceiling of their own events consumer.

    python -m benchmarks.e2e_throughput [--items 100000] [--events 100000] [--users 20000]
        [--workers 1|2] [--json OUT] [--rate 1000] [--freshness-seconds 20]
        [--profile-worker PREFIX] [--profile-ceiling PREFIX]

One run, one embedded broker (Tansu, started here), one replayed backlog:

1. **backlog**: a synthetic shop log (``model_core.offline.synth``) of ``--items`` items and
   ``--users`` users; a model is trained on its first part (plus one view of every item
   the training part misses, so the index holds the whole catalogue); the next
   ``--events`` events, their times mapped into the last day, are produced to a fresh
   events topic (key = user_id, ``streams.codec.encode_event``) before anything consumes.
2. **ceiling** (freshrec's own ingest): ``benchmarks._ceiling_agent`` runs the worker's
   events consumer (``streams.worker.consumer.EventConsumer``: librdkafka, one thread,
   micro-batches of the worker's size and window, offset checks, commits) with a
   ``process`` that only counts (no decoding, no state, no model, no output), in a process
   of its own and its own consumer group: events/s from its first to its last batch
   (``ceiling_ev_s``; ``ceiling_of`` says what was measured, since results before the
   consumer, d85f748 and older, measured the worker's Faust app with an empty agent).
   It runs ``--ceiling-runs`` times (default 3; the median counts): on a shared 2-core
   machine one short drain varies by tens of per cent.
   Then, unless ``--no-stock-ceiling``, **a plain Faust agent** on the same backlog
   (``_ceiling_agent ... stock``: a stock Faust app, Faust's ``kafka://`` transport and
   ``stream.take_events``, counting; ``faust_stock_ceiling_ev_s``), once.
   Then **the model alone** (``benchmarks._model_only``): the backlog through a worker's
   compute (``WorkerModel.plan``, then its delta records applied, per micro-batch of the worker's size, each
   event applied to its user's history first as ``BatchProcessor.apply`` does, one thread)
   with no Kafka, in a process of its own: no worker drains faster than this per process
   (``model_only_ev_s``).
3. **workers**: ``--workers`` ``freshrec worker`` processes in a fresh group drain the same
   backlog: events/s from the first applied event to the last (``/metrics``
   ``freshrec_events_applied_total``, summed over workers, scraped every 0.2 s).
4. **freshness**: new events at a steady ``--rate`` for ``--freshness-seconds`` while the
   workers run; a ``RecommendationClient(from_beginning=False)`` takes, per list received,
   (time received) - ``rec.last_event_at`` (broker timestamp of the newest event the list
   reflects): p50/p99 in ms; split at the list's ``published_at`` into the worker's share
   (event on the broker -> list published: fetch, micro-batch, compute) and the delivery
   (list published -> received: flush and the subscriber's fetch); and, from the workers'
   ``/metrics``, the micro-batches of this phase: events per batch, mean compute and
   publish milliseconds.
   The workers' live quality (``freshrec_live_hits_total`` / ``freshrec_live_points_total``:
   their published lists against their users' next events, HR@``FRESHREC_K``) at the end,
   summed and per worker (``live_quality``).
5. **footprint**: peak RSS (``VmHWM``) of each worker; the state changelog read from the
   start, mean value size of the latest record per user.

Writes JSON to --json (default benchmarks/results/e2e_throughput.json) and prints a
summary; progress goes to stderr. ``--profile-worker PREFIX`` runs py-spy on the first
worker while it drains (PREFIX.svg flame graph, PREFIX.txt top functions); the profiler
costs the worker some throughput, so compare profiled runs' figures with care.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/e2e_throughput.py` from anywhere
    sys.path.insert(0, str(ROOT))

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.events import Event, EventType, event_to_json
from model_core.offline.synth import SynthConfig, generate_events
from streams.broker import EmbeddedBroker, free_port
from streams.cli.replay import wait_until
from streams.codec import encode_event
from streams.kafka import client_config, ensure_topics, produce
from streams.settings import Settings, load_settings
from streams.worker.metrics import live_quality, scrape

DAY = 86400.0
CEILING_OF = "EventConsumer"
"""What ``ceiling_ev_s`` measured: the worker's librdkafka events consumer with a counting ``process``
(results without this key: the worker's Faust app with an agent that only took batches)."""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 1)


# ---------------------------------------------------------------------- processes


class Procs:
    """Every subprocess this run starts, stopped in reverse order at the end (or on Ctrl-C)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def proc_env(settings: Settings, **override: Any) -> dict[str, str]:
    """FRESHREC_* for every setting (the subprocess sees exactly these settings)."""
    env = dict(os.environ)
    env.update({f"FRESHREC_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(Settings)})
    env.update({f"FRESHREC_{k.upper()}": str(v) for k, v in override.items()})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def vm(pid: int, key: str) -> float | None:
    """VmHWM / VmRSS of a process in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def applied(ports: list[int]) -> int:
    total = 0
    for port in ports:
        try:
            total += int(scrape(port).get("freshrec_events_applied_total", 0))
        except OSError:
            pass  # web server not up yet
    return total


class Profiler:
    """py-spy on one process: a flame graph (SVG) and raw folded stacks for the text summary."""

    RATE = 100

    def __init__(self, pid: int, prefix: str, procs: Procs, logdir: Path) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        exe = str(spy) if spy.exists() else "py-spy"
        self.prefix = prefix
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.raw = logdir / (Path(prefix).name + ".folded")
        common = ["record", "--pid", str(pid), "--rate", str(self.RATE), "--nonblocking", "--threads"]
        self.spies = [
            procs.start([exe, *common, "--format", "flamegraph", "-o", prefix + ".svg"], dict(os.environ),
                        logdir / "py-spy-svg.log"),
            procs.start([exe, *common, "--format", "raw", "-o", str(self.raw)], dict(os.environ),
                        logdir / "py-spy-raw.log"),
        ]
        self.t0 = time.time()
        self.seconds = 0.0

    def stop(self, procs: Procs) -> None:
        self.seconds = time.time() - self.t0
        for spy in self.spies:
            procs.stop(spy, signal.SIGINT, timeout=30)

    def summarize(self, title: str, events: int, top: int = 25) -> str:
        from benchmarks._profile_summary import summarize

        text = summarize(self.raw.read_text(), rate=self.RATE, seconds=self.seconds, events=events, top=top,
                         title=title)
        Path(self.prefix + ".txt").write_text(text)
        return text


# ---------------------------------------------------------------------- phases


def make_logs(args: argparse.Namespace) -> tuple[list[Event], list[Event], list[Event]]:
    """(training events incl. catalogue coverage, backlog, fresh events for the freshness phase)."""
    n_train = max(3 * args.items, 2 * args.events)
    n_fresh = int(args.rate * args.freshness_seconds) + 1
    synth = SynthConfig(users=args.users, items=args.items, events=n_train + args.events + n_fresh,
                        clusters=max(20, args.items // 500), seed=args.seed)
    t = time.time()
    log = list(generate_events(synth))
    train, backlog, fresh = log[:n_train], log[n_train:n_train + args.events], log[n_train + args.events:]
    seen = {e.item_id for e in train}
    t_end = train[-1].time
    missing = [f"i{i}" for i in range(args.items) if f"i{i}" not in seen]
    # one view of each item the training part never shows, so the model (and the index) knows the catalogue
    train += [Event(f"u{j % args.users}", item, EventType.VIEW, t_end, event_id=f"cov{j}")
              for j, item in enumerate(missing)]
    say(f"log: {len(train)} training events ({len(missing)} catalogue-coverage views), {len(backlog)} backlog, "
        f"{len(fresh)} fresh; {args.users} users, {args.items} items ({time.time() - t:.1f}s)")
    # backlog event times mapped into the last day before now (the worker rejects times > 1 day in the future)
    now = time.time()
    lo, hi = backlog[0].time, backlog[-1].time
    span = max(hi - lo, 1.0)
    backlog = [replace(e, time=now - DAY + 120 + (e.time - lo) / span * (DAY - 240)) for e in backlog]
    return train, backlog, fresh


def produce_backlog(settings: Settings, backlog: list[Event]) -> float:
    from confluent_kafka import Producer

    p = Producer(client_config(settings, "producer"))
    t = time.time()
    failed: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(err)

    for ev in backlog:
        produce(p, settings.events_topic, encode_event(ev), ev.user_id.encode(), on_delivery=on_delivery)
        p.poll(0)
    left = p.flush(60)
    if left or failed:
        raise RuntimeError(f"backlog: {left} not acknowledged, {len(failed)} failed (e.g. {failed[:1]})")
    return time.time() - t


def run_ceiling(settings: Settings, n: int, procs: Procs, workdir: Path, profile: str | None,
                run: int = 0, stock: bool = False) -> dict[str, Any]:
    name = f"ceiling{run}{'-stock' if stock else ''}"
    group = f"{settings.group}-{name}"  # a fresh group: reads the backlog from the start
    status = workdir / f"{name}.json"
    env = proc_env(settings, web_port=free_port())
    log = workdir / f"{name}.log"
    t_start = time.time()
    proc = procs.start([sys.executable, "-m", "benchmarks._ceiling_agent", group, str(n), str(status)]
                       + (["stock"] if stock else []), env, log)
    spy = None
    st: dict[str, Any] = {}
    last_say = 0.0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the ceiling agent exited ({proc.returncode}); see {log}")
            if time.time() - t_start > 600:
                raise RuntimeError(f"the ceiling agent consumed {st.get('count')} of {n} events in 10 min; see {log}")
            try:
                st = json.loads(status.read_text())
            except (OSError, ValueError):
                st = {}
            if profile and spy is None and st.get("first"):
                spy = Profiler(proc.pid, profile, procs, workdir)
            if st.get("done"):
                break
            if time.time() - last_say > 5:
                last_say = time.time()
                say(f"ceiling: {st.get('count', 0)}/{n} events consumed")
            time.sleep(0.05)
    finally:
        if spy is not None:
            spy.stop(procs)
        rss = vm(proc.pid, "VmHWM")
        procs.stop(proc)
    rate = (st["count"] - st["first_batch"]) / (st["last"] - st["first"])
    out = {"ev_s": round(rate, 1), "seconds": round(st["last"] - st["first"], 2),
           "start_to_first_s": round(st["first"] - t_start, 2), "events": st["count"], "rss_mb": rss}
    if st.get("assigned"):  # own consumer: the rate with the fetch counted, from the assignment
        out["ev_s_from_assignment"] = round(st["count"] / max(st["last"] - st["assigned"], 1e-9), 1)
        out["assigned_to_first_s"] = round(st["first"] - st["assigned"], 3)
    say(f"ceiling: {st['count']} events in {out['seconds']}s -> {out['ev_s']} ev/s")
    if spy is not None:
        spy.summarize(f"ceiling agent (benchmarks/_ceiling_agent.py), {st['count']} events", st["count"])
    return out


def run_model_only(settings: Settings, backlog: list[Event], procs: Procs, workdir: Path) -> dict[str, Any]:
    """``benchmarks._model_only`` on the backlog: a worker's compute alone, in a process of its own."""
    events, out = workdir / "backlog.jsonl", workdir / "model_only.json"
    events.write_text("".join(event_to_json(e) + "\n" for e in backlog))
    log = workdir / "model_only.log"
    say(f"model alone: {len(backlog)} events through a worker's compute, no Kafka")
    proc = procs.start([sys.executable, "-m", "benchmarks._model_only", str(events), str(out)],
                       proc_env(settings), log)
    try:
        rc = proc.wait(timeout=900)
    finally:
        procs.stop(proc)
    if rc != 0:
        raise RuntimeError(f"the model-alone run exited ({rc}); see {log}")
    result: dict[str, Any] = json.loads(out.read_text())
    say(f"model alone: {result['events']} events in {result['seconds']}s -> {result['ev_s']} ev/s")
    return result


def read_changelog(settings: Settings, idle: float = 3.0) -> dict[str, Any]:
    """Latest record per user key in the state changelog (recovery markers skipped)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(client_config(settings, "consumer", **{"group.id": f"bench-changelog-{uuid.uuid4().hex[:8]}",
                                                         "enable.auto.commit": False}))
    try:
        topic = settings.state_topic
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        latest: dict[bytes, int | None] = {}
        records = total = 0
        last = time.time()
        while time.time() - last < idle:
            msg = c.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            last = time.time()
            key, value = msg.key() or b"", msg.value()
            records += 1
            total += len(value or b"")
            if key.startswith(b"\x00"):
                continue
            latest[key] = None if value is None else len(value)
    finally:
        c.close()
    sizes = [v for v in latest.values() if v is not None]
    return {"records": records, "bytes_total": total, "users": len(sizes),
            "bytes_per_user": round(statistics.fmean(sizes), 1) if sizes else None,
            "bytes_per_user_p50": statistics.median(sizes) if sizes else None,
            "bytes_per_user_max": max(sizes) if sizes else None}


def freshness(settings: Settings, fresh: list[Event], rate: float, ports: list[int],
              applied_before: int) -> dict[str, Any]:
    """Produce ``fresh`` at ``rate`` ev/s (event time = now) while a subscriber measures received - last_event_at."""
    from confluent_kafka import Producer

    from streams.recommendation_client import RecommendationClient

    client = RecommendationClient(settings, from_beginning=False)
    lat_ms: list[float] = []
    worker_ms: list[float] = []  # event on the broker -> list published (the worker's share)
    delivery_ms: list[float] = []  # list published -> received (the output topic's hop)
    stop = threading.Event()
    t_start = time.time()

    def listen() -> None:
        while not stop.is_set():
            rec = client.poll(0.1)
            if rec is not None and rec.last_event_at is not None and rec.last_event_at >= t_start:
                now = time.time()
                lat_ms.append((now - rec.last_event_at) * 1000.0)
                worker_ms.append((rec.published_at - rec.last_event_at) * 1000.0)
                delivery_ms.append((now - rec.published_at) * 1000.0)

    thread = threading.Thread(target=listen, name="bench-subscriber", daemon=True)
    thread.start()
    before = [scrape(port) for port in ports]
    p = Producer(client_config(settings, "producer"))
    try:
        t0 = time.monotonic()
        last_say = t0
        for i, ev in enumerate(fresh):
            wait_until(p, t0 + i / rate)
            ev = replace(ev, time=time.time())
            p.produce(settings.events_topic, key=ev.user_id.encode(), value=encode_event(ev))
            if i == 0:  # a new producer holds its first messages ~0.5 s: pace from its first delivery
                p.flush(30)
                t0 = time.monotonic()
            p.poll(0)
            if time.monotonic() - last_say > 5:
                last_say = time.monotonic()
                say(f"freshness: {i + 1}/{len(fresh)} produced, {len(lat_ms)} lists, "
                    f"p50 so far {pct(lat_ms, 50)} ms")
        p.flush(30)
        produce_s = time.monotonic() - t0
        target = applied_before + len(fresh)
        deadline = time.time() + 120
        while applied(ports) < target and time.time() < deadline:
            time.sleep(0.2)
        caught_up = time.monotonic() - t0 - produce_s  # after the last event was produced
        time.sleep(1.0)  # the last lists reach the subscriber
        after = [scrape(port) for port in ports]
    finally:
        stop.set()
        thread.join(5)
        client.close()

    def delta(series: str) -> float:
        return sum(a.get(series, 0.0) - b.get(series, 0.0) for a, b in zip(after, before))

    batches = delta("freshrec_batches_total")
    cycle = {"batches": int(batches), "events_per_batch": round(delta("freshrec_events_in_total") / batches, 1)
             if batches else None}
    for stage in ("compute", "publish"):
        n = delta(f'freshrec_batch_stage_seconds_count{{stage="{stage}"}}')
        cycle[f"{stage}_ms_mean"] = round(1000.0 * delta(f'freshrec_batch_stage_seconds_sum{{stage="{stage}"}}') / n,
                                          1) if n else None
    return {"p50": pct(lat_ms, 50), "p90": pct(lat_ms, 90), "p99": pct(lat_ms, 99),
            "max": round(max(lat_ms), 1) if lat_ms else None, "lists": len(lat_ms), "events": len(fresh),
            "worker_ms": {"p50": pct(worker_ms, 50), "p99": pct(worker_ms, 99)},
            "delivery_ms": {"p50": pct(delivery_ms, 50), "p99": pct(delivery_ms, 99)}, "batch": cycle,
            "rate": rate, "produce_s": round(produce_s, 2), "all_applied_after_s": round(caught_up, 2),
            "all_applied": applied(ports) >= target}


# ---------------------------------------------------------------------- main


def git_commit() -> str | None:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    try:
        head, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return None
    return head + ("-dirty" if dirty else "") if head else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: workers, agents, profilers, broker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size (default 100000)")
    ap.add_argument("--events", type=int, default=100_000, help="backlog events (default 100000)")
    ap.add_argument("--users", type=int, default=20_000, help="users (default 20000)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the run's topics (default 4)")
    ap.add_argument("--rate", type=float, default=1000.0, help="freshness phase: events/s (default 1000)")
    ap.add_argument("--freshness-seconds", type=float, default=20.0, help="freshness phase length (default 20)")
    ap.add_argument("--ceiling-runs", type=int, default=3,
                    help="ceiling drains of the backlog, each in a fresh group; the median counts (default 3)")
    ap.add_argument("--device", default="cpu", help="worker device (default cpu)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic log seed (default 0)")
    ap.add_argument("--json", default="benchmarks/results/e2e_throughput.json", help="output JSON path")
    ap.add_argument("--workdir", default=None, help="keep logs and the model here (default: a temp dir)")
    ap.add_argument("--profile-worker", default=None, metavar="PREFIX",
                    help="py-spy the first worker while it drains: PREFIX.svg and PREFIX.txt")
    ap.add_argument("--no-stock-ceiling", dest="stock_ceiling", action="store_false",
                    help="skip the plain-Faust comparison drain (Faust's transport and take_events)")
    ap.add_argument("--profile-ceiling", default=None, metavar="PREFIX",
                    help="py-spy the ceiling agent while it drains: PREFIX.svg and PREFIX.txt")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.workers > args.partitions:
        ap.error(f"--workers must be between 1 and --partitions ({args.partitions})")

    t_run = time.time()
    load_start = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="freshrec-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"workdir {workdir}")
    train, backlog, fresh = make_logs(args)
    t = time.time()
    model = train_als(train, ALSConfig(), device=args.device)
    model.save(workdir / "models")
    train_s = time.time() - t
    say(f"model {model.version}: {len(model.item_ids)} items, {len(model.user_ids)} users ({train_s:.1f}s)")
    del train

    run_id = uuid.uuid4().hex[:8]
    procs = Procs()
    out: dict[str, Any] = {}
    try:
        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            settings = broker.settings(load_settings({})).with_(
                topic_prefix=f"bench{run_id}", group=f"bench{run_id}-worker", partitions=args.partitions,
                device=args.device, model_dir=str(workdir / "models"), web_port=0,
                data_dir=str(workdir / "data"), metrics_interval_s=5.0, log_level="INFO")
            ensure_topics(settings)
            produce_s = produce_backlog(settings, backlog)
            say(f"backlog: {len(backlog)} events produced to {settings.events_topic} in {produce_s:.1f}s")

            # -- (a) the ceiling --------------------------------------------------------------
            ceilings = [run_ceiling(settings, len(backlog), procs, workdir, args.profile_ceiling if r == 0 else None, r)
                        for r in range(args.ceiling_runs)]
            ceiling = dict(min(ceilings, key=lambda c: abs(c["ev_s"] - statistics.median(x["ev_s"] for x in ceilings))))
            ceiling["runs_ev_s"] = [c["ev_s"] for c in ceilings]
            # for comparison: a plain Faust agent (Faust's transport and take_events), once
            stock = run_ceiling(settings, len(backlog), procs, workdir, None, 0, stock=True) if args.stock_ceiling else None

            # -- the model alone: the same backlog through a worker's compute, no Kafka ------------
            model_only = run_model_only(settings, backlog, procs, workdir)

            # -- (b) the workers drain the same backlog -----------------------------------------
            ports = [free_port() for _ in range(args.workers)]
            workers = []
            t_start = time.time()
            for i, port in enumerate(ports):
                env = proc_env(settings, web_port=port, data_dir=workdir / f"data{i}")
                workers.append(procs.start([sys.executable, "-m", "streams.cli", "worker", "--model",
                                            str(workdir / "models")], env, workdir / f"worker{i}.log"))
            n = len(backlog)
            first: tuple[float, int] | None = None
            done_t = None
            spy = None
            last_say = 0.0
            series: list[tuple[float, int]] = []
            while done_t is None:
                for i, w in enumerate(workers):
                    if w.poll() is not None:
                        raise RuntimeError(f"worker {i} exited ({w.returncode}); see {workdir / f'worker{i}.log'}")
                now = time.time()
                if now - t_start > 900:
                    raise RuntimeError("the workers did not drain the backlog in 15 min")
                a = applied(ports)
                series.append((round(now - t_start, 2), a))
                if a > 0 and first is None:
                    first = (now, a)
                    if args.profile_worker:
                        spy = Profiler(workers[0].pid, args.profile_worker, procs, workdir)
                        spy_applied0 = applied(ports[:1])
                if spy is not None and spy.seconds == 0.0 and (now - spy.t0 >= 20 or a >= n):
                    spy_applied1 = applied(ports[:1])
                    spy.stop(procs)
                if a >= n:
                    done_t = now
                    break
                if now - last_say > 5:
                    last_say = now
                    say(f"workers: {a}/{n} events applied")
                time.sleep(0.2)
            assert first is not None
            worker_rate = (n - first[1]) / (done_t - first[0])
            say(f"workers: {n} events applied in {done_t - first[0]:.1f}s -> {worker_rate:.1f} ev/s")
            drain_metrics = [scrape(p) for p in ports]
            profile_text = None
            if spy is not None:
                if spy.seconds == 0.0:
                    spy_applied1 = applied(ports[:1])
                    spy.stop(procs)
                profile_text = spy.summarize(f"freshrec worker draining the backlog ({args.workers} worker(s))",
                                             spy_applied1 - spy_applied0)

            # -- (c) freshness at a steady rate --------------------------------------------------
            say(f"freshness: {len(fresh)} events at {args.rate:.0f} ev/s")
            fresh_out = freshness(settings, fresh, args.rate, ports, applied(ports))
            say(f"freshness: p50 {fresh_out['p50']} ms, p99 {fresh_out['p99']} ms over {fresh_out['lists']} lists")
            final_metrics = [scrape(p) for p in ports]

            # -- (d) footprint -------------------------------------------------------------------
            rss = [vm(w.pid, "VmHWM") for w in workers]
            changelog = read_changelog(settings)
            for w in workers:
                procs.stop(w)
            # assignments: the consumer's "assigned TOPIC[...]" lines (the Faust-based worker's
            # aiokafka logged "Successfully synced group")
            rebalances = sum(len(re.findall(r"Successfully synced group|\bassigned \S+\[",
                                            Path(workdir / f"worker{i}.log").read_text(errors="replace")))
                             for i in range(args.workers))

            out = {
                "ceiling_ev_s": ceiling["ev_s"],
                "ceiling_of": CEILING_OF,
                "faust_stock_ceiling_ev_s": stock["ev_s"] if stock else None,
                "worker_ev_s": round(worker_rate, 1),
                "ratio": round(worker_rate / ceiling["ev_s"], 3),
                "model_only_ev_s": model_only["ev_s"],
                "workers": args.workers,
                "freshness_ms": {"p50": fresh_out["p50"], "p99": fresh_out["p99"]},
                "rss_mb": rss,
                "changelog_bytes_per_user": changelog["bytes_per_user"],
                "events": n, "items": args.items, "users": args.users, "partitions": args.partitions,
                "model_items": len(model.item_ids), "model_users": len(model.user_ids),
                "batch_size": settings.batch_size, "batch_within_s": settings.batch_within_s,
                "profiled": bool(args.profile_worker or args.profile_ceiling),
                "ceiling": ceiling,
                "model_only": model_only,
                "drain": {
                    "seconds": round(done_t - first[0], 2),
                    "start_to_first_applied_s": round(first[0] - t_start, 2),
                    "applied_at_first_scrape": first[1],
                    "batch_size_mean": [round(m.get("freshrec_events_in_total", 0) / max(1, m.get(
                        "freshrec_batches_total", 0)), 1) for m in drain_metrics],
                    "events_applied": [int(m.get("freshrec_events_applied_total", 0)) for m in drain_metrics],
                    "lists_out": sum(int(m.get("freshrec_lists_out_total", 0)) for m in drain_metrics),
                    "dlq": sum(int(m.get("freshrec_dlq_total", 0)) for m in drain_metrics),
                    "batches": sum(int(m.get("freshrec_batches_total", 0)) for m in drain_metrics),
                    "applied_series": series[:: max(1, len(series) // 60)],
                    # the shared item side: every worker applies every worker's deltas; its compute
                    # time per event of the whole stream, per worker
                    "deltas": [{"applied": int(m.get("freshrec_deltas_applied_total", 0)),
                                "seconds": round(m.get('freshrec_batch_stage_seconds_sum{stage="deltas"}', 0.0), 3),
                                "us_per_stream_event": round(1e6 * m.get(
                                    'freshrec_batch_stage_seconds_sum{stage="deltas"}', 0.0) / n, 1)}
                               for m in drain_metrics],
                },
                "freshness": fresh_out,
                "worker_latency_ms": [{"p50": m.get('freshrec_latency_ms{quantile="0.5"}'),
                                       "p99": m.get('freshrec_latency_ms{quantile="0.99"}')} for m in final_metrics],
                "changelog": changelog,
                # the workers' published lists against their users' next events (HR@k as served)
                "live_quality": {"k": settings.k, **live_quality(*final_metrics),
                                 "per_worker": [live_quality(m) for m in final_metrics]},
                "group_generations_synced": rebalances,
                "backlog_produce_s": round(produce_s, 2), "train_s": round(train_s, 1),
                "seconds": round(time.time() - t_run, 1),
                "git_commit": git_commit(), "cpu_count": os.cpu_count(),
                # 1-min load average at the start and the end: other processes share these CPUs
                "loadavg_1m": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
                "command": " ".join(["python -m benchmarks.e2e_throughput", *(argv if argv is not None else sys.argv[1:])]),
            }
    finally:
        procs.stop_all()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"""
freshrec end-to-end throughput  ({out['events']} backlog events, {out['items']} items / {out['model_items']} indexed, \
{out['users']} users, {out['partitions']} partitions, {out['cpu_count']} CPUs)
  ceiling (worker's consumer, counting only)  {out['ceiling_ev_s']:>10.1f} ev/s  (median of {out['ceiling']['runs_ev_s']})
    the same run, from the assignment (fetch counted) {out['ceiling'].get('ev_s_from_assignment', float('nan')):>8.1f} ev/s
  plain Faust agent (kafka://, take_events)   {out['faust_stock_ceiling_ev_s'] or float('nan'):>10.1f} ev/s
  {out['workers']} worker(s) draining the backlog          {out['worker_ev_s']:>10.1f} ev/s
  ratio worker / ceiling                      {out['ratio']:>10.3f}
  the model alone (a worker's compute, no Kafka) {out['model_only_ev_s']:>7.1f} ev/s per process  ({out['workers']} \
worker(s): ratio at most {out['workers'] * out['model_only_ev_s'] / out['ceiling_ev_s']:.3f})
  freshness at {args.rate:.0f} ev/s  p50 / p99          {out['freshness_ms']['p50']} / {out['freshness_ms']['p99']} ms \
({out['freshness']['lists']} lists{'' if out['freshness']['all_applied'] else ', NOT all applied'})
    of it in the worker / in delivery p50      {out['freshness']['worker_ms']['p50']} / \
{out['freshness']['delivery_ms']['p50']} ms (p99 {out['freshness']['worker_ms']['p99']} / \
{out['freshness']['delivery_ms']['p99']})
    micro-batches meanwhile                   {out['freshness']['batch']}
  shared item side: deltas applied per worker, us per stream event  {[d['applied'] for d in out['drain']['deltas']]}, {[d['us_per_stream_event'] for d in out['drain']['deltas']]}
  live HR@{out['live_quality']['k']} as served (hits / points)        {out['live_quality']['hr']} \
({out['live_quality']['hits']} / {out['live_quality']['points']})
  peak RSS per worker                         {out['rss_mb']} MB
  changelog bytes per user (latest record)    {out['changelog_bytes_per_user']} ({out['changelog']['users']} users, \
{out['changelog']['records']} records, {out['changelog']['bytes_total']} bytes written)
  run {out['seconds']} s, load average {out['loadavg_1m']} on {out['cpu_count']} CPUs; results in {args.json}{'  (PROFILED: py-spy ran during the drain)' if out['profiled'] else ''}""")
    if profile_text:
        print("\n".join(profile_text.splitlines()[:30]))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)

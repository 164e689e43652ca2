"""Speed and memory of ``freshrec serve`` on this machine, against the embedded broker.

    python benchmarks/serve_speed.py               # writes benchmarks/results/serve_speed.json
    python benchmarks/serve_speed.py --users 20000 --seconds 5   # a quicker run

1. Start a broker and a ``freshrec serve`` process (``--recent-events 0``) on empty topics;
   note its RSS once ready.
2. Produce ``--users`` lists of 20 items (ids from a 5,000-item catalog) and wait until serve
   holds them all: ingest rate, RSS, RSS per 100k users (loaded - empty).
3. Load: ``--rps`` GETs per second (open loop: each request has a scheduled send time) for
   ``--seconds`` seconds over 16 keep-alive loopback connections, random users, ``k=10``.
   Latency is counted from the scheduled send time (a slow client or server that delays a
   send is charged for it), so it is the latency a caller at that rate sees. The first
   second (connections, first calls) runs at the same rate but is not counted.
4. Visibility: ``--visibility`` times, produce one new list (``published_at`` = now) and GET
   it every millisecond until serve answers it: published -> visible through the API (one
   list first, not counted, so that the producer's own start-up is not a publish).

The load generator is a minimal asyncio HTTP/1.1 client in this process; serve runs in its own process. Both share the
machine's CPUs with whatever else runs (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.broker import EmbeddedBroker, free_port  # noqa: E402
from streams.codec import Recommendation, encode_recommendation  # noqa: E402
from streams.kafka import client_config, ensure_topics  # noqa: E402
from streams.settings import load_settings  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve_speed.json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 3)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    """GET over a keep-alive connection, reconnecting once if the server closed it while idle."""
    for attempt in (1, 2):
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def make_rec(user: str, rng: random.Random, now: float) -> bytes:
    items = rng.sample(range(5000), 20)
    return encode_recommendation(Recommendation(
        user, [(f"item-{i}", 1.0 - n / 40) for n, i in enumerate(items)], "20261206T000000Z", 1, 12,
        f"e-{user}", now - 1.0, now, last_event_at=now - 0.02))


async def load(port: int, users: int, rps: float, seconds: float, connections: int = 16,
               warmup_s: float = 1.0) -> dict[str, Any]:
    """Open-loop GETs at ``rps`` over ``connections`` keep-alive connections (a minimal HTTP/1.1
    client on asyncio streams: a fraction of aiohttp's CPU per request, so the load generator
    takes less of the machine it shares with the server)."""
    warm = int(rps * warmup_s)
    n = int(rps * seconds) + warm
    rng = random.Random(1)
    paths = [f"/v1/users/u{rng.randrange(users)}/recommendations?k=10" for _ in range(n)]
    latencies: list[float] = []
    service: list[float] = []
    errors = 0
    queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                due, path = await queue.get()
                try:
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent = time.perf_counter()
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    await reader.readexactly(length)
                    done = time.perf_counter()
                    if not head.startswith(b"HTTP/1.1 200"):
                        errors += 1
                    if due >= measured_from:
                        latencies.append((done - due) * 1000.0)
                        service.append((done - sent) * 1000.0)
                finally:
                    queue.task_done()
        finally:
            writer.close()

    start = time.perf_counter() + 0.2
    measured_from = start + warm / rps
    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    for i, path in enumerate(paths):
        queue.put_nowait((start + i / rps, path))
    await asyncio.wait_for(queue.join(), timeout=seconds * 3 + 30)
    elapsed = time.perf_counter() - measured_from
    for t in tasks:
        t.cancel()
    return {"target_rps": rps, "seconds": seconds, "warmup_s": warmup_s, "connections": connections,
            "requests": len(latencies), "errors": errors, "achieved_rps": round(len(latencies) / elapsed, 1),
            "latency_ms": {"p50": pct(latencies, 50), "p90": pct(latencies, 90), "p99": pct(latencies, 99),
                           "max": round(max(latencies), 3)},
            "service_ms": {"p50": pct(service, 50), "p99": pct(service, 99)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--rps", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--visibility", type=int, default=200)
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args()
    from confluent_kafka import Producer

    load_start = os.getloadavg()
    with EmbeddedBroker().start() as broker:
        settings = broker.settings(load_settings(environ={})).with_(partitions=4, topic_prefix="bench")
        ensure_topics(settings)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
        serve = subprocess.Popen([sys.executable, "-m", "streams.cli", "serve", "--brokers", settings.brokers,
                                  "--profile", "embedded", "--topic-prefix", "bench", "--port", str(port),
                                  "--recent-events", "0"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if get(conn, "/ready")[0] == 200:
                        break
                except OSError:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise SystemExit("serve did not get ready")
                time.sleep(0.1)
            rss_empty = rss_mb(serve.pid)

            # 2. the lists
            rng = random.Random(0)
            producer = Producer(client_config(settings, "producer", **{"linger.ms": 20}))
            t0 = time.perf_counter()
            now = time.time()
            for u in range(args.users):
                while True:
                    try:
                        producer.produce(settings.recommendations_topic, make_rec(f"u{u}", rng, now), f"u{u}".encode())
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
            producer.flush(120)
            produced_s = time.perf_counter() - t0
            while json.loads(get(conn, "/ready")[1])["lists"] < args.users:
                if time.perf_counter() - t0 > 600:
                    raise SystemExit("serve did not take every list within 10 minutes")
                time.sleep(0.05)
            held_s = time.perf_counter() - t0
            time.sleep(1.0)
            rss_loaded = rss_mb(serve.pid)

            # 3. load
            cpu_before, wall_before = cpu_s(serve.pid), time.perf_counter()
            load_result = asyncio.run(load(port, args.users, args.rps, args.seconds))
            load_result["serve_cpu_share"] = round((cpu_s(serve.pid) - cpu_before)
                                                   / (time.perf_counter() - wall_before), 3)
            rss_after_load = rss_mb(serve.pid)

            # 4. visibility
            vis_producer = Producer(client_config(settings, "producer", **{"linger.ms": 0}))
            vis_producer.produce(settings.recommendations_topic, make_rec("vis-warm", rng, time.time()), b"vis-warm")
            vis_producer.flush(10)  # the producer's start (metadata, idempotence handshake) is not a publish
            visible_ms: list[float] = []
            for i in range(args.visibility):
                user = f"vis{i}"
                published = time.time()
                vis_producer.produce(settings.recommendations_topic, make_rec(user, rng, published), user.encode())
                vis_producer.poll(0)
                while True:
                    status, _ = get(conn, f"/v1/users/{user}/recommendations?k=1")
                    if status == 200:
                        visible_ms.append((time.time() - published) * 1000.0)
                        break
                    if time.time() - published > 10:
                        raise SystemExit(f"list of {user} not visible after 10 s")
                    time.sleep(0.001)
                vis_producer.poll(0)
            metrics = get(conn, "/metrics")[1].decode()
        finally:
            serve.terminate()
            serve.wait(20)

    buckets = {float(m.group(1)) if m.group(1) != "+Inf" else float("inf"): float(m.group(2)) for m in re.finditer(
        r'freshrec_serve_request_seconds_bucket\{le="([^"]+)",route="/v1/users/\{user_id\}/recommendations"\} (\S+)',
        metrics)}
    total = buckets.get(float("inf"), 0.0)
    handler = {f"under_{int(le * 1000)}ms": round(n / total, 5) for le, n in buckets.items()
               if le in (0.001, 0.002, 0.005)} if total else {}
    per_100k = (rss_loaded - rss_empty) * 100_000 / args.users
    out = {
        "users": args.users, "items_per_list": 20, "catalog_items": 5000,
        "ingest": {"produce_s": round(produced_s, 2), "all_held_s": round(held_s, 2),
                   "lists_per_s": round(args.users / held_s, 0)},
        "rss_mb": {"empty": round(rss_empty, 1), "loaded": round(rss_loaded, 1),
                   "after_load": round(rss_after_load, 1), "per_100k_users": round(per_100k, 1),
                   "million_users_estimate": round(rss_empty + per_100k * 10, 0)},
        "get": load_result,
        "visibility_ms": {"samples": len(visible_ms), "p50": pct(visible_ms, 50), "p99": pct(visible_ms, 99),
                          "max": round(max(visible_ms), 3)},
        "server_handler_share": handler,
        "server_histogram": [line for line in metrics.splitlines()
                             if line.startswith("freshrec_serve_request_seconds_bucket")
                             and "/v1/users/{user_id}/recommendations" in line],
        "targets": {"get_1000_rps_p99_le_5ms": load_result["latency_ms"]["p99"] <= 5.0
                    and load_result["achieved_rps"] >= 0.98 * args.rps and load_result["errors"] == 0,
                    "visible_p99_le_50ms": pct(visible_ms, 99) <= 50.0},
        "git_commit": git_commit(), "cpu_count": os.cpu_count(),
        "loadavg_1m": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "command": "python benchmarks/serve_speed.py " + " ".join(sys.argv[1:]),
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("ingest", "rss_mb", "get", "server_handler_share", "visibility_ms",
                                          "targets", "loadavg_1m")},
                     indent=2))


if __name__ == "__main__":
    main()

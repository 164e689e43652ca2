"""Speed of the served model's batched path, as the worker uses it.

    python benchmarks/served_speed.py    # writes benchmarks/results/served_speed.json

Synthetic log (5k users, 3k items, 100k events); model and signals warmed on the
first half; then ``recommend`` for 256 random users (median and best of 20), and
the worker loop — apply a 256-event batch, then ``step`` (what the worker runs)
or ``observe`` + ``recommend`` for its users — over 10k events each; and the shared
item side's two halves per event (``plan_step`` with the delta's wire form, what the
owner runs; decoding and applying it, what every worker runs). CPU, one process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model_core.als import train_als
from model_core.config import ALSConfig
from model_core.events import Event
from model_core.offline.fleet import Deployment, ServedFleet
from model_core.offline.synth import SynthConfig, generate_events
from model_core.served.model import ServedModel
from model_core.served.shared import decode_delta, encode_parts
from model_core.state import UserHistory
from streams.kafka import DELTA_MAX_BYTES

OUT = Path(__file__).parent / "results" / "served_speed.json"


def main() -> None:
    events = sorted(generate_events(SynthConfig(users=5000, items=3000, events=100_000, seed=7)),
                    key=lambda e: e.time)
    half = len(events) // 2
    model = train_als(events[:half], ALSConfig(), device="cpu")
    # warmed as a backfill replays the log: the worker's calls, batches of 256 at full speed
    fleet = ServedFleet(lambda: ServedModel(model, device="cpu"), Deployment(within_s=float("inf")))
    t = time.perf_counter()
    fleet.arrive(events[:half])
    fleet.flush()
    warm_s = time.perf_counter() - t
    rec, histories = fleet.recs[0], fleet.histories
    rng = np.random.default_rng(0)
    users = [histories[u] for u in rng.choice(sorted(histories), 256, replace=False)]
    rec.recommend(users, 20)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        rec.recommend(users, 20)
        times.append(time.perf_counter() - t)

    def batches(start: int) -> Iterator[tuple[list[Event], dict[str, UserHistory]]]:
        """256-event batches of the 10k events from ``start``, applied to their users' histories."""
        for i in range(start, start + 10_000, 256):
            batch = events[i : i + 256]
            touched = {}
            for ev in batch:
                h = histories.setdefault(ev.user_id, UserHistory(ev.user_id))
                if rec.apply(h, ev):
                    touched[ev.user_id] = h
            yield batch, touched

    def worker_loop(fused: bool) -> float:
        """Events/s of the worker's batch loop over the next 10k events (state not rolled back:
        each pass continues the stream where the last one stopped)."""
        start = half + (10_000 if fused else 0)
        t = time.perf_counter()
        n = 0
        for batch, touched in batches(start):
            if fused:  # what the worker runs: one search for the ranker's examples and the lists
                rec.step(batch, touched, 20)
            else:
                rec.observe(batch, touched)
                rec.recommend(list(touched.values()), 20)
            n += len(batch)
        return n / (time.perf_counter() - t)

    def shared_costs() -> dict[str, float]:
        """The worker's batch loop split into its halves, per event: planning (the owner's lists
        and delta, then its wire form) and applying the delta read back (every worker)."""
        start = half + 20_000
        plan_s = apply_s = 0.0
        wire_bytes = n = 0
        for batch, touched in batches(start):
            t = time.perf_counter()
            wire = encode_parts(rec.plan_step(batch, touched, 20).delta, DELTA_MAX_BYTES)
            t1 = time.perf_counter()
            for record in wire:
                rec.learn(decode_delta(record))
            apply_s += time.perf_counter() - t1
            plan_s += t1 - t
            wire_bytes += sum(len(w) for w in wire)
            n += len(batch)
        return {"plan_us_per_event": round(1e6 * plan_s / n, 1), "apply_us_per_event": round(1e6 * apply_s / n, 1),
                "delta_bytes_per_event": round(wire_bytes / n, 1)}

    split_loop, loop = worker_loop(False), worker_loop(True)
    costs = shared_costs()
    result = {
        "recommend_b256_ms_median": round(1000 * float(np.median(times)), 1),
        "recommend_b256_ms_best": round(1000 * min(times), 1),
        "worker_loop_events_per_s": round(loop),
        "worker_loop_observe_then_recommend_events_per_s": round(split_loop),
        "warm_start_events_per_s": round(half / warm_s),
        # per worker and stream event, N workers: plan / N + apply (every worker applies every delta)
        "shared_item_side": {**costs, "per_worker_us_per_stream_event": {
            str(w): round(costs["plan_us_per_event"] / w + costs["apply_us_per_event"], 1) for w in (1, 2, 4, 16)}},
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

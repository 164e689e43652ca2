"""Quality of the served model as a fleet of workers serves it, not as one warm process.

    python benchmarks/served_path_quality.py --log FILE [--log FILE] [--batch 64] \
        [--workers 1 4] [--restart-at 0.5] [--json OUT]

Events are sorted by event time and split in half, as ``freshrec evaluate`` does;
iALS is trained on the first half. Then each configuration replays the log the way
deployed workers see it:

- users are split over ``N`` workers (a stable hash of the user id, as a partitioner
  would), and each worker learns its online state (``OnlineRecommender``) only from
  its own users' events, the first half included (its warm-up);
- events arrive in micro-batches of ``--batch``; a worker applies its users' events
  to their histories and calls ``step`` once per batch, as the worker's batch step
  does, and each touched user's list is replaced by the new one;
- an event of a known user on an item new to that user scores a hit when the item
  is in the list that user was last served (the list published before the event);
- ``--restart-at F``: at that fraction of the second half every worker starts again
  with a new ``OnlineRecommender`` (what a restart restores today: user histories from
  the changelog, nothing of the online state); the published lists stay.

Only ``ALSModel``, ``OnlineRecommender.apply`` / ``step`` and ``UserHistory`` are used,
so the same script measures an older commit's model (run it from that commit's tree).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.als import train_als  # noqa: E402
from model_core.events import Event  # noqa: E402
from model_core.offline.logs import read_events  # noqa: E402
from model_core.online import OnlineRecommender  # noqa: E402
from model_core.state import UserHistory  # noqa: E402

K = 20


def _replay(model, train: list[Event], test: list[Event], workers: int, batch: int,
            restart_at: float | None) -> dict:
    """HR@K over the second half, served by ``workers`` workers in micro-batches."""
    def owner(user: str) -> int:
        return zlib.crc32(user.encode()) % workers

    recs = [OnlineRecommender(model, device="cpu") for _ in range(workers)]
    histories: dict[str, UserHistory] = {}
    lists: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}

    def run(events: list[Event], score: bool) -> tuple[int, int]:
        hits = points = 0
        if score:
            for ev in events:  # every event of the batch meets the list its user had before the batch
                s = seen.get(ev.user_id)
                if s and ev.item_id not in s:
                    points += 1
                    hits += ev.item_id in lists.get(ev.user_id, ())
                seen.setdefault(ev.user_id, set()).add(ev.item_id)
        by_worker: dict[int, list[Event]] = {}
        for ev in events:
            by_worker.setdefault(owner(ev.user_id), []).append(ev)
        for w, evs in by_worker.items():
            rec, touched, applied = recs[w], {}, []
            for ev in evs:
                h = histories.get(ev.user_id)
                if h is None:
                    h = histories[ev.user_id] = UserHistory(ev.user_id)
                if rec.apply(h, ev):
                    touched[ev.user_id] = h
                    applied.append(ev)
            if touched:
                for user, lst in zip(touched, rec.step(applied, touched, K)):
                    lists[user] = [i for i, _ in lst]
        return hits, points

    for i in range(0, len(train), batch):
        run(train[i : i + batch], score=False)
    for ev in train:
        seen.setdefault(ev.user_id, set()).add(ev.item_id)
    cut = len(test) if restart_at is None else int(len(test) * restart_at)
    hits = points = 0
    started = time.perf_counter()
    for i in range(0, len(test), batch):
        if i <= cut < i + batch and restart_at is not None:
            recs = [OnlineRecommender(model, device="cpu") for _ in range(workers)]
        h, p = run(test[i : i + batch], score=True)
        hits, points = hits + h, points + p
    return {"workers": workers, "batch": batch, "restart_at": restart_at, "points": points,
            "hr": round(hits / max(points, 1), 4), "test_seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", action="append", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--restart-at", type=float, default=0.5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    events = sorted((ev for path in args.log for ev in read_events(path, "auto")), key=lambda e: e.time)
    split = len(events) // 2
    train, test = events[:split], events[split:]
    model = train_als(train, device="cpu")
    runs = [_replay(model, train, test, n, args.batch, None) for n in args.workers]
    runs.append(_replay(model, train, test, 1, args.batch, args.restart_at))
    base = runs[0]["hr"]
    for r in runs:
        r["vs_one_warm_worker"] = round(r["hr"] / base, 4) if base else None
        print(f"workers={r['workers']} restart_at={r['restart_at']}: HR@{K} {r['hr']} "
              f"({r['vs_one_warm_worker']}x one warm worker, {r['points']} points, {r['test_seconds']}s)")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    out = {"logs": args.log, "commit": commit, "k": K, "events": len(events), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

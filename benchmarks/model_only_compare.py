"""The worker's compute alone, this tree against an earlier commit, alternated in one run.

    python -m benchmarks.model_only_compare --before 7df5c30 [--runs 3] [--batch-size 256]

Builds the e2e benchmark's backlog and model (``benchmarks.e2e_throughput.make_logs``:
100k items, 20k users, 100k backlog events by default), checks the ``--before`` commit out
into a temporary git worktree, and runs ``benchmarks/_model_only.py`` (this tree's copy:
it only calls what every commit since the shared item side has) on the backlog, ``--runs``
times per tree, alternating trees so that a slow minute of this machine hits both. Writes
the runs, the medians (events/s, CPU microseconds per event, and seconds per stage of the
served model where a tree times them) and the ratios to
``benchmarks/results/model_only_compare.json``. The lists themselves are not compared
here; ``benchmarks/served_path_quality.py`` scores them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "model_only_compare.json"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_once(tree: Path, events: Path, models: Path, batch: int, out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), FRESHREC_MODEL_DIR=str(models), FRESHREC_BATCH_SIZE=str(batch))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_model_only.py"), str(events), str(out)],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tree (default 3)")
    ap.add_argument("--batch-size", type=int, default=256, help="events per micro-batch, both trees (default 256)")
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size (default 100000)")
    ap.add_argument("--events", type=int, default=100_000, help="backlog events (default 100000)")
    ap.add_argument("--users", type=int, default=20_000, help="users (default 20000)")
    ap.add_argument("--json", default=str(OUT), help=f"output (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    try:
        before = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        ap.error(f"--before {args.before!r} is not a commit of this repository")
    after = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())

    from benchmarks.e2e_throughput import make_logs
    from model_core.als import train_als
    from model_core.config import ALSConfig
    from model_core.events import event_to_json

    with tempfile.TemporaryDirectory(prefix="freshrec-model-only-") as tmp:
        work = Path(tmp)
        logs = argparse.Namespace(items=args.items, events=args.events, users=args.users, rate=1000.0,
                                  freshness_seconds=0.0, seed=0)
        train, backlog, _ = make_logs(logs)
        model = train_als(train, ALSConfig(), device="cpu")
        model.save(work / "models")
        events = work / "backlog.jsonl"
        events.write_text("".join(event_to_json(e) + "\n" for e in backlog))
        del train
        old = work / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), before], cwd=ROOT, check=True,
                       capture_output=True)
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        try:
            for r in range(args.runs):
                for name, tree in (("before", old), ("after", ROOT)):
                    res = run_once(tree, events, work / "models", args.batch_size, work / "out.json")
                    runs[name].append(res)
                    say(f"run {r + 1}/{args.runs} {name}: {res['ev_s']} ev/s, {res.get('cpu_us_per_event')} "
                        "CPU us/event")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name] if key in r))

    out = {
        "before": before, "after": after + ("+dirty" if dirty else ""), "batch_size": args.batch_size,
        "events": args.events, "items": args.items, "users": args.users, "runs": runs,
        "ev_s": {"before": med("before", "ev_s"), "after": med("after", "ev_s")},
        "ratio_ev_s": round(med("after", "ev_s") / med("before", "ev_s"), 3),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
    }
    stages = {name: {k: round(statistics.median(r["seconds_by_stage"].get(k, 0.0) for r in rs), 3)
                     for k in rs[0]["seconds_by_stage"]}
              for name, rs in runs.items() if all("seconds_by_stage" in r for r in rs)}
    if stages:
        out["seconds_by_stage"] = stages  # medians per tree that times its stages (StageClock)
    if all("cpu_us_per_event" in r for rs in runs.values() for r in rs):
        out["cpu_us_per_event"] = {"before": med("before", "cpu_us_per_event"),
                                   "after": med("after", "cpu_us_per_event")}
        out["ratio_cpu_per_event"] = round(med("before", "cpu_us_per_event") / med("after", "cpu_us_per_event"), 3)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"model alone, batches of {args.batch_size}: {out['ev_s']['before']:.0f} ev/s at {before}, "
          f"{out['ev_s']['after']:.0f} ev/s at {out['after']}: {out['ratio_ev_s']}x"
          + (f"; CPU per event {out['ratio_cpu_per_event']}x less" if "ratio_cpu_per_event" in out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

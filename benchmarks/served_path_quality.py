"""Quality of the served model as deployments serve it, against one warm worker.

    python benchmarks/served_path_quality.py --log FILE [--log FILE] [--name yoochoose] \
        [--runs worker,per-event,workers=4,workers=16,restart=0.5] [--json OUT]

Each run is ``freshrec evaluate --models served`` with one deployment
(``model_core.offline.fleet``): the same split, the same iALS model (same seed), the
worker's micro-batches, ``apply`` and ``step``, each event scored against the list its
user was last published. Runs:

- ``worker``: one worker, the worker's batching (256 events, 5 ms of event time): the
  reference the others are divided by;
- ``per-event``: batches of one event (the gap of the worker's batching to per-event);
- ``backfill``: batches of 256 regardless of time (a replay at full speed);
- ``workers=N``: N workers on max(4, N) partitions, serving from the one item side their
  deltas build (``model_core.served.shared``), as the worker runs;
- ``isolated=N``: the same, each worker learning the item side from its own users only
  (what the deltas topic is worth);
- ``restart=F``: one worker restarted at fraction F of the scored events.

Figures go to ``benchmarks/results/served_path_quality_<name>.json`` (``--merge`` keeps the
runs of earlier invocations that this one does not make; each run names its commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.offline.evaluate import prequential  # noqa: E402
from model_core.offline.fleet import Deployment  # noqa: E402
from model_core.offline.logs import read_events  # noqa: E402


def deployment(run: str) -> Deployment:
    """A run's name as a Deployment (see the module doc)."""
    if run == "worker":
        return Deployment()
    if run == "per-event":
        return Deployment(batch=1)
    if run == "backfill":
        return Deployment(within_s=float("inf"))
    key, _, value = run.partition("=")
    if key in ("workers", "isolated"):
        return Deployment(workers=int(value), partitions=max(4, int(value)), shared=key == "workers")
    if key == "restart":
        return Deployment(restart_at=float(value))
    raise SystemExit(f"unknown run {run!r}: worker, per-event, backfill, workers=N, isolated=N or restart=F")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", action="append", required=True, help="event log (repeat for several files)")
    ap.add_argument("--name", default=None, help="name in the results file (default: the first log's stem)")
    ap.add_argument("--runs", default="worker,per-event,workers=4,workers=16,restart=0.5")
    ap.add_argument("--json", default=None, help="output path")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs already in the output file that this invocation does not make "
                    "(each run records its commit)")
    args = ap.parse_args()
    name = args.name or Path(args.log[0]).name.split(".")[0]
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    plans = {r: deployment(r) for r in runs}
    events = sorted((ev for path in args.log for ev in read_events(path, "auto")), key=lambda e: e.time)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"served_path_quality_{name}.json")
    out: dict = {"log": name, "files": args.log, "events": len(events), "runs": {}}
    if args.merge and path.exists():
        out["runs"] = {r: v for r, v in json.loads(path.read_text())["runs"].items() if r not in plans}
    for run, dep in plans.items():
        t = time.perf_counter()
        report = prequential(events, models=["served"], device="cpu", deployment=dep)
        inc = report["models"]["served"]
        out["runs"][run] = {"served_as": report["served_as"], "hr": inc["hr"], "ndcg": inc["ndcg"],
                            "points": report["eval_points"], "mean_batch": report.get("mean_batch"),
                            "seconds": round(time.perf_counter() - t, 1), "commit": commit}
        print(f"{name} {run}: HR@{report['k']} {inc['hr']} NDCG {inc['ndcg']} ({report['served_as']}; "
              f"{out['runs'][run]['seconds']}s)", flush=True)
    base = out["runs"].get("worker", {}).get("hr")
    for r in out["runs"].values():
        r["vs_one_worker"] = round(r["hr"] / base, 4) if base else None
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

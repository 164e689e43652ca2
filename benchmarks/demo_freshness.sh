#!/usr/bin/env bash
# Subscriber freshness of `freshrec demo` (1,000 events/s, with a retrain and a model swap
# mid-stream), RUNS times (default 5): a line per run, and every run's summary in OUT (default
# benchmarks/results/demo_freshness.json). CHECKOUT (default: this one) runs another checkout's
# code, e.g. a `git worktree` of an older commit, with PYTHON (default: python) as the interpreter.
set -euo pipefail
checkout=$(cd "${CHECKOUT:-$(dirname "$0")/..}" && pwd)
out=$(mktemp -d)
result=$(realpath -m "${OUT:-benchmarks/results/demo_freshness.json}")
for i in $(seq "${RUNS:-5}"); do
  (cd "$checkout" && PYTHONPATH="$checkout" "${PYTHON:-python}" -m streams.cli demo --quiet \
    --json "$out/run-$i.json" > "$out/run-$i.log" 2>&1)
  python3 -c "import json, sys; d = json.load(open(sys.argv[1])); \
print(f'run {sys.argv[2]}  freshness p50 {d[\"freshness_ms\"][\"p50\"]} ms  p99 {d[\"freshness_ms\"][\"p99\"]} ms  \
{d[\"events_per_s\"]} events/s  live HR@20 {d[\"live_quality\"][\"hr\"]}')" "$out/run-$i.json" "$i"
done
python3 - "$out" "$result" "$checkout" <<'PY'
import json, pathlib, subprocess, sys
runs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("run-*.json"))]
for r in runs:
    r.pop("_users", None)
git = ["git", "-C", sys.argv[3]]
commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
if subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode:
    commit += "+changes"
p99 = [r["freshness_ms"]["p99"] for r in runs]
doc = {"commit": commit, "p99_ms": p99, "runs_at_or_under_100_ms": sum(x <= 100 for x in p99), "runs": runs}
pathlib.Path(sys.argv[2]).write_text(json.dumps(doc, indent=2) + "\n")
print(f"{commit}: p99 {p99} ms, {doc['runs_at_or_under_100_ms']} of {len(p99)} runs at or under 100 ms -> {sys.argv[2]}")
PY

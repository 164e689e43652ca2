#!/usr/bin/env bash
# Freshness at the subscriber of `freshrec demo` (1,000 events/s) with a 20 ms and a 5 ms batch
# window, alternating, RUNS times each (default 3); prints one line per run. FRESHREC overrides
# the command (default: freshrec). The figures behind FRESHREC_BATCH_WITHIN_S's default.
set -euo pipefail
read -r -a freshrec <<< "${FRESHREC:-freshrec}"
out=$(mktemp -d)
for i in $(seq "${RUNS:-3}"); do
  for w in 0.02 0.005; do
    FRESHREC_BATCH_WITHIN_S=$w "${freshrec[@]}" demo --quiet --json "$out/$w-$i.json" > /dev/null 2>&1
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); \
print(f'window {sys.argv[2]} s  run {sys.argv[3]}  freshness p50 {d[\"freshness_ms\"][\"p50\"]} ms  p99 {d[\"freshness_ms\"][\"p99\"]} ms')" \
      "$out/$w-$i.json" "$w" "$i"
  done
done

#!/usr/bin/env bash
# Freshness at the subscriber of `freshrec demo` (1,000 events/s) with a 20 ms and a 5 ms batch
# window, alternating, RUNS times each (default 3): one `demo_freshness.sh` run per line, its
# JSON in a temporary folder. CHECKOUT and PYTHON as there. The figures behind
# FRESHREC_BATCH_WITHIN_S's default.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
for i in $(seq "${RUNS:-3}"); do
  for w in 0.02 0.005; do
    lines=$(FRESHREC_BATCH_WITHIN_S=$w RUNS=1 OUT="$out/$w-$i.json" "$here/demo_freshness.sh")
    printf 'window %s s, round %s: %s\n' "$w" "$i" "${lines%%$'\n'*}"
  done
done

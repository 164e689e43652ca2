#!/usr/bin/env bash
# Run the fault suite N times in a row, optionally beside a CPU load, and tally the runs.
#
#   tests/faults/loop.sh 30 --load        # 30 runs beside `freshrec evaluate` on the YooChoose sample
#
# Each run's result (passed / failed, seed and summary of any failure) goes to
# runs/faults/tally.txt, its pytest output to runs/faults/run-N.txt. The suite fails a run on
# any event lost or applied twice, and on any "offset gap" line in any worker's log.
set -uo pipefail
cd "$(dirname "$0")/../.."
n="${1:-30}"; load="${2:-}"
py="${PYTHON:-.venv/bin/python}"
out=runs/faults; mkdir -p "$out"
loader=""
if [ "$load" = "--load" ]; then
    data=../shared/data/yoochoose-sample
    ( while true; do "$py" -m streams.cli evaluate --models served,vsknn --quiet \
        --log "$data/yoochoose-clicks-100k_train_full.txt" --log "$data/yoochoose-clicks-100k_test.txt" \
        > "$out/load.txt" 2>&1; done ) &
    loader=$!
    trap 'kill $loader 2>/dev/null; pkill -P $loader 2>/dev/null' EXIT
fi
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) runs=$n load=${load:-none}" >> "$out/tally.txt"
passed=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    if "$py" -m pytest tests/faults -q -p no:cacheprovider > "$out/run-$i.txt" 2>&1; then
        passed=$((passed + 1)); verdict=passed
    else
        verdict="FAILED: $(grep -E '^FAILED|seed [0-9]+' "$out/run-$i.txt" | head -3 | cut -c1-300 | tr '\n' ' ')"
    fi
    echo "run $i: $verdict ($(tail -1 "$out/run-$i.txt" | tr -d '='), $(( $(date +%s) - start ))s, load $(cut -d' ' -f1 /proc/loadavg))" >> "$out/tally.txt"
done
echo "total: $passed of $n runs passed" >> "$out/tally.txt"

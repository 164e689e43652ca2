#!/usr/bin/env bash
# Prequential quality on the real samples in ../shared/data and on a synthetic log.
# Writes benchmarks/results/quality_*.json; the README table is made from them
# (python benchmarks/report.py). FRESHREC overrides the command (default: freshrec).
#
#   benchmarks/quality.sh                 # every model
#   benchmarks/quality.sh --served-only   # the served model only, its row merged into the existing
#                                         # tables (benchmarks/merge_quality.py): when only its code changed
set -euo pipefail
cd "$(dirname "$0")/.."
data=${FRESHREC_DATA:-../shared/data}
out=benchmarks/results
models=served,static,popular,trending,covisit,sr,vsknn,implicit
read -r -a freshrec <<< "${FRESHREC:-freshrec}"
mkdir -p "$out" runs
served_only=${1:-}

evaluate() {  # NAME, then the logs
  local name=$1; shift
  if [ "$served_only" = "--served-only" ]; then
    "${freshrec[@]}" evaluate --models served --json "runs/quality_${name}_served.json" "$@"
    python3 benchmarks/merge_quality.py "runs/quality_${name}_served.json" "$out/quality_${name}.json"
  else
    "${freshrec[@]}" evaluate --models "$models" --json "$out/quality_${name}.json" "$@"
  fi
}

evaluate yoochoose --log "$data/yoochoose-sample/yoochoose-clicks-100k_train_full.txt" \
  --log "$data/yoochoose-sample/yoochoose-clicks-100k_test.txt"
evaluate diginetica --log "$data/diginetica/sample_train-item-views.csv" --log "$data/diginetica/train-purchases.csv"
"${freshrec[@]}" generate --out runs/synthetic.jsonl.gz --users 5000 --items 3000 --events 200000 --seed 7
evaluate synthetic --log runs/synthetic.jsonl.gz

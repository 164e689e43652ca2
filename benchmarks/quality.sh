#!/usr/bin/env bash
# Prequential quality on the real samples in ../shared/data and on a synthetic log.
# Writes benchmarks/results/quality_*.json; the README table is made from them
# (python benchmarks/report.py). FRESHREC overrides the command (default: freshrec).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${FRESHREC_DATA:-../shared/data}
out=benchmarks/results
models=incremental,static,popular,trending,covisit,sr,vsknn,implicit
read -r -a freshrec <<< "${FRESHREC:-freshrec}"
mkdir -p "$out" runs
"${freshrec[@]}" evaluate --models "$models" --json "$out/quality_yoochoose.json" \
  --log "$data/yoochoose-sample/yoochoose-clicks-100k_train_full.txt" \
  --log "$data/yoochoose-sample/yoochoose-clicks-100k_test.txt"
"${freshrec[@]}" evaluate --models "$models" --json "$out/quality_diginetica.json" \
  --log "$data/diginetica/sample_train-item-views.csv" --log "$data/diginetica/train-purchases.csv"
"${freshrec[@]}" generate --out runs/synthetic.jsonl.gz --users 5000 --items 3000 --events 200000 --seed 7
"${freshrec[@]}" evaluate --models "$models" --json "$out/quality_synthetic.json" --log runs/synthetic.jsonl.gz

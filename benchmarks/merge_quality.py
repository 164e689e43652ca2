"""Put a fresh ``freshrec evaluate --models served`` report's served-model row into a quality table.

    python benchmarks/merge_quality.py FRESH.json benchmarks/results/quality_NAME.json

For when only the served model's code changed (``benchmarks/quality.sh --served-only``): the
baselines' rows stay, the served model's row, its deployment and ``served_vs`` are
replaced, and ``served_commit`` records the commit the row comes from. Both reports must
be of the same log and split (the same evaluation points).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    fresh_path, table_path = (Path(a) for a in argv)
    fresh, table = json.loads(fresh_path.read_text()), json.loads(table_path.read_text())
    if fresh["eval_points"] != table["eval_points"]:
        raise SystemExit(f"{fresh_path} has {fresh['eval_points']} evaluation points, {table_path} "
                         f"{table['eval_points']}: not the same log and split")
    table["models"]["served"] = inc = fresh["models"]["served"]
    for key in ("served_as", "deployment", "mean_batch", "delta_bytes_per_event"):
        if key in fresh:
            table[key] = fresh[key]
    table["served_vs"] = {name: {m: (round(inc[m] / r[m] - 1.0, 4) if r[m] else None) for m in ("hr", "ndcg")}
                               for name, r in table["models"].items() if name != "served"}
    table["served_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                 text=True, check=False).stdout.strip()
    table_path.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{table_path}: served HR@{table['k']} {inc['hr']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

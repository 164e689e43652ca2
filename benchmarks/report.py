"""Print the README's result tables (markdown) from benchmarks/results/*.json.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LOGS = {"yoochoose": "YooChoose sample (clicks)", "diginetica": "DIGINETICA (views + purchases)",
        "synthetic": "synthetic (5k users, 3k items, 200k events)"}


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def quality() -> None:
    for name, title in LOGS.items():
        path = RESULTS / f"quality_{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        k = r["k"]
        print(f"**{title}** — {r['eval_points']} evaluation points ({r['purchase_eval_points']} purchases)\n")
        print(f"| model | HR@{k} | NDCG@{k} | MRR@{k} | purchase HR@{k} | coverage@{k} | exposure Gini "
              f"| popularity pct | events/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for m, v in r["models"].items():
            label = f"**{m}**" if m == "incremental" else m
            print(f"| {label} | {pct(v['hr'])} | {pct(v['ndcg'])} | {pct(v['mrr'])} | {pct(v['purchase_hr'])} "
                  f"| {pct(v.get('coverage'))} | {pct(v.get('gini'))} | {pct(v.get('pop_percentile'))} "
                  f"| {v['events_per_s']:,.0f} |")
        others = {m: v for m, v in r["models"].items() if m != "incremental"}
        if "incremental" in r["models"] and others:
            inc = r["models"]["incremental"]
            best = max(others, key=lambda m: others[m]["hr"] or 0.0)
            best_ndcg = max(others, key=lambda m: others[m]["ndcg"] or 0.0)
            print(f"\nincremental / best other: HR {inc['hr'] / others[best]['hr']:.2f}× ({best}), "
                  f"NDCG {inc['ndcg'] / others[best_ndcg]['ndcg']:.2f}× ({best_ndcg})\n")


def speed() -> None:
    path = RESULTS / "model_core_speed.json"
    if not path.exists():
        return
    r = json.loads(path.read_text())
    print(f"{r['items']:,} items × {r['factors']} factors, top-{r['k']}, exact search; per second:\n")
    print("| device | B | fold-ins | searches | fold-in + top-20 | implicit recalc + top-20 |")
    print("|---|---|---|---|---|---|")
    for dev, per in r["freshrec"].items():
        if per is None:
            continue
        for b, v in per.items():
            imp = r["implicit"]["by_batch"].get(b)
            print(f"| {dev} | {b} | {v['foldin_per_s']:,.0f} | {v['search_per_s']:,.0f} | "
                  f"{v['foldin_search_per_s']:,.0f} | {imp:,.0f} |")
    t = r["training"]
    print(f"\nfold-in + top-20 at B=1024 on CPU: **{r['ratio_foldin_search_vs_implicit_b1024']}×** implicit. "
          f"Training ({t['cells']:,} cells, {t['iterations']} sweeps): freshrec {t['freshrec_seconds']} s, "
          f"implicit {t['implicit_seconds']} s. Approximate indexes at B=1024: "
          + ", ".join(f"{k} {v['search_per_s_b1024']:,.0f}/s (recall@20 {v['recall_at_20']})"
                      for k, v in r["ann"].items()) + "."
          + (f" The exact scan computed {r['ann']['flat']['scored_fraction']:.0%} of the (user, item) products."
             if "scored_fraction" in r["ann"]["flat"] else ""))


def e2e() -> None:
    """Rows: e2e_throughput*.json (the current code), then e2e_before*.json (the landed main it improved)."""
    files = sorted(RESULTS.glob("e2e_throughput*.json")) + sorted(RESULTS.glob("e2e_before*.json"))
    runs = [json.loads(p.read_text()) for p in files]
    runs = [r for r in runs if r.get("worker_ev_s")]
    if not runs:
        return
    print("| commit | workers | ceiling ev/s | plain Faust agent ev/s | model alone ev/s | workers ev/s | ratio | "
          "freshness p50 / p99 ms | peak RSS MB | changelog bytes/user | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:  # load avg: 1-min load average when the run started (others share the CPUs)
        f = r["freshness_ms"]
        stock = r.get("faust_stock_ceiling_ev_s")
        alone = r.get("model_only_ev_s")
        print(f"| {(r.get('git_commit') or '?')[:7]} | {r['workers']} | {r['ceiling_ev_s']:,.0f} | "
              f"{f'{stock:,.0f}' if stock else '–'} | {f'{alone:,.0f}' if alone else '–'} | "
              f"{r['worker_ev_s']:,.0f} | {r['ratio']:.3f} | "
              f"{f['p50']:,.0f} / {f['p99']:,.0f} | {' + '.join(f'{m:.0f}' for m in r['rss_mb'])} | "
              f"{r['changelog_bytes_per_user']:.0f} | {r.get('loadavg_1m', ['–'])[0]} |")


if __name__ == "__main__":
    quality()
    speed()
    e2e()

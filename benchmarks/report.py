"""Write the result tables of docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/report.py            # rewrite the tables in docs/benchmarks.md
    python benchmarks/report.py --check    # exit 1 if docs/benchmarks.md holds other tables
    python benchmarks/report.py --print    # print the tables (and the README summary) instead

docs/benchmarks.md is prose with regions ``<!-- report:NAME -->`` ... ``<!-- /report:NAME -->``;
each region is the output of the function NAME below, so the prose stays hand-written and
every table comes from a results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
LOGS = {"yoochoose": "YooChoose sample (clicks)", "diginetica": "DIGINETICA (views + purchases)",
        "synthetic": "synthetic (5k users, 3k items, 200k events)"}


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def quality() -> str:
    out: list[str] = []
    for name, title in LOGS.items():
        r = _load(f"quality_{name}.json")
        if r is None:
            continue
        k = r["k"]
        out.append(f"**{title}** — {r['eval_points']} evaluation points ({r['purchase_eval_points']} purchases)\n")
        out.append(f"| model | HR@{k} | NDCG@{k} | MRR@{k} | purchase HR@{k} | coverage@{k} | exposure Gini "
                   f"| popularity pct | events/s |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for m, v in r["models"].items():
            label = f"**{m}**" if m == "served" else m
            out.append(f"| {label} | {pct(v['hr'])} | {pct(v['ndcg'])} | {pct(v['mrr'])} | {pct(v['purchase_hr'])} "
                       f"| {pct(v.get('coverage'))} | {pct(v.get('gini'))} | {pct(v.get('pop_percentile'))} "
                       f"| {v['events_per_s']:,.0f} |")
        others = {m: v for m, v in r["models"].items() if m != "served"}
        if "served" in r["models"] and others:
            inc = r["models"]["served"]
            best = max(others, key=lambda m: others[m]["hr"] or 0.0)
            best_ndcg = max(others, key=lambda m: others[m]["ndcg"] or 0.0)
            out.append(f"\nserved / best other: HR {inc['hr'] / others[best]['hr']:.2f}× ({best}), "
                       f"NDCG {inc['ndcg'] / others[best_ndcg]['ndcg']:.2f}× ({best_ndcg})\n")
        if r.get("served_as"):
            out.append(f"served model as deployed: {r['served_as']} (mean batch {r.get('mean_batch', '–')} "
                       "events); every model scored on the list it last published"
                       + (f" (served model rerun at {r['served_commit']}; the baselines' code did not change)"
                          if r.get("served_commit") else "") + "\n")
    return "\n".join(out)


def served_path() -> str:
    out = ["| log | run | served as | HR@20 | NDCG@20 | × one worker | commit |", "|---|---|---|---|---|---|---|"]
    for name, title in LOGS.items():
        r = _load(f"served_path_quality_{name}.json")
        for run, v in (r or {}).get("runs", {}).items():
            out.append(f"| {title} | {run} | {v['served_as']} | {pct(v['hr'])} | {pct(v['ndcg'])} "
                       f"| {v['vs_one_worker'] if v['vs_one_worker'] is not None else '–'} "
                       f"| {v.get('commit', r.get('commit', '–'))} |")
    return "\n".join(out)


def warm_start() -> str:
    out = ["| log | sweeps | start | train s | HR@20 served | HR@20 factors alone |", "|---|---|---|---|---|---|"]
    for name, title in (("warm_start.json", "synthetic (3k users, 1.5k items, 100k events)"),
                        ("warm_start_yoochoose.json", "YooChoose sample")):
        r = _load(name)
        for run in (r or {}).get("runs", []):
            out.append(f"| {title} | {run['sweeps']} | {'warm' if run['warm_start'] else 'cold'} | {run['train_s']} "
                       f"| {run['hr_served']:.3f} | {run['hr_factors']:.3f} |")
    return "\n".join(out)


def speed() -> str:
    r = _load("model_core_speed.json")
    if r is None:
        return ""
    out = [f"{r['items']:,} items × {r['factors']} factors, top-{r['k']}, exact search; per second:\n",
           "| device | B | fold-ins | searches | fold-in + top-20 | served model's whole pass "
           "| implicit recalc + top-20 |",
           "|---|---|---|---|---|---|---|"]
    for dev, per in r["freshrec"].items():
        if per is None:
            continue
        for b, v in per.items():
            imp = r["implicit"]["by_batch"].get(b)
            whole = f"{v['served_pass_per_s']:,.0f}" if "served_pass_per_s" in v else "–"
            out.append(f"| {dev} | {b} | {v['foldin_per_s']:,.0f} | {v['search_per_s']:,.0f} | "
                       f"{v['foldin_search_per_s']:,.0f} | {whole} | {imp:,.0f} |")
    t = r["training"]
    whole = (f"; the served model's whole pass (every source, a fold-in search of 30, the ranker): "
             f"{r['ratio_served_pass_vs_implicit_b1024']}×" if "ratio_served_pass_vs_implicit_b1024" in r else "")
    out.append(f"\nfold-in + top-20 at B=1024 on CPU: **{r['ratio_foldin_search_vs_implicit_b1024']}×** implicit"
               f"{whole}. "
               f"Training ({t['cells']:,} cells, {t['iterations']} sweeps): freshrec {t['freshrec_seconds']} s, "
               f"implicit {t['implicit_seconds']} s. Approximate indexes at B=1024: "
               + ", ".join(f"{k} {v['search_per_s_b1024']:,.0f}/s (recall@20 {v['recall_at_20']})"
                           for k, v in r["ann"].items()) + "."
               + (f" The exact scan computed {r['ann']['flat']['scored_fraction']:.0%} of the (user, item) products."
                  if "scored_fraction" in r["ann"]["flat"] else ""))
    return "\n".join(out)


CEILING_OF = {"EventConsumer": "consumer", None: "Faust app"}
"""``ceiling_of`` in a result -> the table's word: the worker's own librdkafka consumer with a counting
``process``, or (results before it, no key) an agent in a Faust app that only took batches."""


def e2e() -> str:
    """Rows: e2e_throughput-*.json (the current code), e2e_before_consumer*.json (the Faust-based
    worker the consumer replaced, run alternately with it), the other e2e_throughput*.json (earlier
    stops), then the other e2e_before*.json (the landed main of the first hot-path work)."""
    files: list[Path] = []
    for pattern in ("e2e_throughput-*.json", "e2e_before_consumer*.json", "e2e_throughput*.json", "e2e_before*.json"):
        files += [p for p in sorted(RESULTS.glob(pattern)) if p not in files]
    runs = [json.loads(p.read_text()) for p in files]
    runs = [r for r in runs if r.get("worker_ev_s")]
    if not runs:
        return ""
    out = ["| commit | workers | ceiling of | ceiling ev/s | plain Faust agent ev/s | model alone ev/s | workers ev/s "
           "| ratio | freshness p50 / p99 ms | peak RSS MB | changelog bytes/user | load avg |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:  # load avg: 1-min load average when the run started (others share the CPUs)
        f = r["freshness_ms"]
        stock = r.get("faust_stock_ceiling_ev_s")
        alone = r.get("model_only_ev_s")
        out.append(f"| {(r.get('git_commit') or '?')[:7]} | {r['workers']} | "
                   f"{CEILING_OF.get(r.get('ceiling_of'), r.get('ceiling_of'))} | {r['ceiling_ev_s']:,.0f} | "
                   f"{f'{stock:,.0f}' if stock else '–'} | {f'{alone:,.0f}' if alone else '–'} | "
                   f"{r['worker_ev_s']:,.0f} | {r['ratio']:.3f} | "
                   f"{f['p50']:,.0f} / {f['p99']:,.0f} | {' + '.join(f'{m:.0f}' for m in r['rss_mb'])} | "
                   f"{r['changelog_bytes_per_user']:.0f} | {r.get('loadavg_1m', ['–'])[0]} |")
    return "\n".join(out)


def shared_item_side() -> str:
    """The shared item side's costs: served_speed.json's halves per event, and the real workers'
    deltas time and live quality from e2e_throughput-*.json (the current code's e2e runs)."""
    out = []
    cost = (_load("served_speed.json") or {}).get("shared_item_side")
    if cost:
        per = cost["per_worker_us_per_stream_event"]
        out += ["| what (served_speed.py, one process) | µs per stream event |", "|---|---|",
                f"| plan: lists, ranker examples, delta and its wire form (the owner) | {cost['plan_us_per_event']} |",
                f"| apply: decode and learn the delta (every worker) | {cost['apply_us_per_event']} |",
                *(f"| per worker with {w} worker(s): plan / {w} + apply | {v} |" for w, v in per.items()),
                f"| delta bytes per event (compressed) | {cost['delta_bytes_per_event']} |", ""]
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("e2e_throughput-*.json"))]
    runs = [r for r in runs if r.get("drain", {}).get("deltas")]
    if runs:
        out += ["| e2e run | workers | deltas applied per worker | deltas µs per stream event, per worker "
                "| live HR@20 (hits / points) | load avg |", "|---|---|---|---|---|---|"]
        for r in runs:
            d, q = r["drain"]["deltas"], r["live_quality"]
            out.append(f"| {(r.get('git_commit') or '?')[:7]} | {r['workers']} | {' / '.join(str(x['applied']) for x in d)} "
                       f"| {' / '.join(str(x['us_per_stream_event']) for x in d)} | {q['hr']} ({q['hits']} / "
                       f"{q['points']}) | {r.get('loadavg_1m', ['–'])[0]} |")
    return "\n".join(out)


def serve() -> str:
    r = _load("serve_speed.json")
    if r is None:
        return ""
    g, v, m = r["get"], r["visibility_ms"], r["rss_mb"]
    ok = {True: "met", False: "**not met**"}
    return "\n".join([
        "| measure | target | measured | |", "|---|---|---|---|",
        f"| GET at {g['target_rps']:,.0f} requests/s, {r['users']:,} users held: p50 / p99 / max ms | p99 ≤ 5 ms "
        f"| {g['latency_ms']['p50']} / {g['latency_ms']['p99']} / {g['latency_ms']['max']} "
        f"({g['achieved_rps']:,.0f}/s achieved, {g['errors']} errors) | {ok[r['targets']['get_1000_rps_p99_le_5ms']]} |",
        (f"| the same GETs inside serve (handler and serialisation, from its histogram): share under 1 / 2 / 5 ms "
         f"| – | {' / '.join(f'{v:.2%}' for v in r['server_handler_share'].values())} | – |"
         if r.get("server_handler_share") else "| | | | |"),
        f"| serve's CPU during the load | – | {g.get('serve_cpu_share', 0):.0%} of a core | – |",
        f"| published -> visible through the API: p50 / p99 / max ms ({v['samples']} lists) | p99 ≤ 50 ms "
        f"| {v['p50']} / {v['p99']} / {v['max']} | {ok[r['targets']['visible_p99_le_50ms']]} |",
        f"| RSS: empty / {r['users']:,} lists / per 100k users | – | {m['empty']} / {m['loaded']} / "
        f"{m['per_100k_users']} MB | – |",
        f"| estimate for 1M users (empty + 10 × per 100k) | – | {m['million_users_estimate']:,.0f} MB | – |",
        f"| lists taken in (produce + read all) | – | {r['ingest']['lists_per_s']:,.0f} lists/s | – |",
        "",
        f"Run: `{r['command']}` at {(r.get('git_commit') or '?')[:7]}, load average {r['loadavg_1m']} "
        f"on {r['cpu_count']} CPUs (shared with other jobs).",
    ])


def demo() -> str:
    """Rows: demo_freshness.json (the current code), then demo_freshness_*.json (earlier commits)."""
    paths = [RESULTS / "demo_freshness.json", *sorted(RESULTS.glob("demo_freshness_*.json"))]
    rows = ["| commit | runs | freshness p50, ms | freshness p99, ms | runs with p99 ≤ 100 ms |", "|---|---|---|---|---|"]
    for path in paths:
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        p50 = [run["freshness_ms"]["p50"] for run in r["runs"]]
        rows.append(f"| {r['commit']} | {len(r['runs'])} | {', '.join(map(str, p50))} | "
                    f"{', '.join(map(str, r['p99_ms']))} | {r['runs_at_or_under_100_ms']} of {len(r['runs'])} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def served_alone() -> str:
    """Rows: every model_only_compare*.json (the worker's compute alone, two commits alternated),
    then the per-stage seconds of the trees that time their stages."""
    rows = ["| before | after | batch | events | before, events/s | after, events/s | events/s | CPU per event |",
            "|---|---|---|---|---|---|---|---|"]
    stages: list[tuple[str, dict[str, float]]] = []
    for path in sorted(RESULTS.glob("model_only_compare*.json")):
        r = json.loads(path.read_text())
        cpu = f"{r['ratio_cpu_per_event']}× less" if "ratio_cpu_per_event" in r else "–"
        rows.append(f"| {r['before']} | {r['after']} | {r['batch_size']} | {r['events']:,} | {r['ev_s']['before']:,.0f} | "
                    f"{r['ev_s']['after']:,.0f} | {r['ratio_ev_s']}× | {cpu} |")
        for tree in ("before", "after"):
            if tree in r.get("seconds_by_stage", {}):
                stages.append((f"{r[tree]}, batch {r['batch_size']}, {r['events']:,} events",
                               r["seconds_by_stage"][tree]))
    out = rows if len(rows) > 2 else []
    if stages:
        names = list(dict.fromkeys(k for _, st in stages for k in st))
        out += ["", "Seconds per stage (median of the runs; `StageClock`, `other` = outside the model):", "",
                "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {label} | " + " | ".join(f"{st.get(n, 0.0):.2f}" for n in names) + " |" for label, st in stages]
    return "\n".join(out)


SECTIONS = {"quality": quality, "served_alone": served_alone, "served_path": served_path, "shared_item_side": shared_item_side, "warm_start": warm_start, "speed": speed, "e2e": e2e, "serve": serve, "demo": demo}


def render(doc: str) -> str:
    """``doc`` with every report region refilled."""
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"<!-- report:{name} -->\n{SECTIONS[name]().strip()}\n<!-- /report:{name} -->"

    return re.sub(r"<!-- report:(\w+) -->.*?<!-- /report:\1 -->", fill, doc, flags=re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is not current")
    ap.add_argument("--print", action="store_true", help="print every table instead of writing the doc")
    args = ap.parse_args()
    if args.print:
        for name, fn in SECTIONS.items():
            print(f"## {name}\n\n{fn()}\n")
        return 0
    doc = DOC.read_text()
    new = render(doc)
    if args.check:
        if new != doc:
            print(f"{DOC} is not current: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

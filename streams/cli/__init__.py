"""``freshrec``: the one command line over model_core and the streams.

Every command prints one clear line and exits non-zero on a problem the user
can fix; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from model_core.errors import BadInputError, ConfigError, FreshrecError
from streams.settings import Settings, add_kafka_flags, load_settings

if TYPE_CHECKING:
    from model_core.config import ALSConfig, FoldInConfig
    from model_core.events import Event
    from streams.cli.trainer import TrainOptions

log = logging.getLogger("freshrec")

EPILOG = ("Every setting can also come from a FRESHREC_<NAME> variable (flags win); "
          "see deploy/README.md for the full reference.")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where torch and FAISS run (default: auto = cuda when present, else cpu)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_log_args(p: argparse.ArgumentParser, *, many: bool = True, required: bool = True) -> None:
    from model_core.offline.logs import FORMATS

    p.add_argument("--log", dest="logs", action="append" if many else "store", required=required, metavar="FILE",
                   help="event log (plain or gzip)" + ("; repeat to merge several" if many else ""))
    p.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                   help="log layout (default: auto-detect the known layouts)")
    p.add_argument("--columns", default=None, metavar="MAP",
                   help="for --format csv: user=COL,item=COL,time=COL[,type=COL,event_id=COL,session=COL,...]")
    p.add_argument("--types", default=None, metavar="MAP",
                   help="for --format csv: map the file's event names, e.g. pv=view,buy=purchase")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (iALS) hyper-parameters")
    g.add_argument("--factors", type=int, default=None, help="embedding size k (default 64)")
    g.add_argument("--iterations", type=int, default=None, help="ALS sweeps (default 15)")
    g.add_argument("--regularization", type=float, default=None, help="L2 weight λ (default 0.05)")
    g.add_argument("--alpha", type=float, default=None, help="confidence scale: c = 1 + alpha * w (default 30)")
    g.add_argument("--confidence", choices=["linear", "log"], default=None, help="confidence scaling (default linear)")
    g.add_argument("--weights", default=None, metavar="MAP",
                   help="event-type weights, e.g. view=1,click=1,add_to_cart=3,purchase=5 (the default)")
    g.add_argument("--cg-steps", type=int, default=None, help="conjugate-gradient steps per sweep; 0 = exact (default 3)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")


def _add_topic_train_args(p: argparse.ArgumentParser, *, trainer: bool = False) -> None:
    g = p.add_argument_group("training from the events topic")
    if not trainer:
        g.add_argument("--from-topic", action="store_true", help="read the events topic instead of --log files")
        g.add_argument("--from-offsets", choices=["earliest"], default=None,
                       help="read from the earliest offset of every partition (the default without --since)")
    g.add_argument("--since", default="7d" if trainer else None, metavar="DURATION",
                   help="only records written in the last DURATION, e.g. 12h, 7d"
                   + (" (default 7d)" if trainer else " (default: all, as --from-offsets earliest)"))
    g.add_argument("--no-gate", dest="gate", action="store_false",
                   help="publish the new version without comparing it with the serving one")
    g.add_argument("--holdout", type=int, default=5000, metavar="N",
                   help="newest events held out for the gate: only events newer than the serving version's "
                   "training data, at most a tenth of those read (default 5000)")
    g.add_argument("--warmup", type=int, default=20000, metavar="N",
                   help="events before the holdout that warm both models' online state (default 20000)")
    g.add_argument("--warm-start", action="store_true",
                   help="start known users and items from the serving version's factors")
    g.add_argument("--keep", type=int, default=5, metavar="N",
                   help="keep the newest N versions under --out and under --out/rejected; 0 = all (default 5)")


def _train_options(args: argparse.Namespace) -> TrainOptions:
    from streams.cli.trainer import TrainOptions, parse_duration

    if args.since is not None and getattr(args, "from_offsets", None):
        raise ConfigError("give --since or --from-offsets earliest, not both")
    return TrainOptions(since_s=parse_duration(args.since) if args.since else None, gate=args.gate,
                        holdout=args.holdout, warmup=args.warmup,
                        warm_start=args.warm_start, keep=args.keep)


def _print_trained(summary: dict) -> None:
    gate = summary["gate"]
    if summary["version"] is None:
        print(f"no new version: {gate['why']}")
        return
    print(f"model {summary['version']}: {summary['n_users']} users x {summary['n_items']} items from "
          f"{summary['read']['events']} topic events ({summary['read']['skipped']} skipped), trained in "
          f"{summary['train_seconds']}s -> {summary['path']}")
    print(("promoted: " if summary["promoted"] else "NOT promoted (the workers keep the serving version): ")
          + gate["why"])


def _add_foldin_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fold-in (how recent history becomes the user's embedding)")
    g.add_argument("--history", dest="history_size", type=int, default=None,
                   help="distinct recent items kept per user (FRESHREC_HISTORY_SIZE; default 50)")
    g.add_argument("--half-life", dest="half_life_s", type=float, default=None, metavar="SECONDS",
                   help="event-time half-life of an event's weight; 0 = none (FRESHREC_HALF_LIFE_S; default 3600)")
    g.add_argument("--position-decay", dest="position_decay", type=float, default=None,
                   help="weight factor per step back in the user's item order (FRESHREC_POSITION_DECAY; default 0.5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec",
        description="Streaming recommendation updater: events in, fresh top-K lists out.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("generate", help="write a synthetic shop event log (JSON lines)", epilog=EPILOG,
                       description="Write a realistic synthetic e-commerce log: taste clusters, power-law "
                       "popularity, sessions, a view -> cart -> purchase funnel, interest drift and new items.")
    p.add_argument("--out", required=True, metavar="FILE", help="output path (.gz to compress)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--clusters", type=int, default=20, help="latent taste clusters")
    p.add_argument("--days", type=float, default=14.0, help="time span of the log")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("train", help="train an iALS model version from event logs or the events topic",
                       epilog=EPILOG,
                       description="Train implicit-feedback ALS and write a new versioned model directory "
                       "OUT/<version>/ (item factors, id maps, Gramians, hyper-parameters, metadata, checksums). "
                       "From --log files, or with --from-topic from the events topic itself (bounded by --since "
                       "or --from-offsets earliest; the worker's validation; erase commands honoured). From the "
                       "topic, the newest events are held out and the new version is compared with the serving "
                       "one on them, served as a worker serves it: it is published under OUT (the workers swap "
                       "it in) only if it does not score worse, else kept in OUT/rejected/.")
    _add_log_args(p, required=False)
    add_kafka_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory of model versions")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="--log only: train on the earliest FRACTION of the events by event time (default 1 = all)")
    _add_topic_train_args(p)
    _add_model_args(p)
    _add_common(p)

    p = sub.add_parser("trainer", help="retrain from the events topic on a schedule (--every 1h)", epilog=EPILOG,
                       description="Run `freshrec train --from-topic` every --every, until stopped (SIGTERM). "
                       "Each round reads the last --since of the events topic, trains, gates the new version "
                       "against the serving one and keeps the newest --keep versions. A failed round (broker "
                       "away, nothing to train on) is logged and the next one runs on schedule.")
    add_kafka_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory of model versions (the workers' --model)")
    p.add_argument("--every", default="1h", metavar="DURATION", help="time between rounds, e.g. 30m, 1h (default 1h)")
    _add_topic_train_args(p, trainer=True)
    _add_model_args(p)
    _add_common(p)

    p = sub.add_parser("evaluate", help="prequential (test-then-learn) evaluation against baselines",
                       epilog=EPILOG,
                       description="Sort by event time, train on the events before the split, then stream the "
                       "rest: for each event of a known user on an item new to that user, score every "
                       "model's top-K first (HR, NDCG, MRR), then let every model learn the event.")
    _add_log_args(p)
    p.add_argument("--k", type=int, default=20, help="list length K (default 20)")
    p.add_argument("--train-fraction", type=float, default=0.5, help="events before the split (default 0.5)")
    p.add_argument("--models", default="served,static,popular,trending,covisit",
                   help="comma list of served (the model the worker serves; its old name incremental is still "
                   "accepted), static, popular, trending, covisit, sr, vsknn, implicit "
                   "(implicit needs `pip install implicit`)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON")
    g = p.add_argument_group(
        "deployment", "the served model (served) is replayed the way workers serve it: each event is "
        "scored against the list its user was last published (each baseline publishes a user's list after the "
        "moment of the user's events, within the batch window)")
    g.add_argument("--batch", type=int, default=None, metavar="N",
                   help="events per micro-batch at most (default: the worker's --batch-size, 256)")
    g.add_argument("--batch-within", dest="batch_within", type=float, default=None, metavar="S",
                   help="a batch closes when the next event is more than S seconds of event time after its "
                   "first (default: the worker's FRESHREC_BATCH_WITHIN_S, 0.005: a worker reading the log "
                   "at its real pace); inf = batches of exactly N, a backfill at full speed")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="workers sharing the events topic; users split as the producer partitions them, "
                   "every worker serving from the one item side their deltas build (default 1)")
    g.add_argument("--isolated", action="store_true",
                   help="each worker learns the item side from its own users only (no deltas topic): "
                   "what sharing is worth, for comparison")
    g.add_argument("--partitions", type=int, default=None, metavar="P",
                   help="partitions of the events topic (default: the larger of 4 and --workers)")
    g.add_argument("--restart-at", dest="restart_at", type=float, default=None, metavar="F",
                   help="every worker restarts at this fraction of the scored events, with what a start "
                   "restores: user histories, and the item side from its snapshot and deltas (with "
                   "--isolated: nothing of it) (default: no restart)")
    _add_model_args(p)
    _add_foldin_args(p)
    _add_common(p)

    p = sub.add_parser("worker", help="run a streaming worker: events in, fresh lists out", epilog=EPILOG,
                       description="Consume events in micro-batches, fold each touched user in on the model "
                       "core, search the index and publish one fresh top-K list per user. Workers with the "
                       "same --group share the partitions; state moves with them (changelog). Listens to the "
                       "catalog topic and hot-swaps newer model versions found under --model.")
    add_kafka_flags(p)
    p.add_argument("--model", dest="model_dir", default=None, metavar="DIR",
                   help="directory of model versions (FRESHREC_MODEL_DIR; default ./models)")
    p.add_argument("--group", default=None, help="consumer group / Faust app id (default freshrec-worker)")
    p.add_argument("--partitions", type=int, default=None, help="partitions of topics freshrec creates (default 4)")
    p.add_argument("--k", type=int, default=None, help="list length (default 20)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="events per micro-batch (256)")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw", "ivf-sq8", "ivf-pq"], default=None,
                   help="item index: flat = exact (default); the others are approximate and faster")
    p.add_argument("--web-port", dest="web_port", type=int, default=None,
                   help="port of /metrics, /health and /ready (default 6066; 0 = off)")
    p.add_argument("--on-error", dest="on_error", choices=["dlq", "stop"], default=None,
                   help="a batch that still fails after its retries: dlq = dead-letter its events and go on "
                   "(default); stop = exit non-zero so the orchestrator restarts the worker")
    _add_foldin_args(p)
    _add_common(p)

    from streams.cli import archive, broker, demo, erase, replay, serve, tail

    for module in (broker, replay, tail, erase, archive, serve, demo):
        module.add_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "quiet", "logs")}
    if getattr(args, "debug", False):
        overrides["log_level"] = "DEBUG"
    if getattr(args, "quiet", False):
        overrides["progress"] = False
    return load_settings(overrides)


def _als_config(args: argparse.Namespace) -> ALSConfig:
    from model_core.config import ALSConfig, EventWeights

    fields = {
        "factors": args.factors, "iterations": args.iterations, "regularization": args.regularization,
        "alpha": args.alpha, "confidence": args.confidence, "cg_steps": args.cg_steps, "seed": args.seed,
    }
    values = {k: v for k, v in fields.items() if v is not None}
    if args.weights:
        values["weights"] = EventWeights.parse(args.weights)
    return ALSConfig(**values)


def _foldin_config(args: argparse.Namespace) -> FoldInConfig:
    return _settings(args).foldin  # flags, then FRESHREC_* variables, then defaults


def _read_logs(args: argparse.Namespace) -> Iterator[Event]:
    from model_core.offline.logs import ReadReport, parse_columns, parse_type_map, read_events

    columns = parse_columns(args.columns) if args.columns else None
    types = parse_type_map(args.types) if args.types else None
    for path in args.logs:
        report = ReadReport(path=str(path))
        yield from read_events(path, args.format, columns=columns, type_map=types, report=report)
        (log.warning if report.skipped else log.info)("read %s", report.summary())
        if report.events == 0:
            raise BadInputError(f"{path}: no valid events ({report.summary()})")


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from model_core.offline.synth import SynthConfig, write_log

    config = SynthConfig(users=args.users, items=args.items, events=args.events, clusters=args.clusters,
                         days=args.days, seed=args.seed)
    t = time.perf_counter()
    n = write_log(args.out, config, progress=settings.progress)
    print(f"wrote {n} events to {args.out} in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from model_core.als import train_als

    if args.from_topic == bool(args.logs):
        raise ConfigError("give --log FILE or --from-topic (one of them)")
    if args.from_topic:
        from streams.cli.trainer import train_from_topic

        if args.fraction != 1.0 or args.format != "auto" or args.columns or args.types:
            raise ConfigError("--fraction, --format, --columns and --types go with --log, not --from-topic")

        _print_trained(train_from_topic(settings, _als_config(args), args.out, _train_options(args),
                                        progress=settings.progress))
        return 0
    if args.since or args.from_offsets:
        raise ConfigError("--since and --from-offsets go with --from-topic")
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction {args.fraction} must be in (0, 1]")
    config = _als_config(args)
    events = _read_logs(args)
    if args.fraction < 1:
        ordered = sorted(events, key=lambda e: e.time)
        events = iter(ordered[: max(1, int(len(ordered) * args.fraction))])
    model = train_als(events, config, device=settings.device, progress=settings.progress)
    # the serving settings this version was trained with; a worker says when it serves it otherwise
    model.metadata["serving"] = {"foldin": settings.foldin.to_dict(), "index": settings.index}
    path = model.save(args.out)
    md = model.metadata
    print(f"model {model.version}: {md['n_users']} users x {md['n_items']} items from {md['n_events']} events, "
          f"trained in {md['train_seconds']}s on {md['device']} -> {path}")
    return 0


def _table(report: dict) -> str:
    k = report["k"]
    lines = [f"{'model':<12} {'HR@' + str(k):>8} {'NDCG@' + str(k):>8} {'MRR@' + str(k):>8} "
             f"{'buyHR@' + str(k):>9} {'events/s':>9}"]
    for name, r in report["models"].items():
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"
        lines.append(f"{name:<12} {f(r['hr']):>8} {f(r['ndcg']):>8} {f(r['mrr']):>8} {f(r['purchase_hr']):>9} "
                     f"{(r['events_per_s'] or 0):>9.0f}")
    lines.append(f"eval points: {report['eval_points']} ({report['purchase_eval_points']} purchases); "
                 f"train {report['train_events']} / test {report['test_events']} events")
    if "served_as" in report:
        lines.append(f"served model as deployed: {report['served_as']}; "
                     f"mean batch {report.get('mean_batch', '-')} events")
    for name, lift in report.get("served_vs", {}).items():
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:+.1%}"
        lines.append(f"served vs {name}: HR {pct(lift['hr'])}, NDCG {pct(lift['ndcg'])}")
    return "\n".join(lines)


def cmd_trainer(args: argparse.Namespace, settings: Settings) -> int:
    from streams.cli.trainer import parse_duration, run_trainer

    every = parse_duration(args.every)
    log.info("trainer: every %.0fs, versions in %s; settings: %s", every, args.out, settings.describe())
    return run_trainer(settings, _als_config(args), args.out, _train_options(args), every,
                       progress=settings.progress)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from model_core.offline.evaluate import prequential
    from model_core.offline.fleet import Deployment

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    deployment = Deployment(
        batch=args.batch or settings.batch_size,
        within_s=settings.batch_within_s if args.batch_within is None else args.batch_within,
        workers=args.workers, partitions=args.partitions or max(settings.partitions, args.workers),
        restart_at=args.restart_at, shared=not args.isolated)
    report = prequential(
        _read_logs(args), models=models, k=args.k, train_fraction=args.train_fraction,
        als=_als_config(args), foldin=_foldin_config(args), device=settings.device,
        progress=settings.progress, deployment=deployment,
    )
    report["logs"] = [str(p) for p in args.logs]
    print(_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    log.info("settings: %s", settings.describe())
    return run_worker(settings, settings.model_dir)


def _module_command(name: str) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return int(importlib.import_module(f"streams.cli.{name}").run(args, settings))

    return run


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "trainer": cmd_trainer, "evaluate": cmd_evaluate, "worker": cmd_worker,
            "broker": _module_command("broker"), "replay": _module_command("replay"),
            "tail": _module_command("tail"), "erase": _module_command("erase"),
            "archive": _module_command("archive"), "serve": _module_command("serve"),
            "demo": _module_command("demo")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        settings = _settings(args)
        if not sys.stderr.isatty():
            settings = settings.with_(progress=False)
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.debug("settings: %s", settings.describe())
        return COMMANDS[args.command](args, settings)
    except FreshrecError as exc:
        if debug:
            raise
        print(f"freshrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"freshrec {args.command}: interrupted", file=sys.stderr)
        return 130


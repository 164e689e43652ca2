"""``freshrec tail``: print the published lists (``streams.recommendation_client`` does the reading)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from streams.errors import BrokerUnavailableError  # noqa: F401 - raised through the client
from streams.recommendation_client import RecommendationClient, format_recommendation
from streams.settings import Settings

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``freshrec tail [--user U] [--follow] [--json]``."""
    from streams.settings import add_kafka_flags

    p = sub.add_parser(
        "tail", help="print the published recommendation lists",
        description="Read the recommendations topic. Without --follow: print the newest list of "
        "each (matching) user once the topic is drained (no message for --idle seconds), then "
        "exit. With --follow: print every list as it arrives until Ctrl-C.",
        epilog="Environment: FRESHREC_BROKERS, FRESHREC_PROFILE, FRESHREC_TOPIC_PREFIX (flags win).",
    )
    p.add_argument("--user", dest="users", action="append", default=None, metavar="U",
                   help="only this user id; repeat for several (default: all users)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lists until Ctrl-C")
    p.add_argument("--new", action="store_true", help="with --follow: only lists published from now on")
    p.add_argument("--json", action="store_true", help="print the raw JSON messages, one per line")
    p.add_argument("--items", type=int, default=10, metavar="N", help="items shown per list (default 10)")
    p.add_argument("--idle", type=float, default=2.0, metavar="SECONDS",
                   help="without --follow: the topic is drained after this long without a message (default 2)")
    p.add_argument("--group", default=None,
                   help="join this consumer group (default: read all partitions, commit nothing)")
    add_kafka_flags(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a broker (default 10)")
    p.add_argument("--quiet", action="store_true", help="(no effect; accepted like the other commands)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    follow = bool(getattr(args, "follow", False))
    max_items = getattr(args, "items", 10)
    client = RecommendationClient(
        settings, group=getattr(args, "group", None),
        from_beginning=not (follow and getattr(args, "new", False)),
        users=getattr(args, "users", None), connect_timeout=getattr(args, "timeout", 10.0),
    )
    try:
        if follow:
            while not stop.is_set():
                got = client._poll_raw(0.5)
                if got is not None:
                    rec, raw = got
                    print(raw.decode(errors="replace") if args.json else format_recommendation(
                        rec, max_items=max_items), flush=True)
        else:
            latest = client.drain(idle=getattr(args, "idle", 2.0), stop=stop)
            for user in sorted(latest):
                print(client.latest_raw[user].decode(errors="replace") if args.json
                      else format_recommendation(latest[user], max_items=max_items))
            if not args.json:
                print(f"{len(latest)} users, {client.received} lists read"
                      + (f", {client.skipped} undecodable skipped" if client.skipped else ""),
                      file=sys.stderr)
        return 0
    except BrokenPipeError:  # `freshrec tail | head`
        return 0
    finally:
        client.close()
        for s, handler in old.items():
            signal.signal(s, handler)


"""``freshrec erase``: forget users (privacy requests).

Each erase is a command on the events topic, keyed by the user like the user's
events, so it lands in the user's partition, in order with the user's events,
and the worker that owns the partition applies it exactly once, like an event:
it deletes the user's state (a tombstone on the state changelog) and publishes a
tombstone (null value) on the recommendations topic, so compacting subscribers
forget the user. Events of the user that come after the command start a new,
empty history. Aggregates with no user id in them (trending counts, item
vectors folded in from many users) are kept.
"""

from __future__ import annotations

import argparse
import logging
import time

from streams.codec import encode_erase
from streams.errors import BrokerUnavailableError
from streams.kafka import client_config, ensure_topics
from streams.settings import Settings

__all__ = ["add_parser", "erase_users", "run"]

log = logging.getLogger(__name__)


def erase_users(settings: Settings, users: list[str], *, wait_s: float = 0.0) -> set[str]:
    """Send an erase command per user; with ``wait_s`` > 0, wait that long for each user's
    tombstone on the recommendations topic and return the users confirmed erased."""
    from confluent_kafka import Producer

    from streams.recommendation_client import RecommendationClient

    ensure_topics(settings)
    client = RecommendationClient(settings, from_beginning=False, users=users) if wait_s > 0 else None
    try:
        producer = Producer(client_config(settings, "producer"))
        for user in users:
            producer.produce(settings.events_topic, key=user.encode(), value=encode_erase(user))
        if producer.flush(30) != 0:
            raise BrokerUnavailableError(f"could not send the erase commands to {settings.brokers}")
        if client is None:
            return set()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not client.erased.issuperset(users):
            client.poll(0.2)
        return set(client.erased)
    finally:
        if client is not None:
            client.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``freshrec erase --user U [--user ...] [--wait S]``."""
    from streams.settings import add_kafka_flags

    p = sub.add_parser(
        "erase", help="forget users: their state, and their lists for compacting subscribers",
        description="Send an erase command for each user on the events topic. The worker that owns the "
        "user's partition deletes the user's state (changelog tombstone) and publishes a tombstone (null "
        "value) on the recommendations topic; later events of the user start from nothing. Trending "
        "counts and item vectors, which hold no user id, are kept.",
        epilog="Environment: FRESHREC_BROKERS, FRESHREC_PROFILE, FRESHREC_TOPIC_PREFIX (flags win).",
    )
    p.add_argument("--user", dest="users", action="append", required=True, metavar="U",
                   help="user id to erase; repeat for several")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="wait this long for the workers' tombstones and report them; 0 = send and exit "
                   "(default 30)")
    add_kafka_flags(p)
    p.add_argument("--quiet", action="store_true", help="(no effect; accepted like the other commands)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def run(args: argparse.Namespace, settings: Settings) -> int:
    users = list(dict.fromkeys(args.users))
    if any(not u for u in users):
        print("freshrec erase: error: --user must not be empty")
        return 2
    done = erase_users(settings, users, wait_s=args.wait)
    if args.wait <= 0:
        print(f"sent erase commands for {len(users)} user(s)")
        return 0
    missing = [u for u in users if u not in done]
    for u in users:
        print(f"{u}: {'erased' if u in done else 'no tombstone yet (is a worker running?)'}")
    return 0 if not missing else 1

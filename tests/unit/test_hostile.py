"""Hostile input through the whole per-message path: decode -> history -> fold-in -> search.

For any bytes and any JSON value, ``decode_message`` either returns a valid
command or raises BadInputError (never anything else), and everything it lets
through keeps the online math finite, shared state (trending) included.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_core.als import ALSModel
from model_core.config import ALSConfig, FoldInConfig
from model_core.errors import BadInputError
from model_core.events import Event, EventType
from model_core.served.model import ServedModel
from model_core.state import UserHistory
from streams.codec import EraseCommand, EventLimits, decode_message

NOW = 1_764_547_200.0  # 2025-12-01: the broker timestamp of the messages below
LIMITS = EventLimits()
FOLDIN = FoldInConfig(history_size=8)


@pytest.fixture(scope="module")
def rec() -> ServedModel:
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(40)]
    model = ALSModel(ALSConfig(factors=8), items, rng.normal(size=(40, 8)).astype(np.float32),
                     [f"u{j}" for j in range(10)], rng.normal(size=(10, 8)).astype(np.float32))
    return ServedModel(model, FOLDIN, device="cpu")


def run(rec: ServedModel, messages: list[bytes], histories: dict[str, UserHistory]) -> int:
    """The worker's per-batch path without the broker; returns how many messages were rejected."""
    applied: list[Event] = []
    touched: dict[str, UserHistory] = {}
    rejected = 0
    for offset, value in enumerate(messages):
        try:
            key = json.loads(value).get("user_id") if value.startswith(b"{") else None
        except Exception:  # noqa: BLE001 - the key is whatever the producer sent; decode judges it
            key = None
        try:
            cmd = decode_message(value, str(key).encode() if key is not None else b"k", NOW, LIMITS)
        except BadInputError as exc:
            assert str(exc)  # a reason for the dead-letter record
            rejected += 1
            continue
        if isinstance(cmd, EraseCommand):
            histories.pop(cmd.user_id, None)
            continue
        h = histories.setdefault(cmd.user_id, UserHistory(cmd.user_id))
        if h.add(cmd, rec.model.config.weights, FOLDIN, (0, offset)):
            applied.append(cmd)
            touched[cmd.user_id] = h
    if touched:
        rec.observe(applied, touched)
        lists = rec.recommend(list(touched.values()), k=5)
        for lst in lists:
            assert all(math.isfinite(s) for _, s in lst), lst
        assert np.isfinite(rec.embed(list(touched.values()))).all()
    return rejected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_values = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300)
                | st.sampled_from(["view", "purchase", "buy", "2025-11-30T10:00:00Z", "1e400", "-1e400", "NaN"])
                | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
event_like = st.fixed_dictionaries(
    {"user_id": st.sampled_from(["u1", "u2", "u3"]) | field_values,
     "item_id": st.sampled_from(["i1", "i2", "new-1"]) | field_values,
     "type": st.sampled_from(["view", "add_to_cart", "purchase"]) | field_values,
     "time": st.floats(NOW - 10 * 365 * 86400, NOW + 2 * 86400) | field_values},
    optional={"quantity": field_values, "price": field_values, "weight": field_values,
              "event_id": field_values, "session_id": field_values, "command": field_values},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_are_rejected_or_applied(rec: ServedModel, values: list[bytes]) -> None:
    run(rec, values, {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, max_size=8))
def test_arbitrary_json_is_rejected_or_applied(rec: ServedModel, values: list[object]) -> None:
    run(rec, [json.dumps(v).encode() for v in values], {})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_like, min_size=1, max_size=12))
def test_event_shaped_json_is_rejected_or_applied(rec: ServedModel, values: list[dict]) -> None:
    histories: dict[str, UserHistory] = {}
    run(rec, [json.dumps(v, allow_nan=True).encode() for v in values], histories)
    for h in histories.values():
        assert all(math.isfinite(w) and math.isfinite(t) for w, t in h.entries.values())
        UserHistory.decode(h.user_id, h.encode())  # the changelog value round-trips


def event(user: str, item: str, t: float, **extra: object) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "type": "view", "time": t, **extra}).encode()


@pytest.mark.parametrize("value, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "over the limit"),
    (b"[" * 20_000 + b"]" * 20_000, "not valid JSON: depth limit"),
    (b'{"user_id":"u1","item_id":"i1","type":"view","time":1,"quantity":1e400}', "not valid JSON: number is inf"),
    (b'{"user_id":"u1","item_id":"i1","type":"view","time":1e400}', "not valid JSON: number is inf"),
    (event("u1", "i1", NOW, quantity=1e7), "quantity"),
    (event("u1", "i1", 1e12), "after the message's broker time"),
    (event("u1", "i1", -1e12), "before FRESHREC_MIN_EVENT_TIME"),
    (event("u1", "i1", 900_000_000), "before FRESHREC_MIN_EVENT_TIME"),
    (event("u1", "i1", NOW, price=-1), "price"),
    (event("u1", "i1", NOW, weight=1e300), "weight"),
    (event("u1", "x" * 257, NOW), "item_id of 257 characters"),
    (event("u1", "i1", NOW, event_id="e" * 300), "event_id of 300 characters"),
    (json.dumps({"user_id": {"a": 1}, "item_id": "i1", "type": "view", "time": NOW}).encode(), "user_id must be"),
    (event("u1", "i1", NOW, quantity=True), "quantity"),
    (json.dumps({"command": "drop-all", "user_id": "u1"}).encode(), "unknown command"),
    (json.dumps({"command": "erase"}).encode(), "no user_id"),
])
def test_poison_messages_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadInputError, match=reason):
        decode_message(value, b"u1", NOW, LIMITS)


def test_far_future_event_inside_the_window_cannot_poison_trending(rec: ServedModel) -> None:
    """Events 25 years apart (both valid) and far out of order keep trending finite and usable."""
    fresh = ServedModel(rec.model, FOLDIN, device="cpu")
    old, new = 946_684_800.0 + 1, NOW
    for t, user in ((new, "a"), (old, "b"), (new + 3600, "c"), (old, "d")):
        h = UserHistory(user)
        e = Event(user, "i3", EventType.VIEW, t)
        h.add(e, fresh.model.config.weights, FOLDIN, (0, 1))
        fresh.observe([e], {user: h})
    [cold] = fresh.recommend([UserHistory("cold")], k=3)
    assert cold and cold[0][0] == "i3" and all(math.isfinite(s) for _, s in cold)


def test_out_of_order_history_stays_finite() -> None:
    h = UserHistory("u")
    w = ALSConfig().weights
    for j, t in enumerate([NOW, 946_684_801.0, NOW + 86_000, 946_684_801.0, NOW]):
        assert h.add(Event("u", f"i{j % 2}", EventType.PURCHASE, t), w, FoldInConfig(half_life_s=1e-3), (0, j))
    items, weights = h.weighted_items(FoldInConfig(half_life_s=1e-3))
    assert all(math.isfinite(x) and x >= 0 for x in weights)


def test_erase_command_decodes() -> None:
    assert decode_message(b'{"command":"erase","user_id":"u9"}', b"u9", NOW) == EraseCommand("u9")
    with pytest.raises(BadInputError, match="key"):
        decode_message(b'{"command":"erase","user_id":"u9"}', b"u8", NOW)

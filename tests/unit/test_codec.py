"""streams.codec: round-trips (hypothesis), rejection reasons, dead-letter records."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_core.errors import BadInputError
from model_core.events import MAX_PRICE, MAX_QUANTITY, MAX_WEIGHT, Event, EventType
from streams.codec import (
    SCHEMA,
    Recommendation,
    decode_event,
    decode_recommendation,
    dlq_record,
    encode_event,
    encode_recommendation,
)

# Text without lone surrogates: those cannot be encoded as UTF-8 at all (see
# test_event_with_escaped_lone_surrogate below).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
ids = text.filter(lambda s: s != "")
finite = st.floats(allow_nan=False, allow_infinity=False)

events = st.builds(
    Event,
    user_id=ids,
    item_id=ids,
    type=st.sampled_from(list(EventType)),
    time=finite,
    event_id=st.none() | text,
    session_id=st.none() | text,
    quantity=st.none() | st.integers(0, MAX_QUANTITY),
    price=st.none() | st.floats(0, MAX_PRICE),
    weight=st.none() | st.floats(0, MAX_WEIGHT),
)

scores = finite.map(lambda x: round(x, 6))  # the wire keeps 6 decimals
recommendations = st.builds(
    Recommendation,
    user_id=ids,
    items=st.lists(st.tuples(ids, scores), max_size=8),
    model_version=text,
    index_version=st.integers(min_value=0, max_value=2**53),
    events_applied=st.integers(min_value=0, max_value=2**53),
    last_event_id=st.none() | text,
    last_event_time=st.none() | finite,
    published_at=finite,
    last_event_at=st.none() | finite,
)


def valid_event() -> dict:
    return {"user_id": "u1", "item_id": "i9", "type": "purchase", "time": 1700000000.5, "event_id": "e-17"}


def valid_rec() -> dict:
    return json.loads(encode_recommendation(Recommendation(
        "u1", [("i9", 0.93), ("i4", 0.91)], "20261125T000000Z", 17, 42, "e-17", 1.7e9, 1.7e9 + 1)))


# ---------------------------------------------------------------------- round-trips


@given(events)
@settings(max_examples=200)
def test_event_round_trip(event: Event) -> None:
    data = encode_event(event)
    assert isinstance(data, bytes)
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event


@given(recommendations)
@settings(max_examples=200)
def test_recommendation_round_trip(rec: Recommendation) -> None:
    data = encode_recommendation(rec)
    back = decode_recommendation(data)
    assert back == rec
    assert back.item_ids == [i for i, _ in rec.items]
    assert json.loads(data)["schema"] == SCHEMA


@given(recommendations, st.lists(st.lists(text, max_size=3), min_size=8, max_size=8))
@settings(max_examples=100)
def test_recommendation_sources_round_trip(rec: Recommendation, sources: list[list[str]]) -> None:
    if not rec.items:
        return
    rec.sources = sources[: len(rec.items)]
    assert decode_recommendation(encode_recommendation(rec)) == rec


def test_recommendation_sources_are_optional_per_item() -> None:
    d = valid_rec()
    assert "sources" not in d["items"][0]  # absent = unknown: what older workers publish
    assert decode_recommendation(json.dumps(d)).sources is None
    d["items"][0]["sources"] = ["foldin", "covisit"]
    assert decode_recommendation(json.dumps(d)).sources == [["foldin", "covisit"], None]
    for bad in ("foldin", [1], {"a": 1}):
        d["items"][0]["sources"] = bad
        with pytest.raises(BadInputError, match="sources"):
            decode_recommendation(json.dumps(d))
    d["items"][0] = "not an object"
    with pytest.raises(BadInputError):
        decode_recommendation(json.dumps(d))


def test_recommendation_scores_are_rounded_to_6_decimals() -> None:
    rec = Recommendation("u", [("i", 0.123456789)], "v", 1, 1, None, None, 1.0)
    assert decode_recommendation(encode_recommendation(rec)).items == [("i", 0.123457)]


def test_event_wire_form() -> None:
    assert json.loads(encode_event(Event("u1", "i9", EventType.VIEW, 1.5))) == {
        "user_id": "u1", "item_id": "i9", "type": "view", "time": 1.5}
    assert decode_event(b'{"user_id":"u","item_id":"i","type":"addtocart","time":"2023-11-14T22:13:20Z"}') == \
        Event("u", "i", EventType.ADD_TO_CART, 1700000000.0)


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize(("value", "reason"), [
    (None, "empty message"),
    (b"", "not valid JSON"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (json.dumps({**valid_event(), "user_id": None}).encode(), "missing user_id"),
    (json.dumps({k: v for k, v in valid_event().items() if k not in ("item_id", "time")}).encode(),
     "missing item_id, time"),
    (json.dumps({**valid_event(), "type": "wishlist"}).encode(), "unknown event type"),
    (json.dumps({**valid_event(), "time": [1]}).encode(), "not a time"),
    (json.dumps({**valid_event(), "time": "yesterday"}).encode(), "neither Unix seconds nor ISO"),
    (json.dumps({**valid_event(), "time": True}).encode(), "not a time"),
    (json.dumps({**valid_event(), "quantity": "two"}).encode(), "quantity .* is not a number"),
    (json.dumps({**valid_event(), "weight": -1}).encode(), "weight"),
    (b'{"user_id":"u","item_id":"i","type":"view","time":NaN}', "not finite"),
])
def test_bad_events_are_rejected_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(BadInputError, match=reason):
        decode_event(value)


@pytest.mark.parametrize(("value", "reason"), [
    (b"{not json", "not a recommendation"),
    (b"\xff\xfe\x00", "not a recommendation"),
    (json.dumps({**valid_rec(), "schema": 2}).encode(), "schema 2 is not 1"),
    (json.dumps({k: v for k, v in valid_rec().items() if k != "schema"}).encode(), "schema None"),
    (json.dumps({k: v for k, v in valid_rec().items() if k != "user_id"}).encode(), "user_id"),
    (json.dumps({k: v for k, v in valid_rec().items() if k != "published_at"}).encode(), "published_at"),
    (json.dumps({**valid_rec(), "items": [{"item_id": "i1"}]}).encode(), "score"),
    (json.dumps({**valid_rec(), "items": 5}).encode(), "not a recommendation"),
    (json.dumps({**valid_rec(), "index_version": "seventeen"}).encode(), "seventeen"),
    (json.dumps({**valid_rec(), "published_at": None}).encode(), "not a recommendation"),
])
def test_bad_recommendations_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadInputError, match=reason):
        decode_recommendation(value)


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"5", b"null"])
def test_non_object_recommendation_is_bad_input(value: bytes) -> None:
    with pytest.raises(BadInputError):
        decode_recommendation(value)


def test_event_with_escaped_lone_surrogate_is_rejected_at_the_edge() -> None:
    with pytest.raises(BadInputError, match="not valid Unicode"):
        decode_event(b'{"user_id":"u\\ud800","item_id":"i","type":"view","time":1}')


# ---------------------------------------------------------------------- dead letters


@given(st.binary(max_size=64), text)
@settings(max_examples=100)
def test_dlq_record_keeps_the_original_bytes(original: bytes, reason: str) -> None:
    rec = json.loads(dlq_record(original, reason, topic="t.events", partition=1, offset=42))
    assert (rec["reason"], rec["topic"], rec["partition"], rec["offset"]) == (reason, "t.events", 1, 42)
    if rec["original"] is not None:
        assert rec["original_b64"] is None
        assert rec["original"].encode() == original
    else:
        assert base64.b64decode(rec["original_b64"]) == original


def test_dlq_record_text_and_binary() -> None:
    text_rec = json.loads(dlq_record(b'{"user_id": 1', "not valid JSON", topic="t", partition=0, offset=7))
    assert text_rec["original"] == '{"user_id": 1' and text_rec["original_b64"] is None
    raw = b"\xff\x00\xfe binary"
    bin_rec = json.loads(dlq_record(raw, "bad", topic="t", partition=0, offset=8))
    assert bin_rec["original"] is None and base64.b64decode(bin_rec["original_b64"]) == raw
    assert json.loads(dlq_record(None, "empty", topic="t", partition=0, offset=9))["original"] == ""


@pytest.mark.parametrize("original", [b"x" * 2_000_000, bytes(range(256)) * 8000, b"\x01" * 900_000])
def test_dlq_record_of_a_huge_message_fits_a_producer_message(original: bytes) -> None:
    rec = dlq_record(original, "too big", topic="t", partition=0, offset=9)
    assert len(rec) < 1_000_000  # librdkafka's default message.max.bytes
    d = json.loads(rec)
    assert d["truncated"] and d["original_bytes"] == len(original) and d["offset"] == 9

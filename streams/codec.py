"""Wire formats: events (the JSON line format of model_core) and recommendation lists.

A recommendation message (key = user_id, value = JSON)::

    {"user_id": "u1", "items": [{"item_id": "i9", "score": 0.93}, ...],
     "model_version": "20261125T...Z", "index_version": 17, "events_applied": 42,
     "last_event_id": "e-17", "last_event_time": 1700000000.5,
     "published_at": 1700000001.2, "last_event_at": 1700000001.1, "schema": 1}

Each item may carry ``"sources": ["foldin", "covisit", ...]``, the candidate sources that
put it on the list; absent means unknown (older workers), and decoders must accept both.

``events_applied`` counts the distinct events folded into that user so far.
``last_event_at`` is the broker timestamp (Unix seconds) of the newest message
the list reflects: a subscriber's ``time received - last_event_at`` is the
list's freshness (``None`` in lists of older workers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from model_core.errors import BadInputError
from model_core.events import Event, event_from_dict, event_from_json, event_to_json

__all__ = [
    "SCHEMA",
    "EraseCommand",
    "EventLimits",
    "Recommendation",
    "decode_event",
    "decode_message",
    "decode_recommendation",
    "dlq_record",
    "encode_erase",
    "encode_event",
    "encode_recommendation",
    "encode_trending",
]

SCHEMA = 1


@dataclass(frozen=True)
class EventLimits:
    """What an event message may be (``Settings`` fields of the same names)."""

    max_message_bytes: int = 65536
    max_id_length: int = 256
    min_event_time: float = 946684800.0  # 2000-01-01
    max_future_s: float = 86400.0

    @classmethod
    def of(cls, settings: Any) -> EventLimits:
        """The limits a ``Settings`` sets (its fields of the same names)."""
        return cls(settings.max_message_bytes, settings.max_id_length, settings.min_event_time,
                   settings.max_future_s)


@dataclass(frozen=True)
class EraseCommand:
    """``{"command": "erase", "user_id": U}`` on the events topic (key U): forget the user.

    It travels in the user's own partition, so it is ordered with the user's
    events and applied exactly once like them (see docs/operations.md).
    """

    user_id: str


def decode_event(value: bytes | str | None) -> Event:
    """Decode and validate one event (no size or time limits); BadInputError says why not."""
    if value is None:
        raise BadInputError("empty message (no value)")
    return event_from_json(value)


def decode_message(value: bytes | None, key: bytes | None, timestamp: float | None,
                   limits: EventLimits = EventLimits()) -> Event | EraseCommand:
    """Decode and validate one message of the events topic.

    ``timestamp`` is the message's broker timestamp (Unix seconds; None or <= 0:
    now). Raises BadInputError, and nothing else, for any input whatsoever: the
    caller dead-letters the message with ``str(error)`` as the reason.
    """
    try:
        return _decode_message(value, key, timestamp, limits)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever breaks the decoder is the message's fault
        raise BadInputError(f"undecodable message ({type(exc).__name__}: {str(exc)[:200]})") from None


def _decode_message(value: bytes | None, key: bytes | None, timestamp: float | None,
                    limits: EventLimits) -> Event | EraseCommand:
    if value is None:
        raise BadInputError("empty message (no value)")
    if len(value) > limits.max_message_bytes:
        raise BadInputError(f"message of {len(value)} bytes is over the limit of {limits.max_message_bytes} "
                            "(FRESHREC_MAX_MESSAGE_BYTES)")
    try:
        obj = orjson.loads(value)  # strict: no NaN/Infinity, no lone surrogates, depth <= 1024
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"not valid JSON: {exc}") from None
    if isinstance(obj, dict) and "command" in obj:
        cmd: Event | EraseCommand = _command(obj)
        user = cmd.user_id
    else:
        cmd = event_from_dict(obj)
        user = cmd.user_id
        for name in ("user_id", "item_id", "session_id", "event_id", "category"):
            v = getattr(cmd, name)
            if v is not None and len(v) > limits.max_id_length:
                raise BadInputError(f"event {name} of {len(v)} characters is over the limit of "
                                    f"{limits.max_id_length} (FRESHREC_MAX_ID_LENGTH)")
        now = timestamp if timestamp is not None and timestamp > 0 else time.time()
        if cmd.time < limits.min_event_time:
            raise BadInputError(f"event time {cmd.time:.0f} is before FRESHREC_MIN_EVENT_TIME "
                                f"{limits.min_event_time:.0f}")
        if cmd.time > now + limits.max_future_s:
            raise BadInputError(f"event time {cmd.time:.0f} is more than {limits.max_future_s:.0f}s after the "
                                f"message's broker time {now:.0f} (FRESHREC_MAX_FUTURE_S)")
    if user.startswith("\x00"):
        raise BadInputError("user_id starts with a NUL character")
    if key is None:
        raise BadInputError("message has no key (the key must be the user_id)")
    if key.decode(errors="replace") != user:
        raise BadInputError(f"message key {key[:64]!r} is not the event's user_id")
    return cmd


def _command(obj: dict[str, object]) -> EraseCommand:
    if obj.get("command") != "erase":
        raise BadInputError(f"unknown command {str(obj.get('command'))[:40]!r} (known: erase)")
    user = obj.get("user_id")
    if not isinstance(user, str) or not user:
        raise BadInputError("erase command has no user_id")
    return EraseCommand(user)


def encode_erase(user_id: str) -> bytes:
    """The erase command for ``user_id`` (send it with key = user_id)."""
    return json.dumps({"command": "erase", "user_id": user_id}, separators=(",", ":")).encode()


def encode_event(event: Event) -> bytes:
    return event_to_json(event).encode()


@dataclass
class Recommendation:
    """One published top-K list."""

    user_id: str
    items: list[tuple[str, float]]
    model_version: str
    index_version: int
    events_applied: int
    last_event_id: str | None
    last_event_time: float | None
    published_at: float
    last_event_at: float | None = None
    schema: int = SCHEMA
    sources: Sequence[Sequence[str] | None] | None = None
    """Per item (same order as ``items``), the candidate sources that put it there; None for
    the whole list, or for one item, when the message does not say."""

    @property
    def item_ids(self) -> list[str]:
        return [i for i, _ in self.items]


def _item_json(item_id: str, score: float, sources: Sequence[str] | None) -> dict[str, Any]:
    d: dict[str, Any] = {"item_id": item_id, "score": round(float(score), 6)}
    if sources is not None:
        d["sources"] = list(sources)
    return d


def _sources(x: dict[str, Any]) -> list[str] | None:
    raw = x.get("sources")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise BadInputError(f"item sources {str(raw)[:80]!r} is not a list of strings")
    return raw


def encode_recommendation(rec: Recommendation) -> bytes:
    return orjson.dumps({
        "user_id": rec.user_id,
        "items": [_item_json(i, s, rec.sources[n] if rec.sources and n < len(rec.sources) else None)
                  for n, (i, s) in enumerate(rec.items)],
        "model_version": rec.model_version, "index_version": rec.index_version,
        "events_applied": rec.events_applied, "last_event_id": rec.last_event_id,
        "last_event_time": rec.last_event_time, "published_at": rec.published_at,
        "last_event_at": rec.last_event_at, "schema": rec.schema,
    })


def decode_recommendation(value: bytes | str) -> Recommendation:
    try:
        d = orjson.loads(value)
        if not isinstance(d, dict):
            raise BadInputError("recommendation message is not a JSON object")
        if d.get("schema") != SCHEMA:
            raise BadInputError(f"recommendation schema {d.get('schema')!r} is not {SCHEMA}")
        sources = [_sources(x) for x in d["items"]]
        return Recommendation(
            user_id=str(d["user_id"]),
            items=[(str(x["item_id"]), float(x["score"])) for x in d["items"]],
            sources=sources if any(v is not None for v in sources) else None,
            model_version=str(d["model_version"]),
            index_version=int(d["index_version"]),
            events_applied=int(d["events_applied"]),
            last_event_id=d.get("last_event_id"),
            last_event_time=d.get("last_event_time"),
            published_at=float(d["published_at"]),
            last_event_at=None if d.get("last_event_at") is None else float(d["last_event_at"]),
        )
    except BadInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInputError(f"not a recommendation message: {exc!r}") from None


DLQ_ORIGINAL_BYTES = 65536
"""At most this much of the original goes into a dead-letter record: a message of any size
(up to what the broker took) must fit the producer's 1 MB limit as a DLQ record."""


def encode_trending(items: list[tuple[str, float]], model_version: str, published_at: float) -> bytes:
    """The global trending list (``Settings.trending_topic``, key ``b"global"``)::

        {"items": [{"item_id": "i9", "score": 0.93}, ...], "model_version": "...", "published_at": 1.7e9}
    """
    return orjson.dumps({"items": [{"item_id": i, "score": round(float(s), 6)} for i, s in items],
                         "model_version": model_version, "published_at": published_at})


def dlq_record(original: bytes | None, reason: str, *, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter message: the original bytes (as text where possible; the first
    ``DLQ_ORIGINAL_BYTES`` of a longer one, the rest stays at topic/partition/offset) and the reason."""
    whole = original or b""
    raw = whole[:DLQ_ORIGINAL_BYTES]
    try:
        text: str | None = raw.decode()
        b64 = None
    except UnicodeDecodeError:
        import base64

        text, b64 = None, base64.b64encode(raw).decode()
    return json.dumps({"reason": reason, "original": text, "original_b64": b64, "original_bytes": len(whole),
                       "truncated": len(whole) > len(raw), "topic": topic, "partition": partition,
                       "offset": offset}, separators=(",", ":")).encode()

"""Wire formats: events (the JSON line format of model_core) and recommendation lists.

A recommendation message (key = user_id, value = JSON)::

    {"user_id": "u1", "items": [{"item_id": "i9", "score": 0.93}, ...],
     "model_version": "20261125T...Z", "index_version": 17, "events_applied": 42,
     "last_event_id": "e-17", "last_event_time": 1700000000.5,
     "published_at": 1700000001.2, "schema": 1}

``events_applied`` counts the distinct events folded into that user so far.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from model_core.errors import BadInputError
from model_core.events import Event, event_from_json, event_to_json

__all__ = ["SCHEMA", "Recommendation", "decode_event", "encode_event", "encode_recommendation",
           "decode_recommendation", "dlq_record"]

SCHEMA = 1


def decode_event(value: bytes | str | None) -> Event:
    """Decode and validate one event message; BadInputError says why it is rejected."""
    if value is None:
        raise BadInputError("empty message (no value)")
    return event_from_json(value)


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
    schema: int = SCHEMA

    @property
    def item_ids(self) -> list[str]:
        return [i for i, _ in self.items]


def encode_recommendation(rec: Recommendation) -> bytes:
    d = asdict(rec)
    d["items"] = [{"item_id": i, "score": round(float(s), 6)} for i, s in rec.items]
    return json.dumps(d, separators=(",", ":")).encode()


def decode_recommendation(value: bytes | str) -> Recommendation:
    try:
        d = json.loads(value)
        if not isinstance(d, dict):
            raise BadInputError("recommendation message is not a JSON object")
        if d.get("schema") != SCHEMA:
            raise BadInputError(f"recommendation schema {d.get('schema')!r} is not {SCHEMA}")
        return Recommendation(
            user_id=str(d["user_id"]),
            items=[(str(x["item_id"]), float(x["score"])) for x in d["items"]],
            model_version=str(d["model_version"]),
            index_version=int(d["index_version"]),
            events_applied=int(d["events_applied"]),
            last_event_id=d.get("last_event_id"),
            last_event_time=d.get("last_event_time"),
            published_at=float(d["published_at"]),
        )
    except BadInputError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"not a recommendation message: {exc!r}") from None


def dlq_record(original: bytes | None, reason: str, *, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter message: the original bytes (as text where possible) and the reason."""
    raw = original or b""
    try:
        text: str | None = raw.decode()
        b64 = None
    except UnicodeDecodeError:
        import base64

        text, b64 = None, base64.b64encode(raw).decode()
    return json.dumps({"reason": reason, "original": text, "original_b64": b64, "topic": topic,
                       "partition": partition, "offset": offset}, separators=(",", ":")).encode()

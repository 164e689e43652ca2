"""The one event type, and its JSON line form (the same JSON the events topic carries).

A JSON event is one object per line::

    {"user_id": "u1", "item_id": "i9", "type": "purchase", "time": 1700000000.5,
     "event_id": "e-17", "session_id": "s-3", "quantity": 1, "price": 9.99}

``user_id``, ``item_id``, ``type`` and ``time`` are required; ``time`` is Unix
seconds (a number) or an ISO 8601 string. ``weight`` (optional) overrides the
event-type weight, e.g. a MovieLens rating; ``category`` (optional) is the item's
category where the log has one.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from model_core.errors import BadInputError

__all__ = ["Event", "EventType", "parse_event_type", "parse_time", "event_from_dict", "event_from_json", "event_to_json"]


# Largest magnitudes an event may carry: far beyond any real shop, small enough
# that every sum, product and float32 cast in the online math stays finite.
MAX_QUANTITY = 1_000_000
MAX_PRICE = 1e12
MAX_WEIGHT = 1e6


class EventType(str, enum.Enum):
    """What the user did with the item."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


_TYPE_ALIASES: dict[str, EventType] = {
    "view": EventType.VIEW,
    "pv": EventType.VIEW,
    "click": EventType.CLICK,
    "add_to_cart": EventType.ADD_TO_CART,
    "addtocart": EventType.ADD_TO_CART,
    "cart": EventType.ADD_TO_CART,
    "purchase": EventType.PURCHASE,
    "buy": EventType.PURCHASE,
    "transaction": EventType.PURCHASE,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction. ``time`` is event time in Unix seconds."""

    user_id: str
    item_id: str
    type: EventType
    time: float
    event_id: str | None = None
    session_id: str | None = None
    quantity: int | None = None
    price: float | None = None
    weight: float | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise BadInputError("event has an empty user_id")
        if not self.item_id:
            raise BadInputError("event has an empty item_id")
        if not isinstance(self.type, EventType):
            raise BadInputError(f"event type {self.type!r} is not an EventType")
        if not math.isfinite(self.time):
            raise BadInputError(f"event time {self.time!r} is not a finite number")
        if self.weight is not None and not (math.isfinite(self.weight) and 0 <= self.weight <= MAX_WEIGHT):
            raise BadInputError(f"event weight {self.weight!r} must be a number in [0, {MAX_WEIGHT:g}]")
        if self.quantity is not None and not 0 <= self.quantity <= MAX_QUANTITY:
            raise BadInputError(f"event quantity {self.quantity!r} must be in [0, {MAX_QUANTITY}]")
        if self.price is not None and not (math.isfinite(self.price) and 0 <= self.price <= MAX_PRICE):
            raise BadInputError(f"event price {self.price!r} must be a number in [0, {MAX_PRICE:g}]")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict; optional fields that are None are left out."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type.value,
            "time": self.time,
        }
        for name in ("event_id", "session_id", "quantity", "price", "weight", "category"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def parse_event_type(value: object) -> EventType:
    """Map a type name (``view``, ``pv``, ``addtocart``, ``buy``, ...) to an EventType."""
    if isinstance(value, EventType):
        return value
    key = str(value).strip().lower()
    try:
        return _TYPE_ALIASES[key]
    except KeyError:
        known = ", ".join(t.value for t in EventType)
        raise BadInputError(f"unknown event type {value!r} (known: {known})") from None


def parse_time(value: object) -> float:
    """Unix seconds from a number, a numeric string or an ISO 8601 string (UTC if no zone)."""
    if isinstance(value, bool):
        raise BadInputError(f"event time {value!r} is not a time")
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            t = float(text)
        except ValueError:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise BadInputError(f"event time {value!r} is neither Unix seconds nor ISO 8601") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            t = dt.timestamp()
    else:
        raise BadInputError(f"event time {value!r} is not a time")
    if not math.isfinite(t):
        raise BadInputError(f"event time {value!r} is not finite")
    return t


def _text(value: object, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInputError(f"event {key} must be a string or an integer, not {type(value).__name__}")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # e.g. a JSON-escaped lone surrogate: could never be re-encoded
        raise BadInputError(f"event {key} is not valid Unicode") from None
    return text


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    return None if v is None else _text(v, key)


def _number(d: dict[str, Any], key: str, low: float, high: float) -> Any:
    """An optional finite number in [low, high] (``quantity`` must be whole); None if absent."""
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadInputError(f"event {key} {str(v)[:40]!r} is not a number")
    try:
        x = float(v)
    except (ValueError, OverflowError):
        raise BadInputError(f"event {key} {str(v)[:40]!r} is not a number") from None
    if not (math.isfinite(x) and low <= x <= high):
        raise BadInputError(f"event {key} {str(v)[:40]} is outside [{low:g}, {high:g}]")
    if key == "quantity":
        if x != int(x):
            raise BadInputError(f"event quantity {x:g} is not a whole number")
        return int(x)
    return x


def event_from_dict(d: dict[str, Any]) -> Event:
    """Validate a decoded JSON object into an Event; raises BadInputError with the reason."""
    if not isinstance(d, dict):
        raise BadInputError("event is not a JSON object")
    missing = [k for k in ("user_id", "item_id", "type", "time") if d.get(k) in (None, "")]
    if missing:
        raise BadInputError(f"event is missing {', '.join(missing)}")
    quantity = _number(d, "quantity", 0, MAX_QUANTITY)
    price = _number(d, "price", 0, MAX_PRICE)
    weight = _number(d, "weight", 0, MAX_WEIGHT)
    return Event(
        user_id=_text(d["user_id"], "user_id"),
        item_id=_text(d["item_id"], "item_id"),
        type=parse_event_type(d["type"]),
        time=parse_time(d["time"]),
        event_id=_opt_str(d, "event_id"),
        session_id=_opt_str(d, "session_id"),
        quantity=quantity,
        price=price,
        weight=weight,
        category=_opt_str(d, "category"),
    )


def event_from_json(data: str | bytes) -> Event:
    """Decode one JSON event; raises BadInputError with the reason."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInputError("not valid JSON: nested too deeply") from None
    return event_from_dict(obj)


def event_to_json(event: Event) -> str:
    """Encode one event as a compact JSON line (no newline)."""
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)

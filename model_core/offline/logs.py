"""Streaming readers for interaction logs: public shop datasets and freshrec JSON lines.

``read_events(path)`` yields :class:`~model_core.events.Event` objects one at a time,
reading the file line by line (constant memory, whatever its size). Gzip files are
opened transparently; they are recognised by their magic bytes (``1f 8b``), so a
compressed file without a ``.gz`` suffix works too.

Formats (``FORMATS``; ``read_events`` also takes ``"auto"``, the default):

``jsonl``
    freshrec JSON lines (see :mod:`model_core.events`); blank lines are ignored.
``retailrocket``
    RetailRocket ``events.csv``: header ``timestamp,visitorid,event,itemid,transactionid``,
    timestamp in milliseconds; ``view``/``addtocart``/``transaction`` become
    view/add_to_cart/purchase; user = visitorid; no event id.
``yoochoose-clicks``
    RecSys 2015 ``yoochoose-clicks.dat``, no header:
    ``session,timestamp(ISO 8601),item,category`` -> click; user = session = session id.
``yoochoose-buys``
    ``yoochoose-buys.dat``, no header: ``session,timestamp,item,price,quantity`` ->
    purchase with price and quantity (quantity 0 is kept as 0); user = session.
``yoochoose-tsv``
    preprocessed sample, tab-separated with header ``SessionId ItemId Time`` (Unix
    seconds with a fraction) -> click; user = session.
``diginetica-views`` / ``diginetica-purchases``
    CIKM Cup 2016, ``;``-separated with headers
    ``session_id;user_id;item_id;timeframe;eventdate`` (view) and
    ``sessionId;userId;timeframe;eventdate;ordernumber;itemId`` (purchase, event id
    ``"<ordernumber>:<itemId>"``). Time = ``eventdate`` (UTC midnight) + ``timeframe``
    milliseconds.
``taobao``
    Tianchi ``UserBehavior.csv``, no header: ``user,item,category,behavior,timestamp``
    (Unix seconds). ``pv``/``cart``/``fav``/``buy`` become view/add_to_cart/
    add_to_cart/purchase: a favourite is taken as a cart-level signal (an explicit
    intent stronger than a view, weaker than a purchase).
``movielens-100k`` / ``movielens-dat``
    ``u.data`` (tab-separated ``user item rating timestamp``) and ``ratings.dat``
    (``user::item::rating::timestamp``) -> view with ``weight`` = the rating.
``csv``
    any delimited file with a header, read through a ``columns`` mapping (see
    :func:`parse_columns`); never auto-detected, but ``format="auto"`` with ``columns``
    means csv. The delimiter is sniffed among ``,`` ``;`` tab ``|`` from the header
    line. Times are ISO 8601 strings or numbers; **numbers above 1e11 are taken as
    milliseconds** (1e11 s is the year 5138, 1e11 ms is 1973), smaller ones as seconds.
    Without a ``type`` column every event is a view; ``type_map`` maps the file's type
    names to freshrec types (names it does not map go through
    :func:`~model_core.events.parse_event_type`'s aliases). Without a ``user`` column
    the session id is the user id, as is.

Missing users: where a format has both a user and a session column (the diginetica
formats, and ``csv`` mapping both) and a row's user id is missing (empty, ``NA``,
``NaN``, ``NULL``, ``None``), the user id becomes ``SESSION_USER_PREFIX + session``, i.e.
``"s:<session>"``; the prefix keeps these anonymous-session users apart from real user
ids (which are plain numbers in the diginetica files).

Malformed rows (wrong number of fields, non-numeric or non-finite time, unknown event
type, empty ids, bad price/quantity/rating) are skipped, never raised: pass a
:class:`ReadReport` to count them and keep the first few reasons with their 1-based
line numbers. Blank lines are ignored and not counted; header lines are not counted.
A file that cannot be opened, a corrupt gzip stream, an unknown format or a ``csv``
header that lacks a mapped column raise :class:`~model_core.errors.BadInputError`;
bad ``format``/``columns``/``type_map`` arguments raise
:class:`~model_core.errors.ConfigError`. ``type_map`` applies to the formats with a
type column (``csv``, ``retailrocket``, ``taobao``) and is ignored by the others.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import ClassVar, TextIO

from model_core.errors import BadInputError, ConfigError
from model_core.events import Event, EventType, event_from_json, parse_event_type

log = logging.getLogger(__name__)

__all__ = [
    "AUTO",
    "COLUMN_KEYS",
    "FORMATS",
    "SESSION_USER_PREFIX",
    "ReadReport",
    "detect_format",
    "parse_columns",
    "parse_type_map",
    "read_events",
]

FORMATS: tuple[str, ...] = (
    "jsonl",
    "retailrocket",
    "yoochoose-clicks",
    "yoochoose-buys",
    "yoochoose-tsv",
    "diginetica-views",
    "diginetica-purchases",
    "taobao",
    "movielens-100k",
    "movielens-dat",
    "csv",
)
"""The format names ``read_events`` knows (it also takes ``AUTO``)."""

AUTO = "auto"
"""The ``format`` value that asks :func:`detect_format` (or means ``csv`` with ``columns``)."""

SESSION_USER_PREFIX = "s:"
"""Prefix of the user id made from a session id when a row's user id is missing."""

COLUMN_KEYS: tuple[str, ...] = (
    "user",
    "item",
    "time",
    "type",
    "event_id",
    "session",
    "quantity",
    "price",
    "weight",
)
"""Keys a ``csv`` ``columns`` mapping may use (``item`` and ``time`` required, and
``user`` or ``session``)."""

_MISSING_IDS = frozenset({"", "NA", "na", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None"})
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DETECT_LINES = 1000
_MAX_DETECT_CHARS = 1 << 20
_MS_THRESHOLD = 1e11
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class _RowError(BadInputError):
    """One malformed row (caught inside the readers, never escapes)."""


_ROW_ERRORS = (BadInputError, ValueError, TypeError, IndexError, OverflowError)


# --------------------------------------------------------------------------- report


@dataclass
class ReadReport:
    """What one ``read_events`` pass saw; filled in while the events are consumed.

    ``rows`` counts data rows (not headers or blank lines), ``events`` those turned into
    events and ``skipped`` the malformed ones; ``errors`` keeps ``(line, reason)`` for the
    first ``MAX_ERRORS`` skipped rows (line numbers 1-based, physical lines).
    """

    path: str
    format: str = ""
    rows: int = 0
    events: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    MAX_ERRORS: ClassVar[int] = 5

    def record_skip(self, line: int, reason: str) -> None:
        """Count one skipped row, keeping its reason if fewer than ``MAX_ERRORS`` are kept."""
        self.skipped += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append((line, " ".join(str(reason).split())))

    def summary(self) -> str:
        """One line: ``events.csv (retailrocket): 10 rows, 9 events, 1 skipped (line 7: ...)``."""
        name = os.path.basename(self.path.rstrip("/\\")) or self.path
        head = f"{name} ({self.format})" if self.format else name
        text = (
            f"{head}: {self.rows} {_plural(self.rows, 'row')}, "
            f"{self.events} {_plural(self.events, 'event')}, {self.skipped} skipped"
        )
        if self.errors:
            parts = [f"line {line}: {reason}" for line, reason in self.errors]
            more = self.skipped - len(self.errors)
            if more > 0:
                parts.append(f"and {more} more")
            text += " (" + "; ".join(parts) + ")"
        return text


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


# --------------------------------------------------------------------------- opening


def _path_str(path: str | os.PathLike[str]) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise BadInputError(f"event log path {path!r} is not a path") from None


def _cannot_read(path: str, exc: BaseException) -> BadInputError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return BadInputError(f"cannot read event log {path!r}: {' '.join(str(reason).split())}")


def _is_gzip(path: str) -> bool:
    """True if the file starts with the gzip magic; BadInputError if it cannot be opened."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError as exc:
        raise _cannot_read(path, exc) from None


def _open_text(path: str) -> TextIO:
    """Open a (possibly gzip) log as text, ``newline=""`` as the csv module wants."""
    gz = _is_gzip(path)
    try:
        if gz:
            return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
        return open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise _cannot_read(path, exc) from None


_STREAM_ERRORS = (OSError, EOFError, zlib.error)


def _first_line(path: str) -> str | None:
    """The first non-blank line (without its line end), or None for an empty file."""
    with _open_text(path) as f:
        try:
            for _ in range(_MAX_DETECT_LINES):
                line = f.readline(_MAX_DETECT_CHARS)
                if not line:
                    return None
                if line.strip():
                    return line.rstrip("\r\n").lstrip("\ufeff")
        except _STREAM_ERRORS as exc:
            raise _cannot_read(path, exc) from None
    return None


# --------------------------------------------------------------------------- small parsers


def _short(value: str, limit: int = 40) -> str:
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


def _norm(name: str) -> str:
    return name.strip().lstrip("\ufeff").lower().replace("_", "").replace(" ", "")


def _seconds(text: str, what: str = "timestamp") -> float:
    try:
        t = float(text)
    except ValueError:
        raise _RowError(f"bad {what} {_short(text)}") from None
    if not math.isfinite(t):
        raise _RowError(f"bad {what} {_short(text)}")
    return t


def _milliseconds(text: str) -> float:
    try:
        return int(text) / 1000
    except ValueError:
        return _seconds(text) / 1000


def _iso_seconds(text: str) -> float:
    s = text.strip()
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise _RowError(f"bad timestamp {_short(text)}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _looks_iso(text: str) -> bool:
    s = text.strip()
    return len(s) >= 10 and s[4] == "-" and s[7] == "-" and s[:4].isdigit()


def _flex_time(text: str) -> float:
    """ISO 8601, or a number: seconds, or milliseconds when above 1e11."""
    if _looks_iso(text):
        return _iso_seconds(text)
    t = _seconds(text)
    return t / 1000 if t > _MS_THRESHOLD else t


def _day_ms(text: str, cache: dict[str, int]) -> int:
    ms = cache.get(text)
    if ms is None:
        try:
            d = date.fromisoformat(text.strip())
        except ValueError:
            raise _RowError(f"bad eventdate {_short(text)}") from None
        ms = (d.toordinal() - _EPOCH_ORDINAL) * 86_400_000
        if len(cache) >= 4096:
            cache.clear()
        cache[text] = ms
    return ms


def _day_plus_ms(day_text: str, ms_text: str, cache: dict[str, int]) -> float:
    base = _day_ms(day_text, cache)
    try:
        return (base + int(ms_text)) / 1000
    except ValueError:
        return (base + _seconds(ms_text, "timeframe")) / 1000


def _price(text: str) -> float:
    p = _seconds(text, "price")
    if p < 0:
        raise _RowError(f"bad price {_short(text)}")
    return p


def _quantity(text: str) -> int:
    try:
        q = int(text)
    except ValueError:
        f = _seconds(text, "quantity")
        if not f.is_integer():
            raise _RowError(f"bad quantity {_short(text)}") from None
        q = int(f)
    if q < 0:
        raise _RowError(f"bad quantity {_short(text)}")
    return q


def _weight(text: str, what: str = "weight") -> float:
    w = _seconds(text, what)
    if w < 0:
        raise _RowError(f"bad {what} {_short(text)}")
    return w


def _lookup_type(table: dict[str, EventType], raw: str) -> EventType:
    t = table.get(raw)
    if t is None:
        t = table.get(raw.strip().lower())
        if t is None:
            raise _RowError(f"unknown event type {_short(raw)}")
    return t


def _session_user(user: str, session: str) -> str:
    if user in _MISSING_IDS:
        if not session:
            raise _RowError("empty user id and session id")
        return SESSION_USER_PREFIX + session
    return user


# --------------------------------------------------------------------------- argument parsing


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be text like 'a=b,c=d', got {text!r}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for piece in text.split(","):
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"bad {what} entry {piece.strip()!r}: expected NAME=VALUE")
        if key in seen:
            raise ConfigError(f"{what} names {key!r} twice")
        seen.add(key)
        out.append((key, value))
    return out


def parse_columns(text: str) -> dict[str, str]:
    """Parse ``"user=visitorid,item=itemid,time=timestamp,type=event"`` into a dict.

    Keys are freshrec fields (``COLUMN_KEYS``), values are the file's header names.
    ``item`` and ``time`` are required, and ``user`` or ``session``. Raises ConfigError
    on empty, malformed, duplicate or unknown entries.
    """
    columns = dict(_pairs(text, "columns"))
    _check_columns(columns)
    return columns


def _check_columns(columns: dict[str, str]) -> dict[str, str]:
    if not isinstance(columns, dict) or not columns:
        raise ConfigError(
            "columns mapping is empty: give at least user=COL,item=COL,time=COL"
        )
    unknown = [k for k in columns if k not in COLUMN_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown columns key(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(COLUMN_KEYS)})"
        )
    bad = [k for k, v in columns.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ConfigError(f"columns key(s) {', '.join(map(repr, bad))} have no column name")
    missing = [k for k in ("item", "time") if k not in columns]
    if "user" not in columns and "session" not in columns:
        missing.insert(0, "user (or session)")
    if missing:
        raise ConfigError(f"columns mapping lacks {', '.join(missing)}")
    return {k: v.strip() for k, v in columns.items()}


def parse_type_map(text: str) -> dict[str, str]:
    """Parse ``"pv=view,buy=purchase"`` into ``{"pv": "view", "buy": "purchase"}``.

    Values are freshrec event types or their aliases (see
    :func:`~model_core.events.parse_event_type`) and come back canonical. Raises
    ConfigError on malformed entries or an unknown target type; empty text gives ``{}``.
    """
    return {k: _target_type(k, v).value for k, v in _pairs(text, "type map")}


def _target_type(key: str, value: object) -> EventType:
    try:
        return parse_event_type(value)
    except BadInputError as exc:
        raise ConfigError(f"type map entry {key!r}: {exc}") from None


def _type_table(
    base: dict[str, EventType], type_map: dict[str, str] | None
) -> dict[str, EventType]:
    table = dict(base)
    if type_map:
        if not isinstance(type_map, dict):
            raise ConfigError(f"type_map must be a dict, got {type(type_map).__name__}")
        for raw, target in type_map.items():
            t = _target_type(str(raw), target)
            table[str(raw)] = t
            table[str(raw).strip().lower()] = t
    return table


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Layout:
    """A delimited format: its delimiter, default field order and header rule."""

    delimiter: str
    fields: tuple[str, ...]  # normalised names, in the order of a headerless file
    header: bool  # whether a first row naming ``required`` fields is a header
    required: tuple[str, ...] = ()

    def resolve(self, row: list[str]) -> tuple[dict[str, int], int, bool]:
        """Field indices, field count, and whether ``row`` (the first one) is a header."""
        if self.header:
            names = [_norm(c) for c in row]
            if all(r in names for r in self.required):
                ix = {n: names.index(n) for n in self.fields if n in names}
                return ix, len(row), True
        return {n: i for i, n in enumerate(self.fields)}, len(self.fields), False


_RR_TYPES = {
    "view": EventType.VIEW,
    "addtocart": EventType.ADD_TO_CART,
    "transaction": EventType.PURCHASE,
}
_TAOBAO_TYPES = {
    "pv": EventType.VIEW,
    "cart": EventType.ADD_TO_CART,
    "fav": EventType.ADD_TO_CART,
    "buy": EventType.PURCHASE,
}
_CSV_TYPES = {t.value: t for t in EventType}

_Conv = Callable[[list[str]], Event]
_Factory = Callable[[dict[str, int], dict[str, EventType]], _Conv]


def _conv_retailrocket(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    it, iu, ie, ii = ix["timestamp"], ix["visitorid"], ix["event"], ix["itemid"]

    def conv(row: list[str]) -> Event:
        return Event(
            row[iu].strip(), row[ii].strip(), _lookup_type(types, row[ie]), _milliseconds(row[it])
        )

    return conv


def _conv_yoo_clicks(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    def conv(row: list[str]) -> Event:
        s = row[0].strip()
        cat = row[3].strip()
        return Event(s, row[2].strip(), EventType.CLICK, _flex_time(row[1]), session_id=s,
                     category=None if cat in ("", "0") else cat)

    return conv


def _conv_yoo_buys(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    def conv(row: list[str]) -> Event:
        s = row[0].strip()
        return Event(
            s,
            row[2].strip(),
            EventType.PURCHASE,
            _flex_time(row[1]),
            session_id=s,
            quantity=_quantity(row[4]),
            price=_price(row[3]),
        )

    return conv


def _conv_yoo_tsv(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    isess, iitem, itime = ix["sessionid"], ix["itemid"], ix["time"]

    def conv(row: list[str]) -> Event:
        s = row[isess].strip()
        return Event(s, row[iitem].strip(), EventType.CLICK, _seconds(row[itime]), session_id=s)

    return conv


def _conv_dig_views(
    ix: dict[str, int], types: dict[str, EventType], categories: dict[str, str] | None = None
) -> _Conv:
    cats = categories or {}
    isess, iuser, iitem = ix["sessionid"], ix["userid"], ix["itemid"]
    itf, idate = ix["timeframe"], ix["eventdate"]
    cache: dict[str, int] = {}

    def conv(row: list[str]) -> Event:
        s = row[isess].strip()
        item = row[iitem].strip()
        return Event(
            _session_user(row[iuser].strip(), s),
            item,
            EventType.VIEW,
            _day_plus_ms(row[idate], row[itf], cache),
            session_id=s or None,
            category=cats.get(item),
        )

    return conv


def _conv_dig_purchases(
    ix: dict[str, int], types: dict[str, EventType], categories: dict[str, str] | None = None
) -> _Conv:
    cats = categories or {}
    isess, iuser, iitem = ix["sessionid"], ix["userid"], ix["itemid"]
    itf, idate, iorder = ix["timeframe"], ix["eventdate"], ix["ordernumber"]
    cache: dict[str, int] = {}

    def conv(row: list[str]) -> Event:
        s = row[isess].strip()
        item = row[iitem].strip()
        order = row[iorder].strip()
        return Event(
            _session_user(row[iuser].strip(), s),
            item,
            EventType.PURCHASE,
            _day_plus_ms(row[idate], row[itf], cache),
            event_id=f"{order}:{item}" if order else None,
            session_id=s or None,
            category=cats.get(item),
        )

    return conv


def _conv_taobao(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    def conv(row: list[str]) -> Event:
        cat = row[2].strip()
        return Event(row[0].strip(), row[1].strip(), _lookup_type(types, row[3]), _seconds(row[4]),
                     category=cat or None)

    return conv


def _conv_ml100k(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    def conv(row: list[str]) -> Event:
        return Event(
            row[0].strip(),
            row[1].strip(),
            EventType.VIEW,
            _seconds(row[3]),
            weight=_weight(row[2], "rating"),
        )

    return conv


def _conv_csv(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
    iu, isess, ii, it = ix.get("user"), ix.get("session"), ix["item"], ix["time"]
    ity, iev = ix.get("type"), ix.get("event_id")
    iq, ip, iw = ix.get("quantity"), ix.get("price"), ix.get("weight")

    def conv(row: list[str]) -> Event:
        s = row[isess].strip() if isess is not None else ""
        if iu is None:
            user = s
        elif isess is None:
            user = row[iu].strip()
            if user in _MISSING_IDS:
                raise _RowError(f"empty user id {_short(user)}")
        else:
            user = _session_user(row[iu].strip(), s)
        ev = row[iev].strip() if iev is not None else ""
        q = row[iq].strip() if iq is not None else ""
        p = row[ip].strip() if ip is not None else ""
        w = row[iw].strip() if iw is not None else ""
        return Event(
            user,
            row[ii].strip(),
            EventType.VIEW if ity is None else _csv_type(types, row[ity]),
            _flex_time(row[it]),
            event_id=ev or None,
            session_id=s or None,
            quantity=_quantity(q) if q else None,
            price=_price(p) if p else None,
            weight=_weight(w) if w else None,
        )

    return conv


def _csv_type(table: dict[str, EventType], raw: str) -> EventType:
    t = table.get(raw)
    if t is None:
        t = table.get(raw.strip().lower())
        if t is None:
            try:
                t = parse_event_type(raw)
            except BadInputError:
                raise _RowError(f"unknown event type {_short(raw)}") from None
    return t


_DELIMITED: dict[str, tuple[_Layout, _Factory, dict[str, EventType]]] = {
    "retailrocket": (
        _Layout(",", ("timestamp", "visitorid", "event", "itemid", "transactionid"), True,
                ("timestamp", "visitorid", "event", "itemid")),
        _conv_retailrocket,
        _RR_TYPES,
    ),
    "yoochoose-clicks": (
        _Layout(",", ("session", "timestamp", "item", "category"), False),
        _conv_yoo_clicks,
        {},
    ),
    "yoochoose-buys": (
        _Layout(",", ("session", "timestamp", "item", "price", "quantity"), False),
        _conv_yoo_buys,
        {},
    ),
    "yoochoose-tsv": (
        _Layout("\t", ("sessionid", "itemid", "time"), True, ("sessionid", "itemid", "time")),
        _conv_yoo_tsv,
        {},
    ),
    "diginetica-views": (
        _Layout(";", ("sessionid", "userid", "itemid", "timeframe", "eventdate"), True,
                ("sessionid", "userid", "itemid", "timeframe", "eventdate")),
        _conv_dig_views,
        {},
    ),
    "diginetica-purchases": (
        _Layout(";", ("sessionid", "userid", "timeframe", "eventdate", "ordernumber", "itemid"),
                True, ("sessionid", "userid", "timeframe", "eventdate", "ordernumber", "itemid")),
        _conv_dig_purchases,
        {},
    ),
    "taobao": (
        _Layout(",", ("user", "item", "category", "behavior", "timestamp"), False),
        _conv_taobao,
        _TAOBAO_TYPES,
    ),
    "movielens-100k": (
        _Layout("\t", ("user", "item", "rating", "timestamp"), False),
        _conv_ml100k,
        {},
    ),
}


# --------------------------------------------------------------------------- detection


def _detect_line(line: str) -> str | None:
    s = line.strip()
    if s.startswith("{"):
        return "jsonl"
    if "::" in s and len(s.split("::")) == 4:
        return "movielens-dat"
    comma = [_norm(c) for c in s.split(",")]
    if all(n in comma for n in ("timestamp", "visitorid", "event", "itemid")):
        return "retailrocket"
    tab = [_norm(c) for c in s.split("\t")]
    if all(n in tab for n in ("sessionid", "itemid", "time")):
        return "yoochoose-tsv"
    semi = [_norm(c) for c in s.split(";")]
    if all(n in semi for n in ("sessionid", "userid", "timeframe", "eventdate", "itemid")):
        return "diginetica-purchases" if "ordernumber" in semi else "diginetica-views"
    fields = s.split(",")
    if len(fields) in (4, 5) and _looks_iso(fields[1]):
        try:
            _iso_seconds(fields[1])
        except BadInputError:
            pass
        else:
            return "yoochoose-clicks" if len(fields) == 4 else "yoochoose-buys"
    if len(fields) == 5 and fields[3].strip().lower() in _TAOBAO_TYPES:
        return "taobao"
    cells = s.split("\t")
    if len(cells) == 4 and all(_is_number(c) for c in cells):
        return "movielens-100k"
    return None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess a log's format (one of ``FORMATS`` except ``csv``) from its first non-blank line.

    Looks at header names, delimiter, field count and ``::``. Raises BadInputError (one
    line) when the file cannot be read, is empty, or matches no known format.
    """
    p = _path_str(path)
    line = _first_line(p)
    if line is None:
        raise BadInputError(f"event log {p!r} is empty: nothing to detect its format from")
    fmt = _detect_line(line)
    if fmt is None:
        known = ", ".join(f for f in FORMATS if f != "csv")
        raise BadInputError(
            f"cannot detect the format of {p!r} from its first line {_short(line, 60)}; "
            f"known formats: {known}; for another delimited layout with a header use "
            f"--format csv --columns user=COL,item=COL,time=COL[,type=COL]"
        )
    return fmt


# --------------------------------------------------------------------------- reading


def read_events(
    path: str | os.PathLike[str],
    format: str = AUTO,
    *,
    columns: dict[str, str] | None = None,
    type_map: dict[str, str] | None = None,
    report: ReadReport | None = None,
) -> Iterator[Event]:
    """Stream the events of a log file, one at a time, in file order.

    ``format`` is one of ``FORMATS`` or ``"auto"`` (detect; ``csv`` when ``columns`` is
    given). ``columns`` (csv only) maps ``COLUMN_KEYS`` to header names; ``type_map`` maps
    the file's event-type names to freshrec types. ``report``, if given, gets its
    ``path``/``format`` set now and its counts filled in while the events are consumed.

    The file is checked (and the format detected) when this is called: an unreadable
    file or undetectable format raises BadInputError, bad arguments ConfigError, before
    any event. Malformed rows are skipped and counted, never raised.
    """
    p = _path_str(path)
    if not isinstance(format, str):
        raise ConfigError(f"format must be a string, got {format!r}")
    fmt = format.strip().lower()
    if fmt == AUTO:
        fmt = "csv" if columns else detect_format(p)
    elif fmt not in FORMATS:
        raise ConfigError(f"unknown log format {format!r} (known: auto, {', '.join(FORMATS)})")
    else:
        _is_gzip(p)  # raises BadInputError now if the file cannot be opened
    if columns and fmt != "csv":
        raise ConfigError(f"columns only apply to --format csv, not {fmt!r}")
    rep = report if report is not None else ReadReport(p)
    rep.path = p
    rep.format = fmt

    if fmt == "jsonl":
        return _read_jsonl(p, rep)
    if fmt == "movielens-dat":
        return _read_movielens_dat(p, rep)
    if fmt == "csv":
        if columns is None:
            raise ConfigError("format csv needs columns, e.g. user=COL,item=COL,time=COL")
        cols = _check_columns(columns)
        delimiter, header = _csv_header(p)
        ix = _csv_indices(p, header, cols)
        layout = _Layout(delimiter, tuple(COLUMN_KEYS), True)
        types = _type_table(_CSV_TYPES, type_map)
        return _read_delimited(p, rep, layout, lambda _ix, _t: _conv_csv(ix, _t), types, ix)
    layout, factory, base = _DELIMITED[fmt]
    if fmt in ("diginetica-views", "diginetica-purchases"):
        cats = _diginetica_categories(p)
        if cats:
            with_cats = factory

            def factory(ix: dict[str, int], types: dict[str, EventType]) -> _Conv:
                return with_cats(ix, types, cats)  # type: ignore[call-arg]
    return _read_delimited(p, rep, layout, factory, _type_table(base, type_map))


DIGINETICA_CATEGORIES = ("product-categories.csv", "product-categories.csv.gz")


def _diginetica_categories(path: str) -> dict[str, str]:
    """item id -> category id from DIGINETICA's ``product-categories.csv[.gz]`` beside ``path``.

    The file (``itemId;categoryId``) is optional: without it events carry no category.
    """
    folder = os.path.dirname(os.path.abspath(path))
    for name in DIGINETICA_CATEGORIES:
        cpath = os.path.join(folder, name)
        if not os.path.exists(cpath):
            continue
        out: dict[str, str] = {}
        try:
            with _open_text(cpath) as f:
                for row in csv.reader(f, delimiter=";"):
                    if len(row) == 2 and row[0].strip().isdigit():
                        out[row[0].strip()] = row[1].strip()
        except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
            log.warning("ignoring DIGINETICA categories %s: %s", cpath, exc)
            return {}
        return out
    return {}


def _csv_header(path: str) -> tuple[str, list[str]]:
    line = _first_line(path)
    if line is None:
        raise BadInputError(f"event log {path!r} is empty: no header line")
    delimiter = max((",", ";", "\t", "|"), key=line.count)  # first wins a tie
    header = next(csv.reader([line], delimiter=delimiter))
    return delimiter, header


def _csv_indices(path: str, header: list[str], cols: dict[str, str]) -> dict[str, int]:
    exact = {name: i for i, name in reversed(list(enumerate(header)))}
    loose = {name.strip().lower(): i for i, name in reversed(list(enumerate(header)))}
    ix: dict[str, int] = {}
    missing = []
    for key, name in cols.items():
        i = exact.get(name, loose.get(name.strip().lower()))
        if i is None:
            missing.append(f"{key}={name}")
        else:
            ix[key] = i
    if missing:
        raise BadInputError(
            f"{path!r}: column(s) {', '.join(missing)} not in its header "
            f"({', '.join(header)})"
        )
    return ix


def _no_conv(row: list[str]) -> Event:  # placeholder until the first row is seen
    raise _RowError("no layout")


def _read_delimited(
    path: str,
    rep: ReadReport,
    layout: _Layout,
    factory: _Factory,
    types: dict[str, EventType],
    fixed_ix: dict[str, int] | None = None,
) -> Iterator[Event]:
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=layout.delimiter)
        conv: _Conv = _no_conv
        n = 0
        try:
            while True:
                try:
                    for row in reader:
                        if len(row) != n:
                            if not row or (len(row) == 1 and not row[0].strip()):
                                continue  # blank line
                            if conv is _no_conv:  # first row: header or data
                                ix, n, is_header = layout.resolve(row)
                                if fixed_ix is not None:  # csv: the header was checked already
                                    is_header = True
                                conv = factory(ix, types)
                                if is_header:
                                    continue
                            if len(row) != n:
                                rep.rows += 1
                                rep.record_skip(
                                    reader.line_num, f"expected {n} fields, got {len(row)}"
                                )
                                continue
                        rep.rows += 1
                        try:
                            event = conv(row)
                        except _ROW_ERRORS as exc:
                            rep.record_skip(reader.line_num, str(exc))
                            continue
                        rep.events += 1
                        yield event
                except csv.Error as exc:
                    rep.rows += 1
                    rep.record_skip(reader.line_num, f"unreadable row: {exc}")
                    continue
                break
        except _STREAM_ERRORS as exc:
            raise BadInputError(
                f"cannot read event log {path!r} past line {reader.line_num}: {exc}"
            ) from None


def _read_lines(path: str, rep: ReadReport, parse: Callable[[str], Event]) -> Iterator[Event]:
    """One event per non-blank line; a line ``parse`` rejects (any of _ROW_ERRORS) is skipped."""
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rep.rows += 1
                try:
                    event = parse(line)
                except _ROW_ERRORS as exc:
                    rep.record_skip(lineno, str(exc))
                    continue
                rep.events += 1
                yield event
        except _STREAM_ERRORS as exc:
            raise BadInputError(
                f"cannot read event log {path!r} past line {lineno}: {exc}"
            ) from None


def _read_jsonl(path: str, rep: ReadReport) -> Iterator[Event]:
    return _read_lines(path, rep, event_from_json)


def _movielens_dat_event(line: str) -> Event:
    parts = line.rstrip("\r\n").split("::")
    if len(parts) != 4:
        raise BadInputError(f"expected 4 '::'-separated fields, got {len(parts)}")
    return Event(parts[0].strip(), parts[1].strip(), EventType.VIEW, _seconds(parts[3]),
                 weight=_weight(parts[2], "rating"))


def _read_movielens_dat(path: str, rep: ReadReport) -> Iterator[Event]:
    return _read_lines(path, rep, _movielens_dat_event)

"""Tests for model_core.offline.logs: every format, detection, malformed rows, gzip, real samples."""

from __future__ import annotations

import gzip
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_core.errors import BadInputError, ConfigError, FreshrecError
from model_core.events import MAX_PRICE, MAX_WEIGHT, Event, EventType, event_to_json
from model_core.offline.logs import (
    FORMATS,
    SESSION_USER_PREFIX,
    ReadReport,
    detect_format,
    parse_columns,
    parse_type_map,
    read_events,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


def read(path: Path, fmt: str = "auto", **kw: object) -> tuple[list[Event], ReadReport]:
    rep = ReadReport(str(path))
    events = list(read_events(path, fmt, report=rep, **kw))  # type: ignore[arg-type]
    return events, rep


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


# ---------------------------------------------------------------- sample files per format

RETAILROCKET = (
    "timestamp,visitorid,event,itemid,transactionid\n"
    "1433221332117,257597,view,355908,\n"
    "1433224214164,992329,addtocart,248676,\n"
    "1433221999827,111016,transaction,318965,4000\n"
)
YOO_CLICKS = (
    "1,2014-04-07T10:51:09.277Z,214536502,0\n"
    "1,2014-04-07T10:54:09.868Z,214536500,0\n"
    "2,2014-04-07T13:56:37.614Z,214662742,S\n"
)
YOO_BUYS = (
    "420374,2014-04-06T18:44:58.314Z,214537888,12462,1\n"
    "489758,2014-04-06T09:59:52.422Z,214826955,1360,0\n"
)
YOO_TSV = "SessionId\tItemId\tTime\n1\t214536502\t1396860669.277\n1\t214536506\t1396860886.998\n"
DIG_VIEWS = (
    "session_id;user_id;item_id;timeframe;eventdate\n"
    "1;NA;81766;526309;2016-05-09\n"
    "2;42;31331;1031018;2016-05-10\n"
    "3;;32118;0;2016-05-11\n"
)
DIG_PURCHASES = (
    "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
    "150;18278;17100868;2016-05-06;16421;25911\n"
    "151;NA;6454547;2016-05-06;16290;175874\n"
)
TAOBAO = (
    "1,2268318,2520377,pv,1511544070\n"
    "1,2333346,2520771,cart,1511561733\n"
    "2,4365585,2520377,fav,1511596146\n"
    "3,3830808,4181361,buy,1511593493\n"
)
ML100K = "196\t242\t3\t881250949\n186\t302\t4.5\t891717742\n"
MLDAT = "1::1193::5::978300760\n1::661::3::978302109\n"
JSONL = (
    '{"user_id":"u1","item_id":"i9","type":"purchase","time":1700000000.5,'
    '"event_id":"e-17","session_id":"s-3","quantity":1,"price":9.99}\n'
    "\n"
    '{"user_id":"u2","item_id":"i1","type":"view","time":"2023-11-14T22:13:20Z","weight":2}\n'
)

SAMPLES = {
    "retailrocket": ("events.csv", RETAILROCKET),
    "yoochoose-clicks": ("yoochoose-clicks.dat", YOO_CLICKS),
    "yoochoose-buys": ("yoochoose-buys.dat", YOO_BUYS),
    "yoochoose-tsv": ("train.txt", YOO_TSV),
    "diginetica-views": ("views.csv", DIG_VIEWS),
    "diginetica-purchases": ("purchases.csv", DIG_PURCHASES),
    "taobao": ("UserBehavior.csv", TAOBAO),
    "movielens-100k": ("u.data", ML100K),
    "movielens-dat": ("ratings.dat", MLDAT),
    "jsonl": ("events.jsonl", JSONL),
}


def test_formats_tuple_lists_every_format() -> None:
    assert set(FORMATS) == set(SAMPLES) | {"csv"}
    assert len(FORMATS) == len(set(FORMATS))


def test_retailrocket(tmp_path: Path) -> None:
    events, rep = read(write(tmp_path / "events.csv", RETAILROCKET), "retailrocket")
    assert events == [
        Event("257597", "355908", EventType.VIEW, 1433221332.117),
        Event("992329", "248676", EventType.ADD_TO_CART, 1433224214.164),
        Event("111016", "318965", EventType.PURCHASE, 1433221999.827),
    ]
    assert events[2].event_id is None
    assert (rep.rows, rep.events, rep.skipped, rep.format) == (3, 3, 0, "retailrocket")


def test_retailrocket_headerless_file_uses_default_order(tmp_path: Path) -> None:
    text = RETAILROCKET.split("\n", 1)[1]
    events, rep = read(write(tmp_path / "e.csv", text), "retailrocket")
    assert [e.user_id for e in events] == ["257597", "992329", "111016"]
    assert rep.skipped == 0


def test_yoochoose_clicks(tmp_path: Path) -> None:
    events, rep = read(write(tmp_path / "c.dat", YOO_CLICKS), "yoochoose-clicks")
    assert events[0] == Event(
        "1", "214536502", EventType.CLICK, utc(2014, 4, 7, 10, 51, 9) + 0.277, session_id="1"
    )
    assert events[0].time == pytest.approx(1396867869.277, abs=1e-6)
    assert [e.user_id for e in events] == ["1", "1", "2"]
    assert [e.session_id for e in events] == ["1", "1", "2"]
    assert {e.type for e in events} == {EventType.CLICK}
    assert [e.category for e in events] == [None, None, "S"]  # 0 = no category
    assert rep.events == 3 and rep.skipped == 0


def test_yoochoose_buys_keeps_price_and_zero_quantity(tmp_path: Path) -> None:
    events, rep = read(write(tmp_path / "b.dat", YOO_BUYS), "yoochoose-buys")
    assert events == [
        Event("420374", "214537888", EventType.PURCHASE, 1396809898.314,
              session_id="420374", quantity=1, price=12462.0),
        Event("489758", "214826955", EventType.PURCHASE, 1396778392.422,
              session_id="489758", quantity=0, price=1360.0),
    ]
    assert events[1].quantity == 0 and events[1].quantity is not None
    assert rep.skipped == 0


def test_yoochoose_tsv(tmp_path: Path) -> None:
    events, _ = read(write(tmp_path / "t.txt", YOO_TSV), "yoochoose-tsv")
    assert events == [
        Event("1", "214536502", EventType.CLICK, 1396860669.277, session_id="1"),
        Event("1", "214536506", EventType.CLICK, 1396860886.998, session_id="1"),
    ]


def test_diginetica_views_time_and_session_user_rule(tmp_path: Path) -> None:
    events, rep = read(write(tmp_path / "v.csv", DIG_VIEWS), "diginetica-views")
    assert SESSION_USER_PREFIX == "s:"
    assert events == [
        Event("s:1", "81766", EventType.VIEW, 1462752526.309, session_id="1"),
        Event("42", "31331", EventType.VIEW, 1462839431.018, session_id="2"),
        Event("s:3", "32118", EventType.VIEW, 1462924800.0, session_id="3"),
    ]
    # eventdate at UTC midnight + timeframe ms
    assert events[0].time == pytest.approx(utc(2016, 5, 9) + 526.309, abs=1e-6)
    assert rep.skipped == 0


def test_diginetica_purchases(tmp_path: Path) -> None:
    events, _ = read(write(tmp_path / "p.csv", DIG_PURCHASES), "diginetica-purchases")
    assert events == [
        Event("18278", "25911", EventType.PURCHASE, utc(2016, 5, 6) + 17100.868,
              event_id="16421:25911", session_id="150"),
        Event("s:151", "175874", EventType.PURCHASE, 1462499254.547,
              event_id="16290:175874", session_id="151"),
    ]
    assert events[0].time == pytest.approx(1462509900.868, abs=1e-6)


def test_diginetica_missing_user_and_session_is_skipped(tmp_path: Path) -> None:
    text = (
        "session_id;user_id;item_id;timeframe;eventdate\n"
        ";NA;1;0;2016-05-09\n"
        "5;7;2;0;2016-05-09\n"
    )
    events, rep = read(write(tmp_path / "v.csv", text), "diginetica-views")
    assert [e.user_id for e in events] == ["7"]
    assert rep.skipped == 1 and rep.errors[0][0] == 2


def test_taobao(tmp_path: Path) -> None:
    events, _ = read(write(tmp_path / "ub.csv", TAOBAO), "taobao")
    assert events == [
        Event("1", "2268318", EventType.VIEW, 1511544070.0, category="2520377"),
        Event("1", "2333346", EventType.ADD_TO_CART, 1511561733.0, category="2520771"),
        Event("2", "4365585", EventType.ADD_TO_CART, 1511596146.0, category="2520377"),  # fav: cart
        Event("3", "3830808", EventType.PURCHASE, 1511593493.0, category="4181361"),
    ]


def test_taobao_type_map_overrides(tmp_path: Path) -> None:
    events, _ = read(write(tmp_path / "ub.csv", TAOBAO), "taobao", type_map={"fav": "view"})
    assert [e.type for e in events] == [
        EventType.VIEW, EventType.ADD_TO_CART, EventType.VIEW, EventType.PURCHASE
    ]


def test_movielens_100k_and_dat(tmp_path: Path) -> None:
    events, _ = read(write(tmp_path / "u.data", ML100K), "movielens-100k")
    assert events == [
        Event("196", "242", EventType.VIEW, 881250949.0, weight=3.0),
        Event("186", "302", EventType.VIEW, 891717742.0, weight=4.5),
    ]
    events, _ = read(write(tmp_path / "ratings.dat", MLDAT), "movielens-dat")
    assert events == [
        Event("1", "1193", EventType.VIEW, 978300760.0, weight=5.0),
        Event("1", "661", EventType.VIEW, 978302109.0, weight=3.0),
    ]


def test_jsonl(tmp_path: Path) -> None:
    events, rep = read(write(tmp_path / "e.jsonl", JSONL), "jsonl")
    assert events == [
        Event("u1", "i9", EventType.PURCHASE, 1700000000.5, event_id="e-17", session_id="s-3",
              quantity=1, price=9.99),
        Event("u2", "i1", EventType.VIEW, 1700000000.0, weight=2.0),
    ]
    assert (rep.rows, rep.events, rep.skipped) == (2, 2, 0)  # the blank line is not a row


# ---------------------------------------------------------------- csv with columns


def test_csv_columns_and_type_map(tmp_path: Path) -> None:
    text = (
        "ts;visitor;what;product;qty;amount;order\n"
        "2024-01-02T03:04:05Z;u1;seen;p1;;;\n"
        "1704164645000;u2;bought;p2;2;9.5;o-1\n"
        "1704164645.25;u3;addtocart;p3;;;\n"
        "1704164645;u4;teleport;p4;;;\n"
    )
    path = write(tmp_path / "shop.csv", text)
    cols = parse_columns(
        "user=visitor,item=product,time=ts,type=what,quantity=qty,price=amount,event_id=order"
    )
    tmap = parse_type_map("seen=view,bought=purchase")
    events, rep = read(path, columns=cols, type_map=tmap)  # auto + columns -> csv
    assert rep.format == "csv"
    t = utc(2024, 1, 2, 3, 4, 5)
    assert events == [
        Event("u1", "p1", EventType.VIEW, t),
        Event("u2", "p2", EventType.PURCHASE, t, event_id="o-1", quantity=2, price=9.5),
        Event("u3", "p3", EventType.ADD_TO_CART, t + 0.25),  # falls back to aliases
    ]
    assert rep.skipped == 1 and rep.errors == [(5, "unknown event type 'teleport'")]


def test_csv_without_type_column_is_view_and_session_stands_in(tmp_path: Path) -> None:
    text = "sess|item|time|rating\nA|x|100|4\nB|y|200|\n"
    path = write(tmp_path / "s.psv", text)
    events, rep = read(path, "csv", columns={"session": "sess", "item": "item", "time": "time",
                                             "weight": "rating"})
    assert events == [
        Event("A", "x", EventType.VIEW, 100.0, session_id="A", weight=4.0),
        Event("B", "y", EventType.VIEW, 200.0, session_id="B"),
    ]
    assert rep.skipped == 0


def test_csv_missing_user_falls_back_to_prefixed_session(tmp_path: Path) -> None:
    text = "user\tsession\titem\ttime\n\tS9\ti\t1\nNA\tS8\ti\t2\nu7\tS7\ti\t3\n\t\ti\t4\n"
    path = write(tmp_path / "t.tsv", text)
    cols = parse_columns("user=user,session=session,item=item,time=time")
    events, rep = read(path, "csv", columns=cols)
    assert [e.user_id for e in events] == ["s:S9", "s:S8", "u7"]
    assert [e.session_id for e in events] == ["S9", "S8", "S7"]
    assert rep.skipped == 1 and rep.errors[0][0] == 5


def test_csv_header_missing_column_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(BadInputError, match="user=visitor"):
        read_events(path, columns={"user": "visitor", "item": "b", "time": "c"})


def test_csv_needs_columns_and_columns_need_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ConfigError):
        read_events(path, "csv")
    rr = write(tmp_path / "events.csv", RETAILROCKET)
    with pytest.raises(ConfigError):
        read_events(rr, "retailrocket", columns={"user": "visitorid", "item": "i", "time": "t"})
    with pytest.raises(ConfigError):
        read_events(rr, "no-such-format")


# ---------------------------------------------------------------- parse_columns / parse_type_map


def test_parse_columns() -> None:
    assert parse_columns("user=visitorid,item=itemid,time=timestamp,type=event") == {
        "user": "visitorid", "item": "itemid", "time": "timestamp", "type": "event"
    }
    assert parse_columns(" session = SessionId , item=ItemId,time=Time,") == {
        "session": "SessionId", "item": "ItemId", "time": "Time"
    }


@pytest.mark.parametrize(
    "text",
    ["", "user=a,item=b", "user=a,item=b,time", "user=a,item=b,time=c,colour=d",
     "user=a,item=b,time=c,user=d", "user=a,item=,time=c", "item=b,time=c"],
)
def test_parse_columns_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_columns(text)


def test_parse_type_map() -> None:
    assert parse_type_map("pv=view,buy=purchase") == {"pv": "view", "buy": "purchase"}
    assert parse_type_map("fav=cart") == {"fav": "add_to_cart"}
    assert parse_type_map("") == {}
    for bad in ("pv", "pv=teleport", "=view", "pv=view,pv=buy"):
        with pytest.raises(ConfigError):
            parse_type_map(bad)


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_detect_every_format(tmp_path: Path, fmt: str) -> None:
    name, text = SAMPLES[fmt]
    path = write(tmp_path / name, text)
    assert detect_format(path) == fmt
    assert detect_format(str(path)) == fmt
    auto, rep = read(path)
    explicit, _ = read(path, fmt)
    assert auto == explicit and len(auto) >= 2
    assert rep.format == fmt and rep.skipped == 0


def test_detect_skips_leading_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"\n\n\xef\xbb\xbf" + RETAILROCKET.encode())
    assert detect_format(path) == "retailrocket"
    path.write_bytes(b"\xef\xbb\xbf" + RETAILROCKET.encode())
    events, rep = read(path)
    assert len(events) == 3 and rep.skipped == 0


def test_detect_unknown_format_message(tmp_path: Path) -> None:
    path = write(tmp_path / "weird.txt", "hello world\nfoo bar\n")
    with pytest.raises(BadInputError) as info:
        detect_format(path)
    msg = str(info.value)
    assert "\n" not in msg and "weird.txt" in msg and "--format csv --columns" in msg
    assert "retailrocket" in msg
    with pytest.raises(BadInputError):
        read_events(path)


def test_detect_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "\n\n")
    with pytest.raises(BadInputError, match="empty"):
        detect_format(path)


def test_csv_is_never_auto_detected(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "user,item,time\nu,i,1\n")
    with pytest.raises(BadInputError):
        detect_format(path)


# ---------------------------------------------------------------- gzip


def test_gzip_with_and_without_suffix(tmp_path: Path) -> None:
    plain, _ = read(write(tmp_path / "events.csv", RETAILROCKET))
    gz1 = write_gz(tmp_path / "events.csv.gz", RETAILROCKET)
    gz2 = write_gz(tmp_path / "events-compressed.csv", RETAILROCKET)  # no .gz suffix
    assert detect_format(gz1) == detect_format(gz2) == "retailrocket"
    assert read(gz1)[0] == plain
    assert read(gz2, "retailrocket")[0] == plain
    dig = write_gz(tmp_path / "views.bin", DIG_VIEWS)
    assert detect_format(dig) == "diginetica-views"
    assert read(dig)[0] == read(write(tmp_path / "views.csv", DIG_VIEWS))[0]


def test_truncated_gzip_raises_bad_input(tmp_path: Path) -> None:
    body = RETAILROCKET + "".join(f"{1433221332117 + i},{i},view,{i * 7},\n" for i in range(5000))
    data = gzip.compress(body.encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="cut.csv.gz"):
        list(read_events(path, "retailrocket"))


# ---------------------------------------------------------------- malformed rows


def test_malformed_rows_skipped_with_line_numbers(tmp_path: Path) -> None:
    text = (
        "timestamp,visitorid,event,itemid,transactionid\n"  # 1
        "1433221332117,1,view,10,\n"  # 2 ok
        "x,2,view,11,\n"  # 3 bad time
        "1433221332117,3,view\n"  # 4 too few fields
        "\n"  # 5 blank: ignored
        "1433221332117,4,teleport,12,\n"  # 6 unknown type
        "1433221332117,,view,13,\n"  # 7 empty user
        "1433221332117,5,view,,\n"  # 8 empty item
        "inf,6,view,14,\n"  # 9 non-finite time
        "1433221333000,7,addtocart,15,\n"  # 10 ok
    )
    events, rep = read(write(tmp_path / "events.csv", text), "retailrocket")
    assert [(e.user_id, e.item_id, e.time) for e in events] == [
        ("1", "10", 1433221332.117), ("7", "15", 1433221333.0)
    ]
    assert (rep.rows, rep.events, rep.skipped) == (8, 2, 6)
    assert [line for line, _ in rep.errors] == [3, 4, 6, 7, 8]  # only the first 5 kept
    reasons = dict(rep.errors)
    assert reasons[3] == "bad timestamp 'x'"
    assert reasons[4] == "expected 5 fields, got 3"
    assert "teleport" in reasons[6]
    assert "user_id" in reasons[7] and "item_id" in reasons[8]
    summary = rep.summary()
    assert summary.startswith("events.csv (retailrocket): 8 rows, 2 events, 6 skipped (line 3: ")
    assert "and 1 more" in summary and "\n" not in summary


_DG_V = "session_id;user_id;item_id;timeframe;eventdate\n"
_DG_P = "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
_T = "2014-04-07T10:51:09Z"
_JS = '{"user_id":"u","item_id":"%s","type":"view","time":1}\n'


@pytest.mark.parametrize(
    ("fmt", "text", "bad_line"),
    [
        ("yoochoose-clicks", f"1,{_T},5,0\n1,yesterday,6,0\n2,{_T},7,0\n", 2),
        ("yoochoose-buys", f"1,{_T},5,10,1\n1,{_T},6,10,-1\n1,{_T},7,0,0\n", 2),
        ("yoochoose-tsv", "SessionId\tItemId\tTime\n1\t2\t3.5\n1\t2\tnope\n1\t3\t4\n", 3),
        ("diginetica-views",
         _DG_V + "1;NA;1;5;2016-05-09\n1;NA;2;5;2016-13-45\n1;NA;3;5;2016-05-09\n", 3),
        ("diginetica-purchases",
         _DG_P + "1;2;1;2016-05-09;7;7\n1;2;x;2016-05-09;7;8\n1;2;3;2016-05-09;7;9\n", 3),
        ("taobao", "1,2,3,pv,100\n1,2,3,steal,100\n1,3,3,buy,101\n", 2),
        ("movielens-100k", "1\t2\t3\t100\n1\t2\t-1\t100\n1\t3\t4\t101\n", 2),
        ("movielens-dat", "1::2::3::100\n1::2::3\n1::3::4::101\n", 2),
        ("jsonl", _JS % "i" + "{not json\n" + _JS % "j", 2),
    ],
)
def test_malformed_row_in_every_format(tmp_path: Path, fmt: str, text: str, bad_line: int) -> None:
    events, rep = read(write(tmp_path / "f", text), fmt)
    assert len(events) == 2 and rep.skipped == 1 and rep.events == 2
    assert rep.errors[0][0] == bad_line
    assert events[-1].item_id in {"7", "3", "9", "j"}


def test_stream_is_lazy_and_report_fills_while_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", RETAILROCKET)
    rep = ReadReport("ignored")
    it = read_events(path, report=rep)
    assert rep.path == str(path) and rep.format == "retailrocket" and rep.events == 0
    first = next(it)
    assert first.user_id == "257597" and rep.events == 1
    it.close()  # type: ignore[attr-defined]


def test_summary_without_errors() -> None:
    rep = ReadReport("/a/b/events.csv", "retailrocket", rows=1, events=1)
    assert rep.summary() == "events.csv (retailrocket): 1 row, 1 event, 0 skipped"


# ---------------------------------------------------------------- unreadable files


def test_missing_file_raises_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    for fmt in ("auto", "retailrocket", "jsonl"):
        with pytest.raises(BadInputError, match="nope.csv") as info:
            list(read_events(missing, fmt))
        assert "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="nope.csv"):
        detect_format(missing)
    with pytest.raises(BadInputError):
        read_events(tmp_path, "jsonl")  # a directory
    assert issubclass(BadInputError, FreshrecError)


# ---------------------------------------------------------------- property: jsonl round trip

_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_events = st.builds(
    Event,
    user_id=_ids,
    item_id=_ids,
    type=st.sampled_from(list(EventType)),
    time=_finite,
    event_id=st.none() | _ids,
    session_id=st.none() | _ids,
    quantity=st.none() | st.integers(min_value=0, max_value=10**6),
    price=st.none() | st.floats(0, MAX_PRICE),
    weight=st.none() | st.floats(0, MAX_WEIGHT),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_events, max_size=20))
def test_jsonl_round_trip(tmp_path_factory: pytest.TempPathFactory, events: list[Event]) -> None:
    path = tmp_path_factory.mktemp("rt") / "events.jsonl"
    path.write_text("".join(event_to_json(e) + "\n" for e in events), encoding="utf-8")
    rep = ReadReport(str(path))
    back = list(read_events(path, "jsonl", report=rep))
    assert back == events
    assert rep.skipped == 0 and rep.events == len(events)
    assert all(math.isfinite(e.time) for e in back)


# ---------------------------------------------------------------- real samples


def _real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"real sample {rel} not found under {DATA} (shared data folder absent)")
    return path


def test_real_yoochoose_sample() -> None:
    path = _real("yoochoose-sample/yoochoose-clicks-100k_train_full.txt")
    assert detect_format(path) == "yoochoose-tsv"
    rep = ReadReport(str(path))
    n = 0
    first = None
    for e in read_events(path, report=rep):
        first = first or e
        n += 1
        assert e.type is EventType.CLICK and e.user_id == e.session_id
    assert (n, rep.events, rep.skipped, rep.rows) == (70_278, 70_278, 0, 70_278)
    assert first == Event("3", "214716935", EventType.CLICK, 1396437466.94, session_id="3")


def test_real_diginetica_views() -> None:
    path = _real("diginetica/sample_train-item-views.csv")
    assert detect_format(path) == "diginetica-views"
    rep = ReadReport(str(path))
    events = list(read_events(path, report=rep))
    assert (len(events), rep.skipped) == (12_391, 0)
    assert events[0] == Event("s:1", "81766", EventType.VIEW, 1462752526.309, session_id="1",
                              category="1010")  # from product-categories.csv.gz beside it
    assert all(e.type is EventType.VIEW for e in events)


def test_real_diginetica_purchases() -> None:
    path = _real("diginetica/train-purchases.csv")
    assert detect_format(path) == "diginetica-purchases"
    rep = ReadReport(str(path))
    events = list(read_events(path, report=rep))
    assert (len(events), rep.skipped) == (18_025, 0)
    assert events[0] == Event("18278", "25911", EventType.PURCHASE, 1462509900.868,
                              event_id="16421:25911", session_id="150", category="822")
    assert events[1].user_id == "s:151"
    anonymous = sum(e.user_id.startswith(SESSION_USER_PREFIX) for e in events)
    assert 0 < anonymous < len(events)


def test_crlf_line_ends(tmp_path: Path) -> None:
    for fmt in ("retailrocket", "jsonl", "movielens-dat", "diginetica-views"):
        name, text = SAMPLES[fmt]
        lf, _ = read(write(tmp_path / name, text), fmt)
        crlf_path = tmp_path / ("crlf-" + name)
        crlf_path.write_bytes(text.replace("\n", "\r\n").encode())
        crlf, rep = read(crlf_path)
        assert crlf == lf and rep.skipped == 0, fmt


def test_diginetica_categories_come_from_the_file_beside_the_log(tmp_path: Path) -> None:
    views = "session_id;user_id;item_id;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n1;NA;7;1;2016-05-09\n"
    write(tmp_path / "views.csv", views)
    events, _ = read(tmp_path / "views.csv", "diginetica-views")
    assert [e.category for e in events] == [None, None]  # no categories file: no category
    with gzip.open(tmp_path / "product-categories.csv.gz", "wt") as f:
        f.write("itemId;categoryId\n81766;1010\n")
    events, _ = read(tmp_path / "views.csv", "diginetica-views")
    assert [e.category for e in events] == ["1010", None]


def test_event_category_round_trips_through_json() -> None:
    from model_core.events import event_from_json, event_to_json

    ev = Event("u", "i", EventType.VIEW, 1.0, category="shoes")
    assert event_from_json(event_to_json(ev)) == ev
    assert "category" not in event_to_json(Event("u", "i", EventType.VIEW, 1.0))

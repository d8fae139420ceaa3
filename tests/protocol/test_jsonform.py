"""Tests of relay.protocol.jsonform: the JSON form of a message and the way back."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import LocalProtocolError, ParseError
from relay.protocol import rfc3164, rfc5424
from relay.protocol.detect import parse_any
from relay.protocol.jsonform import (
    FIELDS,
    Enrichment,
    JsonOptions,
    _Fields,
    _timestamp,
    _wire_timestamp,
    decode_record,
    encode_batch,
    loads,
)
from relay.protocol.syslog import Facility, Severity, SyslogMessage
from tests.protocol.test_rfc3164 import NOW, _bsd_messages
from tests.protocol.test_rfc5424 import messages as _5424_messages

RECEIVED = NOW.timestamp() + 0.123456
PLAIN = JsonOptions()
BOM = b"\xef\xbb\xbf"

# The message fields: what decode_record reads back. The others (received,
# source, input, creds, enrichment) are the receiver's.
MESSAGE_FIELDS = (
    "timestamp",
    "hostname",
    "app_name",
    "procid",
    "msgid",
    "facility",
    "facility_code",
    "severity",
    "severity_code",
    "structured_data",
    "message",
    "message_base64",
)


def encode(raw: bytes, options: JsonOptions = PLAIN, **kwargs: object) -> dict[str, object]:
    args: dict[str, object] = {"received": RECEIVED, "peer": "", "input": "in", "creds": None}
    args.update(kwargs)
    [out] = encode_batch([raw], options=options, **args)  # type: ignore[arg-type]
    assert b"\n" not in out
    value = orjson.loads(out)
    assert isinstance(value, dict)
    return value


def rfc3339_utc(when: datetime) -> str:
    try:
        utc = when.astimezone(UTC)
    except OverflowError:  # UTC would be year 0 or 10000: the offset is kept
        return when.isoformat(timespec="microseconds")
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def expected_fields(raw: bytes) -> dict[str, object]:
    """The schema of relay.toml(5), written from relay's parser's view of ``raw``."""
    try:
        parsed = parse_any(raw, now=datetime.fromtimestamp(RECEIVED, UTC))
    except ParseError:
        parsed = SyslogMessage(Facility.user, Severity.notice, msg=raw)
    sd: dict[str, dict[str, object]] = {}
    for element in parsed.structured_data:
        params: dict[str, list[str]] = {}
        for name, value in element.params:
            params.setdefault(name, []).append(value)
        sd[element.id] = {k: v[0] if len(v) == 1 else v for k, v in params.items()}
    text = parsed.msg.removeprefix(BOM)
    fields: dict[str, object] = {
        "timestamp": None if parsed.timestamp is None else rfc3339_utc(parsed.timestamp),
        "hostname": parsed.hostname,
        "app_name": None if parsed.app_name == "-" else parsed.app_name,
        "procid": parsed.procid,
        "msgid": parsed.msgid,
        "facility": parsed.facility.name,
        "facility_code": parsed.facility.value,
        "severity": parsed.severity.name,
        "severity_code": parsed.severity.value,
        "structured_data": sd,
        "message": text.decode("utf-8", "replace"),
    }
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        fields["message_base64"] = base64.b64encode(parsed.msg).decode()
    return fields


def message_fields(record: dict[str, object]) -> dict[str, object]:
    return {key: record[key] for key in MESSAGE_FIELDS if key in record}


# --- hypothesis: any message, its fields, and the way back ------------------------------

_texts = st.text(st.characters(codec="utf-8"), max_size=60).map(str.encode)
_msgs = st.one_of(
    st.binary(max_size=80),  # mostly invalid UTF-8
    _texts,
    _texts.map(lambda text: BOM + text),  # RFC 5424 §6.4
    _texts.map(lambda text: BOM + BOM + text),  # a text that starts with U+FEFF
    st.binary(max_size=40).map(lambda octets: BOM + octets),
)
_rfc5424 = st.tuples(_5424_messages, _msgs).map(
    lambda pair: rfc5424.format(dataclasses.replace(pair[0], msg=pair[1]))
)
_rfc3164 = st.tuples(_bsd_messages, _msgs).map(
    lambda pair: rfc3164.format(dataclasses.replace(pair[0], msg=pair[1]))
)
# One to three octets of a well-formed message replaced, inserted or removed: the
# edges where a fast path must give up to the parser (a bad octet in a header
# field, an empty one, a timestamp one digit short...).
_mutated = st.tuples(
    _rfc5424 | _rfc3164,
    st.integers(0, 80),
    st.integers(0, 3),
    st.binary(max_size=3) | st.sampled_from([b" ", b"-", b"[", b"]", b'"', b"\\", b":", b"."]),
).map(lambda t: t[0][: t[1]] + t[3] + t[0][t[1] + t[2] :])


# Messages built part by part, each part either well-formed or one of the ways
# it goes wrong, at most one wrong part per message: where a fast path must give
# the message up to the parser (an empty or over-long header field, a bad octet,
# a timestamp one character off, a TAG one octet too long...).
_printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
_controls = st.sampled_from([b"\x7f", b"\x00", b"\x1f", b"\xc3\xa9", b"\x80", b" "])


def _field(limit: int) -> tuple[st.SearchStrategy[bytes], st.SearchStrategy[bytes]]:
    good = _printable.map(str.encode) | st.sampled_from([b"-", b"a" * limit, b"a]", b'a"'])
    bad = st.sampled_from([b"", b"a" * (limit + 1)]) | st.tuples(good, _controls).map(b"".join)
    return good, bad


def _choices(*items: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from(items)


_PARTS_5424 = (
    (_choices(b"<13>1", b"<0>1", b"<191>1"), _choices(b"<192>1", b"<013>1", b"<13>2", b"<13>")),
    (
        _choices(
            *(b"-", b"2026-11-23T10:00:00Z", b"2026-11-23T10:00:00.5Z", b"0001-01-01T00:00:00Z"),
            *(
                b"2026-11-23T10:00:00.123456Z",
                b"2026-11-23T10:00:00+01:30",
                b"2026-11-23T10:00:00+00:00",
            ),
            *(b"2026-11-23T10:00:00.25-00:00", b"9999-12-31T23:59:59.9-01:00"),
            b"0001-01-01T00:00:00+01:00",  # valid, but year 0 in UTC
        ),
        _choices(
            *(b"2026-11-23T10:00:00.Z", b"2026-11-23T10:00:00.1234567Z", b"2026-11-23T10:00:00z"),
            *(
                b"2026-11-23T10:00:00+24:00",
                b"2026-11-23T10:00:00+01:60",
                b"2026-11-23T10:00:00+0100",
            ),
            *(b"2026-11-23T10:00:60Z", b"2026-02-30T10:00:00Z", b"0000-01-01T00:00:00Z"),
            *(b"2026-11-23T10:00Z", b"2026-11-23T10:00:00.+01:00", b"2026-11-23T10:00:00Z+01:00"),
            *(b"2026-11-23t10:00:00Z", b"\xd9\xa2026-11-23T10:00:00Z", b"2026-11-23T10:00:00.1a2Z"),
            *(b"2026-11-23T10:00:00.5", b"2026-11-23T10:00:00", b""),
        ),
    ),
    _field(rfc5424.MAX_HOSTNAME),
    _field(rfc5424.MAX_APP_NAME),
    _field(rfc5424.MAX_PROCID),
    _field(rfc5424.MAX_MSGID),
    (
        _choices(
            *(b"-", b"[a]", b'[a b="c"][d e="\\]" e="x"]', b'[a b="\xc3\xa9"]', b'[a b="c]d"]'),
            *(b'[x@1 p="" q="v" p="w"]', b'[a\\b c="d"]', b'[a][b c="\\]"]', b'[a b="\\x"]'),
            *(b'[a b="c"] [d]', b"[" + b"i" * 32 + b" " + b"n" * 32 + b'="v"]'),
        ),
        _choices(
            *(b"-x", b"[a", b'[a b="c"]x', b"[a][a]", b"", b"[]", b'[a b="\xff"]', b"x"),
            *(b'[a b="c"d="e"]', b"[a b=c]", b'["a"]', b"[" + b"i" * 33 + b"]", b"[a=b]"),
            *(b'[a b="c"][a d="\\]"]', b'[a b="\\\xff"]', b"[a ]", b'[a b="c" ]', b"[a]]"),
        ),
    ),
)
_PARTS_3164 = (
    (_choices(b"<13>", b"<0>", b"<191>"), _choices(b"<192>", b"<013>", b"13>", b"<13")),
    (
        _choices(
            b"Nov 23 10:00:00 ", b"Nov  3 10:00:00 ", b"Nov 03 10:00:00 ", b"Dec 31 23:59:59 "
        ),
        _choices(
            *(
                b"Nov 3 10:00:00 ",
                b"Nov 23 10:00:00: ",
                b"Nov 23 10:00:00.123 ",
                b"nov 23 10:00:00 ",
            ),
            *(
                b"Nov 23 2026 10:00:00 ",
                b"Feb 29 10:00:00 ",
                b"Nov 31 10:00:00 ",
                b"Nov 23 24:00:00 ",
            ),
            *(
                b"Nov 23 10:00:0 ",
                b"2026-11-23T10:00:00Z ",
                b"Nov 23 10:00:00\t",
                b"Nov 23 10:00:00",
            ),
            *(b"Nov 23 10:00:00  ", b"Nov 3 10:00:00  ", b"Jan  1 00:00:00 ", b""),
        ),
    ),
    (
        _choices(b"", b"host ", b"web1.example.net ", b"::1 ", b"10.0.0.1 ", b"h" * 63 + b" "),
        _choices(b"1.2.3.999 ", b"a_b ", b"-a ", b"h" * 64 + b" ", (b"a" * 60 + b".") * 5 + b" "),
    ),
    (
        _choices(b"su: ", b"su:", b"su[12]: ", b"-: ", b"a" * 48 + b": ", b"postfix/smtpd[7]: "),
        _choices(
            *(
                b"su[]: ",
                b"su[1a]: ",
                b"su:x",
                b"su\t",
                b"a" * 49 + b": ",
                b"su [1]: ",
                b"%LINK-3: ",
            ),
            *(b"su[" + b"1" * 128 + b"]: ", b"su[" + b"1" * 129 + b"]: ", b"su[12]:x", b""),
        ),
    ),
)


@st.composite
def _one_part_wrong(
    draw: st.DrawFn, parts: tuple[tuple[st.SearchStrategy[bytes], ...], ...]
) -> list[bytes]:
    wrong = draw(st.integers(-1, len(parts) - 1))
    return [draw(bad if index == wrong else good) for index, (good, bad) in enumerate(parts)]


_header_5424 = st.tuples(_one_part_wrong(_PARTS_5424), st.none() | _msgs).map(
    lambda t: b" ".join(t[0]) + (b"" if t[1] is None else b" " + t[1])
)
_header_3164 = st.tuples(_one_part_wrong(_PARTS_3164), _msgs).map(lambda t: b"".join(t[0]) + t[1])


@settings(max_examples=2000)
@given(_header_5424 | _header_3164)
def test_the_fast_paths_read_what_the_parser_reads(raw: bytes) -> None:
    now = datetime.fromtimestamp(RECEIVED, UTC)
    assert _Fields(now).read(raw) == _Fields(now)._parsed(raw)


_raw_messages = st.one_of(
    _rfc5424,
    _rfc3164,
    _mutated,
    _header_5424,
    _header_3164,
    st.binary(max_size=120),  # garbage: mostly no PRI at all
    st.tuples(st.integers(0, 191), st.binary(max_size=80)).map(lambda t: b"<%d>%s" % t),
    st.tuples(st.integers(0, 191), st.binary(max_size=80)).map(lambda t: b"<%d>1 %s" % t),
)


@settings(max_examples=600)
@given(_raw_messages)
def test_fields_are_what_the_parser_reads_and_round_trip(raw: bytes) -> None:
    record = encode(raw)
    assert message_fields(record) == expected_fields(raw)
    # The way back: RFC 5424 bytes whose JSON form has the same fields.
    again = decode_record(loads(orjson.dumps(record)))
    assert encode(again) == record
    assert decode_record(encode(again)) == again


@settings(max_examples=100)
@given(st.lists(_raw_messages, max_size=20))
def test_a_batch_is_its_messages_in_order(raws: list[bytes]) -> None:
    options = JsonOptions(Enrichment({"name": "web1"}, {"env": "prod"}), parse_message="app")
    out = encode_batch(
        raws, received=RECEIVED, peer="127.0.0.1:514", input="tcp", creds=None, options=options
    )
    expected = [encode(raw, options, peer="127.0.0.1:514", input="tcp") for raw in raws]
    assert [orjson.loads(item) for item in out] == expected


@settings(max_examples=300)
@given(st.lists(_raw_messages, max_size=12))
def test_a_batch_is_byte_for_byte_the_plain_encoding_of_each_message(raws: list[bytes]) -> None:
    # The batch's caches (seconds, headers) and its shared fields spliced in as
    # bytes write what one orjson.dumps of the parser's fields and the shared
    # ones writes for each message alone; every message twice, so that the
    # second reads from the caches.
    raws = raws + raws[::-1]
    now = datetime.fromtimestamp(RECEIVED, UTC)
    options = JsonOptions(Enrichment({"name": "web1"}, {"env": "prod"}))
    out = encode_batch(
        raws, received=RECEIVED, peer="[::1]:514", input="tcp", creds=(1, 2, 3), options=options
    )
    shared = {
        "received": rfc3339_utc(now),
        "source": "::1",
        "input": "tcp",
        **{"pid": 1, "uid": 2, "gid": 3},
        "host": {"name": "web1"},
        "labels": {"env": "prod"},
    }
    assert out == [orjson.dumps({**_Fields(now)._parsed(raw), **shared}) for raw in raws]


# --- examples ---------------------------------------------------------------------------

RFC5424_EXAMPLE = (
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Appl\\]ication" eventID="1011"]'
    b'[examplePriority@32473 class="high" class="low"] \xef\xbb\xbfAn application event'
)


def test_rfc5424_example() -> None:
    # RFC 5424 §6.5 example 4, with a repeated PARAM-NAME (§6.3.3 allows it).
    record = encode(
        RFC5424_EXAMPLE,
        peer="[2001:db8::1]:5514",
        input="tcp-in",
        creds=(4242, 1000, 100),
        options=JsonOptions(Enrichment({"name": "web1", "kernel": "6.1.0"}, {"env": "prod"})),
    )
    assert record == {
        "timestamp": "2003-10-11T22:14:15.003000Z",
        "received": rfc3339_utc(datetime.fromtimestamp(RECEIVED, UTC)),
        "hostname": "mymachine.example.com",
        "app_name": "evntslog",
        "procid": None,
        "msgid": "ID47",
        "facility": "local4",
        "facility_code": 20,
        "severity": "notice",
        "severity_code": 5,
        "structured_data": {
            "exampleSDID@32473": {"iut": "3", "eventSource": "Appl]ication", "eventID": "1011"},
            "examplePriority@32473": {"class": ["high", "low"]},
        },
        "message": "An application event",
        "source": "2001:db8::1",
        "input": "tcp-in",
        "pid": 4242,
        "uid": 1000,
        "gid": 100,
        "host": {"name": "web1", "kernel": "6.1.0"},
        "labels": {"env": "prod"},
    }
    assert received_time_is_utc_microseconds(record)


def received_time_is_utc_microseconds(record: dict[str, object]) -> bool:
    return record["received"] == "2026-11-23T12:00:00.123456Z"


def test_rfc3164_line() -> None:
    record = encode(b"<34>Nov 22 10:01:02 mymachine su[77]: 'su root' failed on /dev/pts/8")
    assert message_fields(record) == {
        "timestamp": "2026-11-22T10:01:02.000000Z",  # the year nearest the receive time
        "hostname": "mymachine",
        "app_name": "su",
        "procid": "77",
        "msgid": None,
        "facility": "auth",
        "facility_code": 4,
        "severity": "crit",
        "severity_code": 2,
        "structured_data": {},
        "message": "'su root' failed on /dev/pts/8",
    }


def test_without_pri_the_whole_text_is_the_message_as_user_notice() -> None:
    record = encode(b"no pri \xff here")
    assert message_fields(record) == {
        "timestamp": None,
        "hostname": None,
        "app_name": None,
        "procid": None,
        "msgid": None,
        "facility": "user",
        "facility_code": 1,
        "severity": "notice",
        "severity_code": 5,
        "structured_data": {},
        "message": "no pri \ufffd here",
        "message_base64": base64.b64encode(b"no pri \xff here").decode(),
    }


def test_invalid_utf8_is_kept_exactly_with_its_bom() -> None:
    msg = BOM + b"caf\xc3\xa9 \xc3(\x00"
    record = encode(b"<13>1 - - - - - - " + msg)
    assert record["message"] == "caf\u00e9 \ufffd(\x00"
    assert base64.b64decode(str(record["message_base64"])) == msg
    assert decode_record(record) == b"<13>1 - - - - - - " + msg


@pytest.mark.parametrize(
    "stamp",
    [
        # Six digits of fraction (27 or 32 octets: the fast path's shape)...
        b"2026-12-01T13:22:27.123456Z",
        b"2026-12-01T13:22:27.123456+01:00",
        b"2026-12-31T23:59:59.999999-00:30",
        b"0001-01-01T00:00:00.000000+01:00",  # UTC would be year 0
        # ...and what has their lengths but not their shape.
        b"2026-12-01T13:22:27.1+01:00",
        b"2026-12-01T13:22:27.12345+1:00",
        b"2026-12-01T13:22:27.12345ZZ",
        b"2026-12-01T13:22:27.1234567",
        b"2026-12-01T13:22:27,123456Z",
        b"2026-12-01T13:22:27.12345aZ",
        b"2026-12-01T13:22:27.123456z",
        b"2026-12-01T13:22:27+01:00.123",
        b"2026-02-30T13:22:27.123456Z",
        b"2026-12-01T13:22:27.123456+25:00",
    ],
)
def test_a_timestamp_of_any_shape_is_what_the_parser_reads(stamp: bytes) -> None:
    raw = b"<13>1 " + stamp + b" host app - - - text"
    now = datetime.fromtimestamp(RECEIVED, UTC)
    fields = _Fields(now)
    for _ in range(2):  # the second from the caches
        assert fields.encode(raw, b"}") == orjson.dumps(fields._parsed(raw))


@pytest.mark.parametrize(
    ("stamp", "json_time"),
    [
        (b"2026-12-01T13:22:27Z", "2026-12-01T13:22:27.000000Z"),
        (b"2026-12-01T13:22:27.5+01:30", "2026-12-01T11:52:27.500000Z"),
        (b"2026-12-31T23:59:59.999999-00:30", "2027-01-01T00:29:59.999999Z"),
        # UTC would be year 0: the offset is kept, still RFC 3339.
        (b"0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00.000000+01:00"),
        (b"9999-12-31T23:30:00-01:00", "9999-12-31T23:30:00.000000-01:00"),
    ],
)
def test_timestamps_in_utc_with_microseconds(stamp: bytes, json_time: str) -> None:
    record = encode(b"<13>1 " + stamp + b" - - - - -")
    assert record["timestamp"] == json_time
    assert encode(decode_record(record)) == record


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("192.0.2.1:514", "192.0.2.1"),
        ("[::1]:6514", "::1"),
        ("/run/relay/log.sock", "/run/relay/log.sock"),
        ("", None),
    ],
)
def test_source_is_the_peer_without_port(peer: str, source: str | None) -> None:
    assert encode(b"<13>x", peer=peer)["source"] == source


def test_credentials_only_when_the_kernel_gave_them() -> None:
    assert not {"pid", "uid", "gid"} & encode(b"<13>x").keys()
    assert {k: encode(b"<13>x", creds=(1, 2, 3))[k] for k in ("pid", "uid", "gid")} == {
        "pid": 1,
        "uid": 2,
        "gid": 3,
    }


def test_enrichment_only_what_is_configured() -> None:
    assert not {"host", "labels"} & encode(b"<13>x", JsonOptions(Enrichment())).keys()
    record = encode(b"<13>x", JsonOptions(Enrichment(labels={"team": "db"})))
    assert "host" not in record
    assert record["labels"] == {"team": "db"}


# --- parse_message ----------------------------------------------------------------------

APP = JsonOptions(parse_message="app")


def test_parse_message_puts_a_json_object_under_its_key() -> None:
    text = b' {"user": "ann", "n": [1, 2.5], "message": "not relay\'s", "x": {"y": null}}'
    record = encode(b"<13>1 - host app - - - " + text, APP)
    assert record["app"] == {
        "user": "ann",
        "n": [1, 2.5],
        "message": "not relay's",
        "x": {"y": None},
    }
    assert record["message"] == text.decode()  # relay's own fields are untouched
    assert record["hostname"] == "host"


@pytest.mark.parametrize(
    "text",
    [b"[1, 2]", b'"a string"', b"{not json", b"{}x", b"plain", b"\xff{}", b"{" * 300 + b"}" * 300],
)
def test_parse_message_leaves_out_what_is_not_an_object(text: bytes) -> None:
    record = encode(b"<13>1 - - - - - - " + text, APP)
    assert "app" not in record
    assert record == encode(b"<13>1 - - - - - - " + text)


def test_parse_message_deeper_than_the_encoder_goes_is_left_out() -> None:
    # orjson reads 1024 levels but writes 254: never a failed batch for it.
    text = b'{"a":' * 300 + b"1" + b"}" * 300
    record = encode(b"<13>1 - - - - - - " + text, APP)
    assert "app" not in record
    assert record["message"] == text.decode()


@pytest.mark.parametrize("key", [*sorted(FIELDS), ""])
def test_parse_message_cannot_take_a_field_of_relay(key: str) -> None:
    with pytest.raises(ValueError, match="parse_message"):
        JsonOptions(parse_message=key)


# --- decode_record ----------------------------------------------------------------------


_rfc3339_texts = st.tuples(
    st.datetimes(timezones=st.timezones()),
    st.integers(0, 7),  # fraction digits, 7 is one too many
    st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", "-09:30", "+14:00", "+24:00", "+01:60"]),
    st.integers(0, 30),
    st.sampled_from(["", "0", "9", "x", "t", "1"]),
).map(
    lambda t: (lambda text: text[: t[3]] + t[4] + text[t[3] + len(t[4]) :] if t[4] else text)(
        t[0].strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{t[0].microsecond:06d}0"[: t[1] + 1] if t[1] else "")
        + t[2]
    )
)


@settings(max_examples=1000)
@given(_rfc3339_texts | st.text(max_size=40))
def test_decode_writes_a_timestamp_as_its_parse_would(text: str) -> None:
    # The way back writes a timestamp from its cached seconds and its own
    # fraction: what parsing it and rfc5424.format_timestamp would write.
    try:
        expected = rfc5424.format_timestamp(_timestamp(text)).encode()  # type: ignore[arg-type]
    except (ParseError, LocalProtocolError):
        expected = None
    fast = _wire_timestamp(text)
    assert fast is None or fast == expected


def test_decode_writes_the_json_forms_timestamp_without_a_parse() -> None:
    assert _wire_timestamp("2026-12-01T12:22:27.123450Z") == b"2026-12-01T12:22:27.12345Z"
    assert _wire_timestamp("2026-12-01T12:22:27.000000+01:00") == b"2026-12-01T12:22:27+01:00"
    assert _wire_timestamp("2026-02-30T12:22:27Z") is None  # the parser's error


def test_decode_minimal_record_is_user_notice() -> None:
    assert decode_record({}) == b"<13>1 - - - - - -"
    assert decode_record({"message": "hello"}) == b"<13>1 - - - - - - hello"


def test_decode_ignores_the_receivers_fields() -> None:
    record = encode(RFC5424_EXAMPLE, APP, creds=(1, 2, 3), peer="192.0.2.1:1")
    assert decode_record(record) == decode_record(message_fields(record))


def test_decode_keeps_a_leading_u_feff_of_the_text() -> None:
    raw = decode_record({"message": "\ufeffx"})
    assert raw == b"<13>1 - - - - - - " + BOM + BOM + b"x"
    assert encode(raw)["message"] == "\ufeffx"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([], "expected a JSON object, got an array"),
        ("text", "expected a JSON object, got a string"),
        (None, "expected a JSON object, got null"),
        ({"hostname": 3}, "hostname: expected a string or null, got a number"),
        ({"hostname": "my host"}, "HOSTNAME must be 1-255 PRINTUSASCII"),
        ({"msgid": "m" * 33}, "MSGID must be 1-32 PRINTUSASCII"),
        ({"timestamp": "yesterday"}, "timestamp: not RFC 3339"),
        ({"timestamp": 1764600000}, "timestamp: expected an RFC 3339 string, got a number"),
        ({"facility": "nope"}, "facility: expected a name such as 'user'"),
        ({"severity_code": 8}, "severity_code: expected an integer 0-7"),
        ({"severity_code": True}, "severity_code: expected an integer 0-7"),
        ({"facility": "user", "facility_code": 3}, "facility 'user' and facility_code 3 disagree"),
        ({"structured_data": []}, "structured_data: expected an object, got an array"),
        ({"structured_data": {"a": 1}}, "structured_data.a: expected an object"),
        ({"structured_data": {"a": {"p": 1}}}, "structured_data.a.p: expected a string or an"),
        ({"structured_data": {"a b": {}}}, "SD-ID must be 1-32 SD-NAME octets"),
        ({"message": {"a": 1}}, "message: expected a string, got an object"),
        ({"message": "\udc80"}, "message: not encodable as UTF-8"),
        ({"message_base64": "@@"}, "message_base64: not base64"),
    ],
)
def test_decode_refuses_with_a_short_reason(record: object, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        decode_record(record)
    assert str(info.value).startswith(reason)
    assert "\n" not in str(info.value)


def test_decode_either_name_or_code() -> None:
    assert decode_record({"facility": "local7", "severity": "debug"}) == b"<191>1 - - - - - -"
    assert decode_record({"facility_code": 23, "severity_code": 7}) == b"<191>1 - - - - - -"


def test_loads_bad_json_is_a_parse_error() -> None:
    assert loads(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ParseError, match=r"^not JSON"):
        loads(b'{"a": ')


def test_what_the_batch_shares_never_fails_the_encoder() -> None:
    # A socket path read with surrogateescape, a receive time no clock gives.
    record = encode(b"<13>x", peer="/run/\udcff\ud800.sock", input="in\udc80", received=1e300)
    assert record["source"] == "/run/\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd.sock"
    assert record["input"] == "in\ufffd\ufffd\ufffd"
    assert record["received"] is None
    assert record["message"] == "x"


def test_a_refusal_stays_short() -> None:
    with pytest.raises(ParseError) as info:
        decode_record({"hostname": "a b" * 10_000})
    assert len(str(info.value)) == 200

"""Tests of relay.protocol.rfc5424: the strict parser and the canonical formatter."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import LocalProtocolError, ParseError
from relay.protocol import rfc5424
from relay.protocol.syslog import Facility, SDElement, Severity, SyslogMessage

BOM = b"\xef\xbb\xbf"

# --- RFC 5424 §6.5 examples -------------------------------------------------------
#
# Verbatim from the RFC, where "BOM" stands for the octets EF BB BF ("BOM" in the
# examples is the UTF-8 byte order mark, §6.5 example 1 text).

EXAMPLE_1 = (
    b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
    b"BOM'su root' failed for lonvick on /dev/pts/8"
).replace(b"BOM", BOM)
EXAMPLE_2 = (
    b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - "
    b"%% It's time to make the do-nuts."
)
EXAMPLE_3 = (
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
    b"BOMAn application event log entry..."
).replace(b"BOM", BOM)
EXAMPLE_4 = (
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
    b'[examplePriority@32473 class="high"]'
)

_EXAMPLE_SD = SDElement(
    "exampleSDID@32473", (("iut", "3"), ("eventSource", "Application"), ("eventID", "1011"))
)
_TS_1011 = datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)

RFC_EXAMPLES = [
    pytest.param(
        EXAMPLE_1,
        SyslogMessage(
            facility=Facility.auth,
            severity=Severity.crit,
            timestamp=_TS_1011,
            hostname="mymachine.example.com",
            app_name="su",
            msgid="ID47",
            msg=BOM + b"'su root' failed for lonvick on /dev/pts/8",
        ),
        id="6.5-example-1-no-sd",
    ),
    pytest.param(
        EXAMPLE_2,
        SyslogMessage(
            facility=Facility.local4,
            severity=Severity.notice,
            timestamp=datetime(2003, 8, 24, 5, 14, 15, 3, tzinfo=timezone(timedelta(hours=-7))),
            hostname="192.0.2.1",
            app_name="myproc",
            procid="8710",
            msg=b"%% It's time to make the do-nuts.",
        ),
        id="6.5-example-2-no-sd",
    ),
    pytest.param(
        EXAMPLE_3,
        SyslogMessage(
            facility=Facility.local4,
            severity=Severity.notice,
            timestamp=_TS_1011,
            hostname="mymachine.example.com",
            app_name="evntslog",
            msgid="ID47",
            structured_data=(_EXAMPLE_SD,),
            msg=BOM + b"An application event log entry...",
        ),
        id="6.5-example-3-sd",
    ),
    pytest.param(
        EXAMPLE_4,
        SyslogMessage(
            facility=Facility.local4,
            severity=Severity.notice,
            timestamp=_TS_1011,
            hostname="mymachine.example.com",
            app_name="evntslog",
            msgid="ID47",
            structured_data=(_EXAMPLE_SD, SDElement("examplePriority@32473", (("class", "high"),))),
        ),
        id="6.5-example-4-sd-only",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), RFC_EXAMPLES)
def test_rfc_examples_parse(raw: bytes, expected: SyslogMessage) -> None:
    message = rfc5424.parse(raw)
    assert message == expected
    assert message.timestamp is not None and expected.timestamp is not None
    assert message.timestamp.utcoffset() == expected.timestamp.utcoffset()


@pytest.mark.parametrize(("raw", "expected"), RFC_EXAMPLES)
def test_rfc_examples_format_byte_exact(raw: bytes, expected: SyslogMessage) -> None:
    # The examples are already canonical, except example 2's ".000003" fraction,
    # which our formatter writes the same way.
    assert rfc5424.format(expected) == raw


# --- NILVALUE, MSG, BOM -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (b"<13>1 - - - - - -", b""),
        (b"<13>1 - - - - - - ", b""),
        (b"<13>1 - - - - - - -", b"-"),
        (b"<13>1 - - - - - -  two spaces", b" two spaces"),
        (b"<13>1 - - - - - - " + BOM, BOM),
        (b"<13>1 - - - - - - " + BOM + b"caf\xc3\xa9", BOM + b"caf\xc3\xa9"),
        (b"<13>1 - - - - - - " + BOM + b"\xff\xfe bad", BOM + b"\xff\xfe bad"),
        (b"<13>1 - - - - - - a\x00b\nc\r\n\xc3(", b"a\x00b\nc\r\n\xc3("),
    ],
    ids=[
        "all-nil-no-msg",
        "all-nil-empty-msg",
        "msg-is-dash",
        "msg-leading-space",
        "bom-only",
        "bom-utf8",
        "bom-invalid-utf8-kept",
        "nul-lf-invalid-utf8",
    ],
)
def test_nilvalues_and_msg_bytes(raw: bytes, msg: bytes) -> None:
    message = rfc5424.parse(raw)
    assert message.timestamp is None
    assert message.hostname is message.app_name is message.procid is message.msgid is None
    assert message.structured_data == ()
    assert message.msg == msg


# --- field limits (RFC 5424 §6 ABNF) -----------------------------------------------

_FIELDS = {"HOSTNAME": (0, 255), "APP-NAME": (1, 48), "PROCID": (2, 128), "MSGID": (3, 32)}


def _with_field(index: int, value: bytes) -> bytes:
    fields = [b"-"] * 4
    fields[index] = value
    return b"<13>1 - " + b" ".join(fields) + b" - msg"


@pytest.mark.parametrize("name", list(_FIELDS))
def test_header_field_at_limit_parses(name: str) -> None:
    index, limit = _FIELDS[name]
    message = rfc5424.parse(_with_field(index, b"x" * limit))
    values = (message.hostname, message.app_name, message.procid, message.msgid)
    assert values[index] == "x" * limit
    assert message.msg == b"msg"


@pytest.mark.parametrize("name", list(_FIELDS))
def test_header_field_over_limit_raises(name: str) -> None:
    index, limit = _FIELDS[name]
    with pytest.raises(ParseError, match=f"{name} longer than {limit} octets at offset"):
        rfc5424.parse(_with_field(index, b"x" * (limit + 1)))


@pytest.mark.parametrize("name", list(_FIELDS))
@pytest.mark.parametrize("octet", [b"\x7f", b"\x01", b"\xc3\xa9"], ids=["del", "ctl", "utf8"])
def test_header_field_must_be_printusascii(name: str, octet: bytes) -> None:
    index, _ = _FIELDS[name]
    with pytest.raises(ParseError, match=f"{name} has non-PRINTUSASCII octet at offset"):
        rfc5424.parse(_with_field(index, b"ab" + octet))


def test_error_names_field_and_offset() -> None:
    # HOSTNAME starts at offset 8 ("<13>1 - " is 8 octets).
    with pytest.raises(ParseError, match=r"HOSTNAME longer than 255 octets at offset 8$"):
        rfc5424.parse(_with_field(0, b"h" * 256))


@pytest.mark.parametrize(
    ("sd", "expected"),
    [
        (b"[" + b"i" * 32 + b"]", SDElement("i" * 32)),
        (b"[id " + b"p" * 32 + b'="v"]', SDElement("id", (("p" * 32, "v"),))),
    ],
    ids=["sd-id-32", "param-name-32"],
)
def test_sd_name_at_limit_parses(sd: bytes, expected: SDElement) -> None:
    assert rfc5424.parse(b"<13>1 - - - - - " + sd).structured_data == (expected,)


@pytest.mark.parametrize(
    ("sd", "what"),
    [(b"[" + b"i" * 33 + b"]", "SD-ID"), (b"[id " + b"p" * 33 + b'="v"]', "PARAM-NAME")],
    ids=["sd-id-33", "param-name-33"],
)
def test_sd_name_over_limit_raises(sd: bytes, what: str) -> None:
    with pytest.raises(ParseError, match=f"{what} longer than 32 octets"):
        rfc5424.parse(b"<13>1 - - - - - " + sd)


# --- VERSION and TIMESTAMP (§6.2.2, §6.2.3) ----------------------------------------

_PLUS_2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"1985-04-12T23:20:50.52Z", datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)),
        (
            b"1985-04-12T19:20:50.52-04:00",
            datetime(1985, 4, 12, 19, 20, 50, 520000, tzinfo=timezone(timedelta(hours=-4))),
        ),
        (b"2003-10-11T22:14:15.003Z", _TS_1011),
        (b"2026-11-22T00:00:00.123456+02:00", datetime(2026, 11, 22, 0, 0, 0, 123456, _PLUS_2)),
        (
            b"2026-11-22T00:00:00+05:45",
            datetime(2026, 11, 22, tzinfo=timezone(timedelta(minutes=345))),
        ),
        (b"2026-11-22T00:00:00-00:00", datetime(2026, 11, 22, tzinfo=UTC)),
        (b"2028-02-29T23:59:59Z", datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ],
    ids=["6.2.3.1-ex1", "6.2.3.1-ex2", "millis", "micros", "odd-offset", "minus-zero", "leap-day"],
)
def test_parse_timestamp(text: bytes, expected: datetime) -> None:
    parsed = rfc5424.parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert rfc5424.parse(b"<13>1 " + text + b" - - - - -").timestamp == expected


@pytest.mark.parametrize(
    "text",
    [
        b"2003-10-11T22:14:15.003",  # no offset
        b"2003-10-11t22:14:15.003Z",  # lower-case t (§6.2.3 item 1)
        b"2003-10-11T22:14:15.003z",  # lower-case z
        b"2003-10-11 22:14:15Z",
        b"2003-10-11T22:14:15.0000003Z",  # §6.2.3.1 example 5: 7 fractional digits
        b"2003-10-11T22:14:15.Z",
        b"2003-10-11T22:14:60Z",  # leap second (§6.2.3 item 5)
        b"2003-10-32T22:14:15Z",
        b"2027-02-29T00:00:00Z",
        b"2003-13-11T22:14:15Z",
        b"2003-10-11T24:00:00Z",
        b"2003-10-11T22:14:15+24:00",
        b"2003-10-11T22:14:15+01:60",
        b"2003-10-11T22:14:15+0100",
        b"2003-10-11T22:14:15+01:00x",
        b"03-10-11T22:14:15Z",
        b"0000-01-01T00:00:00Z",
        b"2003-1O-11T22:14:15Z",
    ],
    ids=lambda text: text.decode(),
)
def test_bad_timestamp_raises(text: bytes) -> None:
    with pytest.raises(ParseError, match="TIMESTAMP"):
        rfc5424.parse_timestamp(text)
    with pytest.raises(ParseError, match=r"TIMESTAMP.*at offset 6"):
        rfc5424.parse(b"<13>1 " + text + b" - - - - -")


@pytest.mark.parametrize("version", [b"2", b"0", b"10", b"01"])
def test_unsupported_version_raises(version: bytes) -> None:
    with pytest.raises(ParseError, match="VERSION"):
        rfc5424.parse(b"<13>" + version + b" - - - - - -")


# --- STRUCTURED-DATA (§6.3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sd", "value"),
    [
        (rb'[id a="x\"y"]', 'x"y'),
        (rb'[id a="x\\y"]', "x\\y"),
        (rb'[id a="x\]y"]', "x]y"),
        (rb'[id a="C:\temp\new"]', "C:\\temp\\new"),  # §6.3.3: invalid escape kept
        (rb'[id a="end\\"]', "end\\"),
        (rb'[id a="\\\""]', '\\"'),
        (rb'[id a="x]y"]', "x]y"),  # unescaped ']' accepted (judgement: unambiguous)
        (rb'[id a=""]', ""),
        (b'[id a="caf\xc3\xa9 \xe2\x82\xac"]', "caf\u00e9 \u20ac"),
        (b'[id a="tab\tnul\x00lf\n"]', "tab\tnul\x00lf\n"),
    ],
    ids=[
        "escaped-quote",
        "escaped-backslash",
        "escaped-bracket",
        "invalid-escape-literal",
        "trailing-escaped-backslash",
        "backslash-then-quote",
        "unescaped-bracket",
        "empty",
        "utf8",
        "control-chars",
    ],
)
def test_param_value_escaping(sd: bytes, value: str) -> None:
    message = rfc5424.parse(b"<13>1 - - - - - " + sd + b" msg")
    assert message.structured_data == (SDElement("id", (("a", value),)),)
    assert message.msg == b"msg"


def test_repeated_param_name_kept_in_order() -> None:
    # §6.3.3 allows a PARAM-NAME to appear more than once in an SD-ELEMENT.
    sd = b'[origin ip="192.0.2.1" ip="192.0.2.2" software="x"][meta sequenceId="7"]'
    message = rfc5424.parse(b"<13>1 - - - - - " + sd)
    assert message.structured_data == (
        SDElement("origin", (("ip", "192.0.2.1"), ("ip", "192.0.2.2"), ("software", "x"))),
        SDElement("meta", (("sequenceId", "7"),)),
    )


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        (b"", "ends in MSGID"),
        (b" ", "expected '-' or '\\[' for STRUCTURED-DATA"),
        (b" x", "expected '-' or '\\['"),
        (b" -x", "expected SP before MSG at offset 17"),
        (b" [id]x", "expected SP before MSG"),
        (b" [id] [b]", None),  # valid: the second element is MSG
        (b" [id", "expected SP or '\\]'"),
        (b" []", "empty or invalid SD-ID"),
        (b" [ id]", "empty or invalid SD-ID"),
        (b' [i"d]', "expected SP or"),
        (b" [id a]", "expected '=\"' after PARAM-NAME"),
        (b" [id a=b]", "expected '=\"'"),
        (b' [id ="b"]', "empty or invalid PARAM-NAME"),
        (b' [id a="b]', "unterminated PARAM-VALUE"),
        (b' [id a="b\\"]', "unterminated PARAM-VALUE"),
        (b' [id a="b"x]', "expected SP or"),
        (b' [id a="b"  c="d"]', "empty or invalid PARAM-NAME"),
        (b' [id a="\xff"]', "PARAM-VALUE is not UTF-8"),
        (b" [id][id]", "duplicate SD-ID 'id'"),
        (b" [id] ", None),
    ],
    ids=lambda value: repr(value) if isinstance(value, bytes) else None,
)
def test_structured_data_errors(tail: bytes, error: str | None) -> None:
    raw = b"<13>1 - - - - -" + tail
    if error is None:
        rfc5424.parse(raw)
    else:
        with pytest.raises(ParseError, match=error):
            rfc5424.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [b"<13>1", b"<13>1 -", b"<13>1 - -", b"<13>1 - - - -", b"<13>1  - - - - - -", b"<13> 1 -"],
    ids=["version-only", "timestamp-only", "hostname", "procid", "double-space", "space-first"],
)
def test_truncated_header_raises(raw: bytes) -> None:
    with pytest.raises(ParseError):
        rfc5424.parse(raw)


# --- format ---------------------------------------------------------------------------


def test_format_nilvalues() -> None:
    message = SyslogMessage(Facility.user, Severity.notice, hostname="", app_name="", msgid="")
    assert rfc5424.format(message) == b"<13>1 - - - - - -"


def test_format_escapes_param_values() -> None:
    element = SDElement("id@32473", (("a", 'q"b\\c]d'), ("e", "\\n"), ("f", "é")))
    message = SyslogMessage(Facility.user, Severity.notice, structured_data=(element,), msg=b"m")
    raw = rfc5424.format(message)
    assert raw == b'<13>1 - - - - - [id@32473 a="q\\"b\\\\c\\]d" e="\\\\n" f="\xc3\xa9"] m'
    assert rfc5424.parse(raw) == message


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2026, 11, 22, tzinfo=UTC), "2026-11-22T00:00:00Z"),
        (datetime(2026, 11, 22, 1, 2, 3, 3000, tzinfo=UTC), "2026-11-22T01:02:03.003Z"),
        (datetime(2026, 11, 22, 1, 2, 3, 1, tzinfo=UTC), "2026-11-22T01:02:03.000001Z"),
        (datetime(2026, 11, 22, 1, 2, 3, 120000, _PLUS_2), "2026-11-22T01:02:03.12+02:00"),
        (
            datetime(2003, 8, 24, 5, 14, 15, 3, timezone(timedelta(hours=-7))),
            "2003-08-24T05:14:15.000003-07:00",
        ),
        (
            datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
            "2026-01-01T00:00:00-09:30",
        ),
        (datetime(2026, 1, 1, tzinfo=timezone(timedelta(0))), "2026-01-01T00:00:00Z"),
        (datetime(5, 1, 1, tzinfo=UTC), "0005-01-01T00:00:00Z"),
    ],
    ids=[
        "utc",
        "millis",
        "micro",
        "trimmed",
        "6.5-example-2",
        "negative-half-hour",
        "zero",
        "year-5",
    ],
)
def test_format_timestamp(dt: datetime, text: str) -> None:
    assert rfc5424.format_timestamp(dt) == text
    assert rfc5424.parse_timestamp(text.encode()) == dt


@pytest.mark.parametrize(
    "dt",
    [datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=30)))],
    ids=["naive", "sub-minute-offset"],
)
def test_format_timestamp_rejects(dt: datetime) -> None:
    with pytest.raises(LocalProtocolError):
        rfc5424.format_timestamp(dt)


@pytest.mark.parametrize(
    "fields",
    [
        {"hostname": "my host"},
        {"hostname": "h" * 256},
        {"app_name": "a" * 49},
        {"procid": "p" * 129},
        {"msgid": "m" * 33},
        {"msgid": "caf\u00e9"},
        {"app_name": "tab\tname"},
        {"hostname": "\udc80"},
        {"structured_data": (SDElement("id"), SDElement("id"))},
        {"structured_data": (SDElement("a b"),)},
        {"structured_data": (SDElement(""),)},
        {"structured_data": (SDElement("i" * 33),)},
        {"structured_data": (SDElement("id", (("a=b", "v"),)),)},
        {"structured_data": (SDElement("id", (("a", "\udc80"),)),)},
        {"timestamp": datetime(2026, 1, 1)},
    ],
    ids=lambda fields: next(iter(fields)),
)
def test_format_rejects_what_the_grammar_cannot_carry(fields: dict[str, object]) -> None:
    message = SyslogMessage(Facility.user, Severity.notice, **fields)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        rfc5424.format(message)


def test_format_limits_are_inclusive() -> None:
    message = SyslogMessage(
        Facility.local7,
        Severity.debug,
        hostname="h" * 255,
        app_name="a" * 48,
        procid="p" * 128,
        msgid="m" * 32,
        structured_data=(SDElement("i" * 32, (("n" * 32, ""),)),),
    )
    assert rfc5424.parse(rfc5424.format(message)) == message


def test_format_version_is_always_1() -> None:
    # A message read by the RFC 3164 parser (version 0) is written as RFC 5424.
    message = SyslogMessage(Facility.user, Severity.notice, version=0, app_name="root", msg=b"x")
    assert rfc5424.format(message) == b"<13>1 - - root - - - x"


# --- hypothesis: round trip -----------------------------------------------------------


def _ascii_text(
    min_codepoint: int, max_codepoint: int, max_size: int, exclude: str = ""
) -> st.SearchStrategy[str]:
    alphabet = st.characters(
        min_codepoint=min_codepoint, max_codepoint=max_codepoint, exclude_characters=exclude
    )
    return st.text(alphabet, min_size=1, max_size=max_size)


def _header_field(limit: int) -> st.SearchStrategy[str | None]:
    # PRINTUSASCII (§6); "-" alone is the NILVALUE, so it reads back as None.
    return st.none() | _ascii_text(33, 126, limit).filter(lambda value: value != "-")


_sd_names = _ascii_text(33, 126, rfc5424.MAX_SD_NAME, exclude='=]"')
_param_values = st.text(st.characters(codec="utf-8"), max_size=20)
_sd_elements = st.builds(
    SDElement,
    _sd_names,
    st.lists(st.tuples(_sd_names, _param_values), max_size=4).map(tuple),
)
_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_timestamps = st.none() | st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.just(UTC) | _offsets,
)

messages = st.builds(
    SyslogMessage,
    facility=st.sampled_from(Facility),
    severity=st.sampled_from(Severity),
    version=st.just(1),
    timestamp=_timestamps,
    hostname=_header_field(rfc5424.MAX_HOSTNAME),
    app_name=_header_field(rfc5424.MAX_APP_NAME),
    procid=_header_field(rfc5424.MAX_PROCID),
    msgid=_header_field(rfc5424.MAX_MSGID),
    structured_data=st.lists(_sd_elements, max_size=3, unique_by=lambda e: e.id).map(tuple),
    msg=st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(message: SyslogMessage) -> None:
    parsed = rfc5424.parse(rfc5424.format(message))
    assert parsed == message
    if message.timestamp is not None:
        assert parsed.timestamp is not None
        assert parsed.timestamp.utcoffset() == message.timestamp.utcoffset()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_msg_bytes_survive_byte_exact(payload: bytes, with_sd: bool) -> None:
    sd = (SDElement("meta", (("x", "]"),)),) if with_sd else ()
    message = SyslogMessage(Facility.daemon, Severity.info, structured_data=sd, msg=payload)
    raw = rfc5424.format(message)
    assert raw.endswith(payload)
    assert rfc5424.parse(raw).msg == payload
    assert rfc5424.parse(b"<30>1 - - - - - - " + payload).msg == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_raises_only_parse_error(tail: bytes) -> None:
    for prefix in (b"", b"<13>1 ", b"<13>1 - - - - - "):
        with contextlib.suppress(ParseError):
            rfc5424.parse(prefix + tail)


def test_split_header_cuts_at_spaces_and_refuses_what_is_not_rfc5424() -> None:
    parts = rfc5424.split_header(b"<13>1 2026-12-01T00:00:00Z host app 12 ID - text here")
    assert parts == [b"<13>1", b"2026-12-01T00:00:00Z", b"host", b"app", b"12", b"ID", b"-",
                     b"text here"]  # fmt: skip
    assert rfc5424.split_header(b"<13>1 - - - - - -") == [b"<13>1", *[b"-"] * 6]
    for not_5424 in (b"<13>1 - - - - -", b"<192>1 - - - - - -", b"<013>1 - - - - - -",
                     b"<13>Dec  1 00:00:00 host app: text", b"no PRI at all x y z w"):  # fmt: skip
        assert rfc5424.split_header(not_5424) is None

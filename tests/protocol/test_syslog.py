"""Tests of relay.protocol.syslog: PRI, the shared values, and parse_any."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.protocol.syslog import (
    Facility,
    SDElement,
    Severity,
    SyslogMessage,
    parse_any,
    parse_pri,
    split_pri,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


# --- Facility, Severity, the message value -----------------------------------------


def test_facility_and_severity_codes() -> None:
    # RFC 5424 §6.2.1, tables 1 and 2.
    assert [f.value for f in Facility] == list(range(24))
    assert (Facility.kern.value, Facility.auth.value, Facility.local7.value) == (0, 4, 23)
    assert [s.value for s in Severity] == list(range(8))
    assert (Severity.emerg.value, Severity.notice.value, Severity.debug.value) == (0, 5, 7)


@pytest.mark.parametrize(
    ("facility", "severity", "pri"),
    [
        (Facility.kern, Severity.emerg, 0),  # §6.2.1: "a kernel message ... <0>"
        (Facility.local4, Severity.notice, 165),  # §6.2.1: "local use 4 ... Notice ... <165>"
        (Facility.local7, Severity.debug, 191),
        (Facility.auth, Severity.crit, 34),  # §6.5 example 1
    ],
    ids=["kern-emerg", "local4-notice", "max", "auth-crit"],
)
def test_pri_property_and_split(facility: Facility, severity: Severity, pri: int) -> None:
    message = SyslogMessage(facility=facility, severity=severity)
    assert message.pri == pri
    assert split_pri(pri) == (facility, severity)


def test_values_are_frozen_and_slotted() -> None:
    message = SyslogMessage(Facility.user, Severity.notice, structured_data=(SDElement("a"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.hostname = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.structured_data[0].id = "b"  # type: ignore[misc]
    assert not hasattr(message, "__dict__")
    assert not hasattr(SDElement("a"), "__dict__")


# --- parse_pri ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"<0>", (0, 3)),
        (b"<7>1 -", (7, 3)),
        (b"<13>hello", (13, 4)),
        (b"<191>", (191, 5)),
    ],
    ids=["zero", "one-digit", "two-digits", "max"],
)
def test_parse_pri(raw: bytes, expected: tuple[int, int]) -> None:
    assert parse_pri(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        *(b"", b"13>x", b" <13>", b"<>", b"<13", b"<1a>", b"<-1>", b"<192>", b"<999>"),
        *(b"<1000>", b"<00>", b"<013>", b"<01>", b"<+1>", b"<\xd9\xa1>"),
    ],
    ids=[
        "empty",
        "no-open",
        "leading-space",
        "no-digits",
        "no-close",
        "letter",
        "negative",
        "above-191",
        "999",
        "four-digits",
        "double-zero",
        "leading-zero",
        "leading-zero-1",
        "plus",
        "arabic-digit",
    ],
)
def test_parse_pri_rejects(raw: bytes) -> None:
    # RFC 5424 §6.2.1: 1-3 DIGIT, range 0..191, "0" only for the value zero.
    with pytest.raises(ParseError, match="PRI"):
        parse_pri(raw)


# --- parse_any ------------------------------------------------------------------


def test_parse_any_rfc5424() -> None:
    message = parse_any(b"<165>1 2003-10-11T22:14:15.003Z host app 1 ID - hi")
    assert message.version == 1
    assert (message.hostname, message.app_name, message.msgid) == ("host", "app", "ID")
    assert message.msg == b"hi"


def test_parse_any_rfc3164() -> None:
    message = parse_any(b"<13>Nov 22 00:00:00 myhost root: hello", now=NOW)
    assert message.version == 0
    assert message.timestamp == datetime(2026, 11, 22, tzinfo=UTC)
    assert (message.hostname, message.app_name, message.msg) == ("myhost", "root", b"hello")


@pytest.mark.parametrize(
    "raw",
    [
        b"<13>1 2026-13-01T00:00:00Z host app - - - bad month",
        b"<13>1 - host app - - [unterminated sd",
        b"<13>1 ",
        b"<13>1 x",
    ],
    ids=["bad-timestamp", "bad-sd", "truncated", "garbage"],
)
def test_parse_any_falls_back_to_rfc3164(raw: bytes) -> None:
    # Looks like RFC 5424 but is not: the tolerant parser keeps it all as MSG.
    message = parse_any(raw, now=NOW)
    assert message.version == 0
    assert message.hostname is None
    assert message.msg == raw[4:]


@pytest.mark.parametrize("raw", [b"", b"hello", b"<192>1 - - - - - -", b"<013>x"])
def test_parse_any_without_valid_pri_raises(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_any(raw)


# Tokens that push the parsers down their deeper paths more often than random bytes.
_TOKENS = [
    b" ",
    b"  ",
    b"-",
    b"[",
    b"]",
    b'"',
    b"\\",
    b"=",
    b":",
    b"\t",
    b"1",
    b"1 ",
    b"Nov",
    b" 3",
    b"22",
    b"2026",
    b"00:00:00",
    b".123",
    b"2026-11-22T00:00:00Z",
    b"+01:00",
    b"host",
    b"10.0.0.1",
    b"::1",
    b"app:",
    b"[123]:",
    b"id@1",
    b'a="b"',
    b"\xef\xbb\xbf",
    b"\xff",
    b"\x00",
    b"\n",
]
_PREFIXES = [b"", b"<13>", b"<13>1 ", b"<0>", b"<191>1 ", b"<13>Nov 22 00:00:00 "]
_syslogish = st.builds(
    lambda prefix, parts: prefix + b"".join(parts),
    st.sampled_from(_PREFIXES),
    st.lists(st.sampled_from(_TOKENS), max_size=25),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _syslogish))
def test_parse_any_never_crashes(raw: bytes) -> None:
    # Either a message or ParseError: nothing else may escape a parser.
    try:
        message = parse_any(raw, now=NOW)
    except ParseError:
        return
    assert isinstance(message, SyslogMessage)
    assert raw.endswith(message.msg)

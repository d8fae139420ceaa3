"""Tests of relay.protocol.detect: parse_any guesses the format as a receiver must."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.protocol.detect import parse_any
from relay.protocol.syslog import SyslogMessage

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


# --- parse_any ------------------------------------------------------------------


def test_parse_any_rfc5424() -> None:
    message = parse_any(b"<165>1 2003-10-11T22:14:15.003Z host app 1 ID - hi", now=NOW)
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
        parse_any(raw, now=NOW)


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

"""Tests of relay.protocol.syslog: PRI and the shared values."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from relay.errors import ParseError
from relay.protocol.syslog import (
    Facility,
    SDElement,
    Severity,
    SyslogMessage,
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

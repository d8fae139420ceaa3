"""Values shared by the RFC 5424 and RFC 3164 codecs.

A :class:`SyslogMessage` is the *parsed* form of a message. The hot path never
makes one (it moves raw frames in batches, see docs/ARCHITECTURE.md); a message is
parsed only when a feature asks for fields: a filter, a JSON output, a rate
limit keyed on HOSTNAME. :func:`parse_any` is that entry point.

Both wire formats start with the same PRI part (RFC 5424 §6.2.1, RFC 3164
§4.1.1), so :func:`parse_pri` lives here too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from relay.errors import ParseError

__all__ = [
    "Facility",
    "SDElement",
    "Severity",
    "SyslogMessage",
    "parse_any",
    "parse_pri",
    "split_pri",
]

# RFC 5424 §6.2.1: PRIVAL is 1*3DIGIT in the range 0..191 (facility 23 * 8 + 7).
MAX_PRI = 191


class Facility(enum.IntEnum):
    """The facility codes of RFC 5424 §6.2.1, table 1 (names as in syslog.h)."""

    kern = 0
    user = 1
    mail = 2
    daemon = 3
    auth = 4
    syslog = 5
    lpr = 6
    news = 7
    uucp = 8
    cron = 9
    authpriv = 10
    ftp = 11
    ntp = 12
    audit = 13  # "log audit"
    alert = 14  # "log alert"
    clock = 15  # "clock daemon (note 2)"
    local0 = 16
    local1 = 17
    local2 = 18
    local3 = 19
    local4 = 20
    local5 = 21
    local6 = 22
    local7 = 23


class Severity(enum.IntEnum):
    """The severity codes of RFC 5424 §6.2.1, table 2 (names as in syslog.h)."""

    emerg = 0
    alert = 1
    crit = 2
    err = 3
    warning = 4
    notice = 5
    info = 6
    debug = 7


@dataclass(frozen=True, slots=True)
class SDElement:
    """One SD-ELEMENT of RFC 5424 §6.3: an SD-ID and its (name, value) pairs.

    ``params`` is a tuple of pairs, not a dict: §6.3.3 allows a PARAM-NAME to
    repeat within an element, and the order is kept as received.
    """

    id: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """A parsed syslog message, RFC 5424 or RFC 3164.

    ``version`` is 1 for RFC 5424 and 0 for a message read by the RFC 3164
    parser. ``timestamp`` is an aware datetime, or None for the NILVALUE or a
    message without one. The header fields are None for the NILVALUE or when
    absent. ``msg`` holds the MSG octets exactly as received (a UTF-8 BOM,
    invalid UTF-8, NUL and LF included): the relay forwards, it does not
    re-encode.
    """

    facility: Facility
    severity: Severity
    version: int = 1
    timestamp: datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: tuple[SDElement, ...] = ()
    msg: bytes = b""

    @property
    def pri(self) -> int:
        """The PRIVAL: facility * 8 + severity (RFC 5424 §6.2.1)."""
        return self.facility * 8 + self.severity


def parse_pri(raw: bytes) -> tuple[int, int]:
    """Read the PRI part at the start of ``raw``.

    Returns ``(prival, end)`` where ``end`` is the index just after ``>``.
    Raises :class:`ParseError` unless ``raw`` starts with ``<``, one to three
    digits without a leading zero (``<0>`` is the only value that may start
    with ``0``), a value of at most 191, and ``>`` (RFC 5424 §6.2.1).
    """
    if raw[:1] != b"<":
        raise ParseError("PRI: expected '<' at offset 0")
    close = raw.find(b">", 1, 5)
    if close == -1:
        raise ParseError("PRI: expected 1-3 digits and '>' at offset 1")
    digits = raw[1:close]
    if not digits or not digits.isdigit():
        raise ParseError("PRI: expected 1-3 digits at offset 1")
    if len(digits) > 1 and digits[0] == 0x30:
        # §6.2.1: "The only time a value of "0" follows the "<" is for the
        # Priority value of zero."
        raise ParseError("PRI: leading zero at offset 1")
    prival = int(digits)
    if prival > MAX_PRI:
        raise ParseError(f"PRI: value {prival} above {MAX_PRI} at offset 1")
    return prival, close + 1


def split_pri(prival: int) -> tuple[Facility, Severity]:
    """Split a PRIVAL (0..191) into its facility and severity."""
    return Facility(prival >> 3), Severity(prival & 7)


def parse_any(raw: bytes, *, now: datetime | None = None) -> SyslogMessage:
    """Parse a message of either format, the way a receiver must guess.

    RFC 5424 when the octets after PRI are ``1`` and SP (VERSION 1, §6.2.2);
    if that strict parse fails, or the message is not RFC 5424, it is read by
    the tolerant RFC 3164 parser (``now`` is passed to it for the year of a
    BSD timestamp). That parser accepts anything after a valid PRI, so this
    raises :class:`ParseError` only when the PRI is missing or invalid: the
    caller then forwards the raw bytes and counts the message.
    """
    # Imported here: both codecs import this module for the values above.
    from relay.protocol import rfc3164, rfc5424

    _, end = parse_pri(raw)
    if raw[end : end + 2] == b"1 ":
        try:
            return rfc5424.parse(raw)
        except ParseError:
            pass  # e.g. a bad SD-ELEMENT: keep the fields the tolerant parser finds
    return rfc3164.parse(raw, now=now)

"""Which syslog format a message is in, the way a receiver must guess it.

:func:`parse_any` is the one entry point for a message of unknown format:
RFC 5424 when it says so, else RFC 3164's tolerant parse. It sits above both
codecs (which share relay/protocol/syslog.py), so no module imports another
in a circle.
"""

from __future__ import annotations

from datetime import datetime

from relay.errors import ParseError
from relay.protocol import rfc3164, rfc5424
from relay.protocol.syslog import SyslogMessage, parse_pri


def parse_any(raw: bytes, *, now: datetime) -> SyslogMessage:
    """Parse a message of either format, the way a receiver must guess.

    RFC 5424 when the octets after PRI are ``1`` and SP (VERSION 1, §6.2.2);
    if that strict parse fails, or the message is not RFC 5424, it is read by
    the tolerant RFC 3164 parser (``now`` is passed to it for the year of a
    BSD timestamp). That parser accepts anything after a valid PRI, so this
    raises :class:`ParseError` only when the PRI is missing or invalid: the
    caller then forwards the raw bytes and counts the message.
    """
    _, end = parse_pri(raw)
    if raw[end : end + 2] == b"1 ":
        try:
            return rfc5424.parse(raw)
        except ParseError:
            pass  # e.g. a bad SD-ELEMENT: keep the fields the tolerant parser finds
    return rfc3164.parse(raw, now=now)

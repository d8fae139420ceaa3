"""BSD syslog (RFC 3164) as devices really send it: a tolerant parser, a formatter.

RFC 3164 describes what was observed, not a grammar every sender follows. The
shape is::

    <PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG

and in the wild any part after PRI may be missing or different: no HOSTNAME
(``logger`` to /dev/log, FreeBSD, busybox), no TAG, a year inside the
timestamp (Cisco ``Nov 22 2026 00:01:02``), an RFC 3339 timestamp, or no
header at all (``<13>hello world``, FortiGate's ``key=value`` body).

The rule that shapes this parser: a word is taken as HOSTNAME only when it
follows a valid timestamp, is a syntactically valid host (RFC 1123 name, IPv4
or IPv6 literal) *and* is followed by something that looks like a TAG. When
unsure, ``hostname`` is None and the octets stay in MSG: inventing a hostname
out of the first word of a message (as rsyslog does) misroutes logs, while an
absent one falls back to the source address.

:func:`parse` never raises once the PRI is valid (RFC 3164 §4.3.2: a valid PRI
without a valid TIMESTAMP is still a message; everything after PRI is MSG).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from relay.errors import LocalProtocolError, ParseError
from relay.protocol.rfc5424 import parse_timestamp
from relay.protocol.syslog import SyslogMessage, parse_pri, split_pri

__all__ = ["format", "parse"]

# RFC 3164 §4.1.2: the English month abbreviations, whatever the sender's locale.
_MONTHS = (
    *(b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun"),
    *(b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
)
_MONTH_NUMBER = {name: number for number, name in enumerate(_MONTHS, start=1)}

# A TAG is "alphanumeric characters" of at most 32 (RFC 3164 §4.1.3); real
# programs add '-', '_', '.', '/' (postfix/smtpd), '@' and '(' ')' (sd-pam), and
# Windows source names run longer, so we take up to 48 octets: the RFC 5424
# APP-NAME limit, which is where the TAG goes (RFC 5424 §A.1). '%' is left out
# on purpose: Cisco's "%LINK-3-UPDOWN:" is a message mnemonic, not a program.
_TAG_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./@()")
MAX_TAG = 48
MAX_PID = 128  # RFC 5424 PROCID limit
_DIGITS = frozenset(b"0123456789")
_HOST_LABEL_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_PRINTUSASCII = frozenset(range(33, 127))

# A BSD timestamp carries no year; this far ahead of ``now`` it is taken to be
# from the year before (clocks of senders drift, a day is generous).
_FUTURE_SLACK = timedelta(days=1)


# --- parsing -------------------------------------------------------------------


def parse(raw: bytes, *, now: datetime) -> SyslogMessage:
    """Parse one BSD syslog message, accepting what real devices send.

    The timestamp is a BSD one (``Mmm dd hh:mm:ss``, day space-padded or not,
    optional ``.fraction``, optional year before the time) or RFC 3339. A BSD
    timestamp is read as UTC, and its year is inferred from ``now`` (the
    receive time, passed in: this module never reads the clock): the latest of next, this and
    last year that is not more than a day after ``now``. Raises
    :class:`ParseError` only when the PRI is missing or invalid.
    """
    prival, pos = parse_pri(raw)
    facility, severity = split_pri(prival)
    timestamp, header = _parse_timestamp(raw, pos, now)
    hostname = app_name = procid = None
    if timestamp is not None:
        pos = header
        hostname, pos = _parse_hostname(raw, pos)
        tag = _match_tag(raw, pos)
        if tag is not None:
            app_name, procid, pos = tag
    return SyslogMessage(
        facility=facility,
        severity=severity,
        version=0,
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msg=raw[pos:],
    )


def _parse_timestamp(raw: bytes, pos: int, now: datetime) -> tuple[datetime | None, int]:
    """Read the timestamp at ``pos``; return it and where the HOSTNAME would start.

    Returns ``(None, pos)`` when there is no valid timestamp. The timestamp
    ends in SP, end of message, or ``:`` SP (Cisco writes ``00:01:02: %LINK``).
    """
    found = _parse_bsd_timestamp(raw, pos, now)
    if found is None:
        found = _parse_iso_timestamp(raw, pos)
    if found is None:
        return None, pos
    timestamp, end = found
    if raw[end : end + 1] == b":":
        end += 1
    if raw[end : end + 1] == b" ":
        end += 1
    return timestamp, end


def _parse_bsd_timestamp(raw: bytes, pos: int, now: datetime) -> tuple[datetime, int] | None:
    """``Mmm dd [yyyy ]hh:mm:ss[.frac]`` (RFC 3164 §4.1.2, plus Cisco's year)."""
    month = _MONTH_NUMBER.get(raw[pos : pos + 3])
    if month is None or raw[pos + 3 : pos + 4] != b" ":
        return None
    day_field = raw[pos + 4 : pos + 6]
    if day_field[:1] == b" " or day_field.isdigit():  # " 3" (RFC 3164) or "03"/"13"
        day_text, pos = day_field.strip(), pos + 6
    elif raw[pos + 4 : pos + 5].isdigit() and raw[pos + 5 : pos + 6] == b" ":  # "3"
        day_text, pos = raw[pos + 4 : pos + 5], pos + 5
    else:
        return None
    if not day_text.isdigit() or raw[pos : pos + 1] != b" ":
        return None
    pos += 1
    year = None
    if raw[pos : pos + 4].isdigit() and raw[pos + 4 : pos + 5] == b" ":
        year, pos = int(raw[pos : pos + 4]), pos + 5  # Cisco "service timestamps ... year"
    clock = raw[pos : pos + 8]
    if len(clock) != 8 or clock[2:3] != b":" or clock[5:6] != b":":
        return None
    fields = (clock[0:2], clock[3:5], clock[6:8])
    if not all(f.isdigit() for f in fields):
        return None
    hour, minute, second = (int(f) for f in fields)
    pos += 8
    microsecond = 0
    if raw[pos : pos + 1] == b".":  # Cisco "msec", some agents "usec"
        end = pos + 1
        while end < len(raw) and raw[end] in _DIGITS:
            end += 1
        if not 1 <= end - pos - 1 <= 9:
            return None
        microsecond = int(raw[pos + 1 : min(end, pos + 7)].ljust(6, b"0"))
        pos = end
    if pos < len(raw) and raw[pos] not in b" :":
        return None
    parts = (month, int(day_text), hour, minute, second, microsecond)
    timestamp = _with_year(year, parts) if year is not None else _infer_year(now, parts)
    return None if timestamp is None else (timestamp, pos)


def _with_year(year: int, parts: tuple[int, int, int, int, int, int]) -> datetime | None:
    try:
        return datetime(year, *parts, tzinfo=UTC)
    except ValueError:  # Feb 30, 25:00:00, a leap second...
        return None


def _infer_year(now: datetime, parts: tuple[int, int, int, int, int, int]) -> datetime | None:
    """Choose the year a BSD timestamp (which has none) most likely means.

    The latest of next, this and last year that is at most a day after
    ``now``: a message stamped Dec 31 and read on Jan 1 is from last year, and
    one stamped Jan 1 00:00:05 read on Dec 31 23:59:58 from a fast clock is
    from next year. None when no such year makes a valid date (Feb 29).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    limit = now + _FUTURE_SLACK
    for year in (now.year + 1, now.year, now.year - 1):
        candidate = _with_year(year, parts) if 1 <= year <= 9999 else None
        if candidate is not None and candidate <= limit:
            return candidate
    return None


def _parse_iso_timestamp(raw: bytes, pos: int) -> tuple[datetime, int] | None:
    """An RFC 3339 timestamp (rsyslog's forwarding templates, syslog-ng ISO dates)."""
    if not (raw[pos : pos + 4].isdigit() and raw[pos + 4 : pos + 5] == b"-"):
        return None
    end = raw.find(b" ", pos, pos + 33)
    if end == -1:
        end = len(raw)
    try:
        return parse_timestamp(raw[pos:end]), end
    except ParseError:
        return None


def _parse_hostname(raw: bytes, pos: int) -> tuple[str | None, int]:
    """Take the word at ``pos`` as HOSTNAME only if it is a host followed by a TAG."""
    end = raw.find(b" ", pos)
    if end == -1 or not _is_host(raw[pos:end]) or _match_tag(raw, end + 1) is None:
        return None, pos
    return raw[pos:end].decode("ascii"), end + 1


def _is_host(word: bytes) -> bool:
    """An RFC 1123 host name, or an IPv4 or IPv6 literal (RFC 3164 §4.1.2)."""
    if not 1 <= len(word) <= 255 or not all(octet in _PRINTUSASCII for octet in word):
        return False
    text = word.decode("ascii")
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            return False
        return True
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if labels[-1].isdigit():  # dotted digits are an address or nothing (RFC 1123 §2.1)
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return False
        return True
    return len(name) <= 253 and all(_is_host_label(label) for label in labels)


def _is_host_label(label: str) -> bool:
    # RFC 1123 §2.1 / RFC 952: letters, digits, hyphens; 1-63; no hyphen at either end.
    return (
        1 <= len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(ord(char) in _HOST_LABEL_CHARS for char in label)
    )


def _match_tag(raw: bytes, pos: int) -> tuple[str, str | None, int] | None:
    """Match ``TAG:``, ``TAG[PID]:`` or Snare's ``TAG<TAB>`` at ``pos``.

    The colon must be followed by SP or the end of the message. Returns the
    tag, the pid (or None) and where MSG starts (after the ``": "`` or the
    TAB), or None when the octets at ``pos`` do not look like a TAG.
    """
    end = pos
    while end < len(raw) and end - pos <= MAX_TAG and raw[end] in _TAG_CHARS:
        end += 1
    if not 1 <= end - pos <= MAX_TAG:
        return None
    tag = raw[pos:end].decode("ascii")
    after = raw[end : end + 1]
    if after == b"\t":
        # Snare for Windows: "MSWinEventLog<TAB>criticality<TAB>..."
        return tag, None, end + 1
    pid = None
    if after == b"[":
        close = raw.find(b"]", end + 1, end + 2 + MAX_PID)
        if close == -1 or close == end + 1 or not raw[end + 1 : close].isdigit():
            return None
        pid = raw[end + 1 : close].decode("ascii")
        end = close + 1
    if raw[end : end + 1] != b":":
        return None
    if end + 1 == len(raw):
        return tag, pid, end + 1
    if raw[end + 1 : end + 2] != b" ":
        return None
    return tag, pid, end + 2


# --- formatting ----------------------------------------------------------------


def format(msg: SyslogMessage) -> bytes:
    """Write ``msg`` as a BSD syslog message, ``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG``.

    The timestamp is written in UTC (the parser reads BSD timestamps as UTC),
    without year or fraction, the day padded with a space (RFC 3164 §4.1.2).
    Fields that are None are left out with their separator; without a
    timestamp only ``<PRI>`` and MSG are written, since a receiver would take
    a leading word for a timestamp or host (fill in the receive time first
    with :func:`dataclasses.replace` when the output needs a header). A
    ``procid`` is written only with an ``app_name``. STRUCTURED-DATA and MSGID
    have no place in this format and are dropped. Raises
    :class:`LocalProtocolError` for a header field with a space or non-ASCII.
    """
    parts = [b"<%d>" % msg.pri]
    if msg.timestamp is not None:
        parts.append(_format_timestamp(msg.timestamp))
        if msg.hostname:
            parts += (_format_word(msg.hostname, "HOSTNAME"), b" ")
        if msg.app_name:
            parts.append(_format_word(msg.app_name, "TAG"))
            if msg.procid:
                parts += (b"[", _format_word(msg.procid, "PID"), b"]")
            parts.append(b": ")
    parts.append(msg.msg)
    return b"".join(parts)


def _format_timestamp(timestamp: datetime) -> bytes:
    if timestamp.utcoffset() is None:
        raise LocalProtocolError("BSD timestamp needs an aware datetime")
    utc = timestamp.astimezone(UTC)
    month = _MONTHS[utc.month - 1]
    return b"%s %2d %02d:%02d:%02d " % (month, utc.day, utc.hour, utc.minute, utc.second)


def _format_word(value: str, what: str) -> bytes:
    encoded = value.encode("utf-8", "surrogatepass")
    if not all(octet in _PRINTUSASCII for octet in encoded):
        raise LocalProtocolError(f"RFC 3164 {what} must be printable ASCII: {value!r}")
    return encoded

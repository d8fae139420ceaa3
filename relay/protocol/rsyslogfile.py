"""Local files as rsyslog 8.2302 writes them: its view of a message, and its file templates.

A file that replaces rsyslog's must hold the same bytes, so this module reads
a message the way rsyslog does, not the way relay's own parsers do
(protocol/rfc3164.py refuses to invent a HOSTNAME; rsyslog takes a first word
that looks like one):

* On receive rsyslog drops one trailing NUL, then one trailing LF, and writes
  every other control character (0x00-0x1f) as ``#`` and three octal digits
  (``#011`` for TAB; ``$EscapeControlCharactersOnReceive``, on by default).
* No ``<`` at the start: PRI 13 (user.notice), and the whole message is read.
  A PRI over 191 or not closed by ``>``: nothing is parsed, MSG is all of it.
* ``1`` and SP after PRI: RFC 5424 (pmrfc5424). A NILVALUE header field is
  kept as ``-``; TAG is APP-NAME, plus ``[PROCID]`` when there is one. If the
  TIMESTAMP is not RFC 3339, MSG is everything after the VERSION.
* Otherwise RFC 3164 (pmrfc3164): an RFC 3339 or BSD timestamp (month in any
  case, day padded or not, optional year before it or before the time,
  optional fraction, optional ``:`` after it), else the reception time; a
  HOSTNAME is the first word when it is made of letters, digits, ``.``,
  ``_``, ``-``, ends in a letter or digit and is followed by SP (or is all
  that is left); TAG is what follows up to ``:`` or SP, with the ``:``; MSG
  is the rest, its leading SP included. APP-NAME and PROCID (for the
  ``rfc5424`` format) come from TAG: up to ``[``, ``:`` or ``/``, and what
  is between ``[`` and ``]``.

A BSD timestamp has no year and no offset: rsyslog takes both from the
reception time (local time), and so does :class:`Reception`. A message
without HOSTNAME gets the sender's address (rsyslog with ``net.enableDNS``
off), a local one the local host name: the caller puts that in the
:class:`Reception` of the batch, which it computes once per batch.

The templates (rsyslog's names in brackets)::

    traditional  TIMESTAMP HOSTNAME TAG[SP]MSG LF    (RSYSLOG_TraditionalFileFormat)
    rsyslog      RFC3339   HOSTNAME TAG[SP]MSG LF    (RSYSLOG_FileFormat)
    rfc5424      <PRI>1 RFC3339 HOSTNAME APP-NAME PROCID MSGID SD SP MSG LF
                                                     (RSYSLOG_SyslogProtocol23Format)

``[SP]`` is a space when MSG is empty or does not start with one
(``sp-if-no-1st-sp``). The common RFC 3164 line
``<PRI>Mmm dd hh:mm:ss host tag: msg`` takes a fast path: one regular
expression match, and for ``traditional`` a slice of the message (about 1 us
where the full parse costs 10).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

__all__ = ["FORMATS", "Reception", "fields", "formatter", "path_fields", "sanitize"]

FORMATS = ("traditional", "rsyslog", "rfc5424")

_MONTHS = (
    *(b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun"),
    *(b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"),
)
_MONTH_NUMBER = {name.lower(): number for number, name in enumerate(_MONTHS, start=1)}
_MONTH_TEXT = {name: b"%02d" % number for number, name in enumerate(_MONTHS, start=1)}
MAX_PRI = 191
DEFAULT_PRI = 13  # rsyslog's for a message without PRI: user.notice
_MAX_TAG = 510  # pmrfc3164: CONF_TAG_MAXSIZE - 2
_MAX_HOSTNAME = 1023

_CONTROL = re.compile(rb"[\x00-\x1f]")
_CONTROLS = bytes(range(0x20))
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

# The common RFC 3164 line, in the form rsyslog writes its timestamp back
# (month capitalised, day padded with a space): PRI, timestamp, HOSTNAME
# (optional: rsyslog's rule, see the module docstring), TAG.
_BSD = re.compile(
    rb"<([0-9]{1,3})>"
    rb"((Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ( [1-9]|[12][0-9]|3[01]) "
    rb"((?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60))) "
    rb"(?:([A-Za-z0-9._-]*[A-Za-z0-9]) )?"
    rb"([^: ]*:?)"
)
# An RFC 5424 header as rsyslog writes it back unchanged: "<PRI>1" without
# leading zeros, and a TIMESTAMP as _ISO_TS.
_STARTS_5424 = frozenset(b"<%d>1" % pri for pri in range(192))
_ISO_TS = re.compile(
    rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    rb"(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
# RFC 3339 as rsyslog writes it back unchanged (two-digit fields, at most six
# fraction digits), after "<PRI>1 " or "<PRI>".
_ISO = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb"(?:\.([0-9]{1,6}))?(Z|[+-][0-9]{2}:[0-9]{2})(?: |\Z)"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Reception:
    """What a batch's messages share: the reception time, as rsyslog writes it
    where a message has none (local time, microseconds, numeric offset), its
    year and offset (for BSD timestamps), and the HOSTNAME for messages
    without one."""

    traditional: bytes  # b"Dec  1 13:22:27"
    rfc3339: bytes  # b"2026-12-01T13:22:27.733755+00:00"
    year: int
    offset: bytes  # b"+00:00"
    hostname: bytes
    # The messages' BSD timestamps that read as ``traditional`` are the
    # reception time (a local input's, as imuxsock's): written as ``rfc3339``,
    # with its microseconds, as rsyslog writes them.
    stamped: bool = False

    @classmethod
    def at(
        cls,
        local: tuple[int, int, int, int, int, int],
        microsecond: int,
        utcoffset: int,
        hostname: bytes,
        stamped: bool = False,
    ) -> Reception:
        """From the local time ``(year, month, day, hour, minute, second)``,
        its microseconds and the offset from UTC in seconds."""
        year, month, day, hour, minute, second = local
        sign = b"-" if utcoffset < 0 else b"+"
        minutes = abs(utcoffset) // 60
        offset = b"%s%02d:%02d" % (sign, minutes // 60, minutes % 60)
        clock = b"%02d:%02d:%02d" % (hour, minute, second)
        return cls(
            traditional=b"%s %2d %s" % (_MONTHS[month - 1], day, clock),
            rfc3339=b"%04d-%02d-%02dT%s.%06d%s" % (year, month, day, clock, microsecond, offset),
            year=year,
            offset=offset,
            hostname=hostname,
            stamped=stamped,
        )


def sanitize(raw: bytes) -> bytes:
    """The message as rsyslog keeps it on receive (see the module docstring)."""
    if raw[-1:] == b"\0":
        raw = raw[:-1]
    if raw[-1:] == b"\n":
        raw = raw[:-1]
    if len(raw.translate(None, _CONTROLS)) != len(raw):  # 0.4 us, a search 0.8
        raw = _CONTROL.sub(_escape, raw)
    return raw


def _escape(match: re.Match[bytes]) -> bytes:
    return b"#%03o" % match[0][0]


# -- the slow path: every message rsyslog's parsers accept -----------------------

# A timestamp: (year or None for the reception's, month, day, hour, minute,
# second, fraction digits, offset or None for the reception's).
Timestamp = tuple[int | None, int, int, int, int, int, bytes, bytes | None]


@dataclasses.dataclass(slots=True)
class Fields:
    """rsyslog's properties of one message (bytes as written to the file)."""

    pri: int | None  # None: invalid (rsyslog writes "invld")
    timestamp: Timestamp | None  # None: the reception time
    hostname: bytes | None  # None: the reception's (the sender)
    tag: bytes
    msg: bytes
    app_name: bytes = b"-"
    procid: bytes = b"-"
    msgid: bytes = b"-"
    structured_data: bytes = b"-"


def fields(raw: bytes) -> Fields:
    """Read a sanitized message as rsyslog does."""
    pri, pos = _pri(raw)
    if pri is None:
        return Fields(None, None, None, b"", raw)
    if raw[pos : pos + 2] == b"1 ":
        return _rfc5424(raw, pri, pos + 2)
    return _rfc3164(raw, pri, pos)


def _pri(raw: bytes) -> tuple[int | None, int]:
    if raw[:1] != b"<":
        return DEFAULT_PRI, 0
    end = 1
    while end < len(raw) and end <= 4 and raw[end : end + 1].isdigit():
        end += 1
    if raw[end : end + 1] != b">" or end == 1 or int(raw[1:end]) > MAX_PRI:
        return None, 0
    return int(raw[1:end]), end + 1


def _rfc3164(raw: bytes, pri: int, pos: int) -> Fields:
    timestamp, pos = _timestamp_3164(raw, pos)
    hostname = None
    rest = len(raw) - pos
    if rest > 0:
        end = pos
        while end < len(raw) and raw[end] in _HOST_CHARS and end - pos < _MAX_HOSTNAME:
            end += 1
        if end == len(raw):
            hostname, pos = raw[pos:end], end
        elif end > pos and raw[end - 1] in _ALNUM and raw[end] == 0x20:
            hostname, pos = raw[pos:end], end + 1
    end = pos
    while end < len(raw) and raw[end] not in b": " and end - pos < _MAX_TAG:
        end += 1
    if raw[end : end + 1] == b":":
        end += 1
    tag = raw[pos:end]
    return Fields(pri, timestamp, hostname, tag, raw[end:], *_app_procid(tag))


_APP_NAME = re.compile(rb"[^:\[/\x00-\x1f\x7f-\xff]*")


def _app_procid(tag: bytes) -> tuple[bytes, bytes]:
    """APP-NAME and PROCID as rsyslog derives them from an RFC 3164 TAG: up to
    the first ``:``, ``[``, ``/`` or unprintable, and what is in ``[...]``."""
    match = _APP_NAME.match(tag)
    app = match[0] if match is not None and match[0] else b"-"
    procid = b"-"
    start = tag.find(b"[")
    if start != -1:
        close = tag.find(b"]", start + 1)
        if close != -1:
            procid = tag[start + 1 : close] or b"-"
    return app, procid


def _timestamp_3164(raw: bytes, pos: int) -> tuple[Timestamp | None, int]:
    found = _iso(raw, pos) or _bsd(raw, pos)
    if found is None and raw[pos : pos + 1] == b" " and len(raw) - pos > 1:
        found = _bsd(raw, pos + 1)  # HP ProCurve's leading space
    return found or (None, pos)


def _iso(raw: bytes, pos: int) -> tuple[Timestamp, int] | None:
    match = _ISO.match(raw, pos)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    return (year, month, day, hour, minute, second, match[7] or b"", match[8]), match.end()


def _number(raw: bytes, pos: int) -> tuple[int, int]:
    """rsyslog's srSLMGParseInt32: the digits at ``pos`` (none: 0)."""
    end = pos
    while end < len(raw) and 0x30 <= raw[end] <= 0x39:
        end += 1
    return (int(raw[pos:end]) if end > pos else 0), end


def _bsd(raw: bytes, pos: int) -> tuple[Timestamp, int] | None:
    """rsyslog's ParseTIMESTAMP3164 (datetime.c), without TZ strings."""
    year = None
    if raw[pos : pos + 1].isdigit():
        year, pos = _number(raw, pos)
        if not 1970 <= year <= 2100 or raw[pos : pos + 1] != b" ":
            return None
        pos += 1
    month = _MONTH_NUMBER.get(raw[pos : pos + 3].lower())
    if month is None or raw[pos + 3 : pos + 4] != b" ":
        return None
    pos += 4
    if raw[pos : pos + 1] == b" ":
        pos += 1
    day, pos = _number(raw, pos)
    if not 1 <= day <= 31 or raw[pos : pos + 1] != b" ":
        return None
    hour, pos = _number(raw, pos + 1)
    if year is None and 1970 < hour < 2100:  # Cisco: "Jan  5 2024 10:11:12"
        year = hour
        if raw[pos : pos + 1] != b" ":
            return None
        hour, pos = _number(raw, pos + 1)
    if hour > 23 or raw[pos : pos + 1] != b":":
        return None
    minute, pos = _number(raw, pos + 1)
    if minute > 59 or raw[pos : pos + 1] != b":":
        return None
    second, pos = _number(raw, pos + 1)
    if second > 60:
        return None
    fraction = b""
    if raw[pos : pos + 1] == b".":
        start = pos + 1
        _, pos = _number(raw, start)
        fraction = raw[start:pos]
    if raw[pos : pos + 1] == b":":
        pos += 1
    if pos < len(raw):
        if raw[pos] != 0x20:
            return None
        pos += 1
    return (year, month, day, hour, minute, second, fraction, None), pos


def _rfc5424(raw: bytes, pri: int, pos: int) -> Fields:
    """pmrfc5424: the header fields as they are, NILVALUE kept as ``-``."""
    if raw[pos : pos + 2] == b"- ":
        timestamp, pos = None, pos + 2
    else:
        found = _iso(raw, pos)
        if found is None or raw[found[1] - 1] != 0x20:
            return Fields(pri, None, None, b"", raw[pos:], b"")
        timestamp, pos = found
    header = []
    for limit in (255, 48, 128, 32):
        end = raw.find(b" ", pos)
        if end == -1 or end == pos or end - pos > limit:
            return Fields(pri, timestamp, None, b"", raw[pos:], b"")
        header.append(raw[pos:end])
        pos = end + 1
    hostname, app, procid, msgid = header
    sd_end = _structured_data_end(raw, pos)
    if sd_end is None:
        return Fields(pri, timestamp, hostname, app, raw[pos:], app, procid, msgid)
    msg = raw[sd_end + 1 :] if raw[sd_end : sd_end + 1] == b" " else raw[sd_end:]
    tag = app if procid == b"-" else b"%s[%s]" % (app, procid)
    return Fields(pri, timestamp, hostname, tag, msg, app, procid, msgid, raw[pos:sd_end])


def _structured_data_end(raw: bytes, pos: int) -> int | None:
    """Where STRUCTURED-DATA at ``pos`` ends (``-`` or SD-ELEMENTs), or None."""
    if raw[pos : pos + 1] == b"-":
        return pos + 1
    while raw[pos : pos + 1] == b"[":
        pos += 1
        while pos < len(raw) and raw[pos] != 0x5D:  # ']'
            if raw[pos] == 0x22:  # '"': a PARAM-VALUE, with \" \\ \] escapes
                pos += 1
                while pos < len(raw) and raw[pos] != 0x22:
                    pos += 2 if raw[pos] == 0x5C else 1
            pos += 1
        if pos >= len(raw):
            return None
        pos += 1
    return pos if raw[pos - 1 : pos] == b"]" else None


def path_fields(raw: bytes) -> tuple[int | None, bytes | None, bytes]:
    """PRI, HOSTNAME (None: the sender's) and APP-NAME, for a dynamic file name."""
    match = _fast(raw)
    if match is not None and len(raw.translate(None, _CONTROLS)) == len(raw):
        return int(match[1]), match[6], _app_procid(match[7])[0]
    f = fields(sanitize(raw))
    return f.pri, f.hostname, f.app_name


# -- the templates ---------------------------------------------------------------


def _ts_traditional(timestamp: Timestamp | None, reception: Reception) -> bytes:
    if timestamp is None:
        return reception.traditional
    _, month, day, hour, minute, second, _, _ = timestamp
    return b"%s %2d %02d:%02d:%02d" % (_MONTHS[month - 1], day, hour, minute, second)


def _ts_rfc3339(timestamp: Timestamp | None, reception: Reception) -> bytes:
    if timestamp is None:
        return reception.rfc3339
    if reception.stamped and _ts_traditional(timestamp, reception) == reception.traditional:
        return reception.rfc3339
    year, month, day, hour, minute, second, fraction, offset = timestamp
    return b"%04d-%02d-%02dT%02d:%02d:%02d%s%s" % (
        reception.year if year is None else year,
        *(month, day, hour, minute, second),
        b"." + fraction if fraction else b"",
        reception.offset if offset is None else offset,
    )


def _line(ts: bytes, f: Fields, reception: Reception) -> bytes:
    msg = f.msg
    space = b"" if msg[:1] == b" " else b" "
    hostname = reception.hostname if f.hostname is None else f.hostname
    return b"%s %s %s%s%s\n" % (ts, hostname, f.tag, space, msg)


def _fast(raw: bytes) -> re.Match[bytes] | None:
    """The match of the common RFC 3164 line, or None for the slow path (and
    for a line that is all PRI, timestamp and one word: that word is HOSTNAME)."""
    match = _BSD.match(raw)
    if match is None or int(match[1]) > MAX_PRI:
        return None
    if match[6] is None and match.end() == len(raw) and match[7][-1:] != b":":
        return None
    return match


def _fast_rfc3339(raw: bytes, match: re.Match[bytes], reception: Reception) -> bytes:
    """The BSD timestamp of ``_fast``'s ``match`` as RFC 3339 (the reception
    time's, with microseconds, where a local input wrote it)."""
    if reception.stamped and raw[match.start(3) : match.end(5)] == reception.traditional:
        return reception.rfc3339
    day = match[4]
    return b"%d-%s-%sT%s%s" % (
        reception.year,
        _MONTH_TEXT[match[3]],
        b"0" + day[1:] if day[:1] == b" " else day,
        match[5],
        reception.offset,
    )


def _fast_5424(raw: bytes) -> list[bytes] | None:
    """An RFC 5424 message without STRUCTURED-DATA, split at its spaces: the
    header fields, and MSG when there is one; None for the slow path."""
    parts = raw.split(b" ", 7)
    if len(parts) < 7 or parts[6] != b"-" or parts[0] not in _STARTS_5424:
        return None
    _, timestamp, hostname, app, procid, msgid = parts[:6]
    if (
        not 0 < len(hostname) <= 255
        or not 0 < len(app) <= 48
        or not 0 < len(procid) <= 128
        or not 0 < len(msgid) <= 32
        or _ISO_TS.fullmatch(timestamp) is None
    ):
        return None
    return parts


def _line_5424(ts: bytes, parts: list[bytes]) -> bytes:
    app, procid = parts[3], parts[4]
    tag = app if procid == b"-" else b"%s[%s]" % (app, procid)
    msg = parts[7] if len(parts) == 8 else b""
    space = b"" if msg[:1] == b" " else b" "
    return b"%s %s %s%s%s\n" % (ts, parts[2], tag, space, msg)


def traditional(raw: bytes, reception: Reception) -> bytes:
    """RSYSLOG_TraditionalFileFormat: ``Mmm dd hh:mm:ss HOSTNAME TAG MSG`` and LF."""
    raw = sanitize(raw)
    match = _fast(raw)
    if match is not None:
        msg = raw[match.end() :]
        if match[6] is not None and msg[:1] == b" ":
            return raw[match.start(2) :] + b"\n"  # the line as it came
        hostname = reception.hostname if match[6] is None else match[6]
        space = b"" if msg[:1] == b" " else b" "
        return b"%s %s %s%s%s\n" % (match[2], hostname, match[7], space, msg)
    parts = _fast_5424(raw)
    if parts is not None:
        ts = parts[1]
        month = _MONTHS[int(ts[5:7]) - 1]
        return _line_5424(b"%s %2d %s" % (month, int(ts[8:10]), ts[11:19]), parts)
    f = fields(raw)
    return _line(_ts_traditional(f.timestamp, reception), f, reception)


def rsyslog(raw: bytes, reception: Reception) -> bytes:
    """RSYSLOG_FileFormat: ``RFC3339 HOSTNAME TAG MSG`` and LF."""
    raw = sanitize(raw)
    match = _fast(raw)
    if match is not None:
        msg = raw[match.end() :]
        hostname = reception.hostname if match[6] is None else match[6]
        space = b"" if msg[:1] == b" " else b" "
        return b"%s %s %s%s%s\n" % (
            _fast_rfc3339(raw, match, reception),
            hostname,
            match[7],
            space,
            msg,
        )
    parts = _fast_5424(raw)
    if parts is not None:
        return _line_5424(parts[1], parts)
    f = fields(raw)
    return _line(_ts_rfc3339(f.timestamp, reception), f, reception)


def rfc5424(raw: bytes, reception: Reception) -> bytes:
    """RSYSLOG_SyslogProtocol23Format:
    ``<PRI>1 RFC3339 HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`` and LF."""
    raw = sanitize(raw)
    parts = _fast_5424(raw)
    if parts is not None:  # written back as it came
        return raw + b"\n" if len(parts) == 8 else raw + b" \n"
    match = _fast(raw)
    if match is not None:
        app, procid = _app_procid(match[7])
        return b"<%d>1 %s %s %s %s - - %s\n" % (
            int(match[1]),
            _fast_rfc3339(raw, match, reception),
            reception.hostname if match[6] is None else match[6],
            app,
            procid,
            raw[match.end() :],
        )
    f = fields(raw)
    return b"<%s>1 %s %s %s %s %s %s %s\n" % (
        b"invld" if f.pri is None else b"%d" % f.pri,
        _ts_rfc3339(f.timestamp, reception),
        reception.hostname if f.hostname is None else f.hostname,
        f.app_name,
        f.procid,
        f.msgid,
        f.structured_data,
        f.msg,
    )


Formatter = Callable[[bytes, Reception], bytes]
_FORMATTERS: dict[str, Formatter] = {
    "traditional": traditional,
    "rsyslog": rsyslog,
    "rfc5424": rfc5424,
}


def formatter(name: str) -> Formatter:
    """The function that writes one message in format ``name`` (one of FORMATS)."""
    return _FORMATTERS[name]

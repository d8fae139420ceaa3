"""The JSON form of a message: one object per message, for every JSON output.

The file output's ``format = "json"``, HTTP bodies and the HTTP ingest input
all use this module, so a field has one name and one meaning everywhere (the
schema is documented in relay.toml(5), section JSON FORM). Sans-IO: the
receive time, the peer and the host facts of :class:`Enrichment` are passed
in; this module never reads the clock, a file or the host.

:func:`encode_batch` turns a batch's raw messages into JSON objects (bytes,
no newline), never raising on any bytes. The fields are those relay's parser
reads (:func:`relay.protocol.detect.parse_any`):

* ``timestamp`` and ``received``: RFC 3339 in UTC with microseconds
  (``2026-12-01T13:22:27.733755Z``); ``timestamp`` is null when the message
  has none. (A timestamp whose UTC form would fall outside years 1-9999 keeps
  its own offset.)
* ``hostname``, ``app_name``, ``procid``, ``msgid``: strings, null when
  absent or the NILVALUE ``-`` (also for an RFC 3164 TAG that is ``-``: RFC
  5424 cannot carry it otherwise).
* ``facility``/``severity`` (names as in syslog.h) and ``facility_code``/
  ``severity_code`` (numbers).
* ``structured_data``: ``{SD-ID: {PARAM-NAME: value}}``, unescaped; a
  PARAM-NAME that repeats in its element (RFC 5424 §6.3.3 allows it) has the
  list of its values, in order.
* ``message``: the MSG as text, without a leading UTF-8 BOM (RFC 5424 §6.4:
  it marks the encoding, and a JSON string is Unicode). When MSG is not
  valid UTF-8, ``message`` holds it decoded with U+FFFD replacements and
  ``message_base64`` the exact octets (BOM included), so nothing is lost.
* ``source`` (the peer's address without port, or the socket path; null when
  unknown), ``input`` (the input's name), ``pid``/``uid``/``gid`` (only when
  the kernel reported the sender's credentials), ``host`` and ``labels``
  (the output's enrichment, only when configured), and under
  ``JsonOptions.parse_message`` the fields of a message text that is itself a
  JSON object (never merged over relay's own fields).

A message without a valid PRI cannot be parsed at all: its ``message`` is the
whole raw text, the header fields are null, and it is ``user.notice`` as
rsyslog files it.

:func:`decode_record` is the way back: a parsed JSON object becomes the RFC
5424 wire bytes of a message whose JSON form has the same message fields
(``timestamp`` through ``message_base64``; the others are the receiver's).
Missing fields take the defaults above; a field of the wrong type raises
:class:`~relay.errors.ParseError` with a short reason. :func:`loads` is the
decoder that goes with it. A timestamp of the usual shape is written from
its seconds and offset, parsed and formatted once (then cached), and its
own fraction: a third less work a record than parsing each.

The encoder is orjson: 6-10x the standard library's ``json.dumps`` on these
objects (scripts/bench-json). The common shapes are read by a fast path that
agrees with the parser (:class:`_Fields`; differential tests keep it so, byte
for byte) and written as bytes: what a batch shares (the fields of
``_common``, a timestamp's seconds, the header fields with the PRI) is
encoded once and spliced in, and orjson sees only each message's text and
structured data. About 2.5 us a 300-byte RFC 5424 message all told, 4 an
RFC 3164 line, 7 with structured data, where the parse alone costs 25-50.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from relay.errors import LocalProtocolError, ParseError
from relay.protocol import rfc3164, rfc5424
from relay.protocol.detect import parse_any
from relay.protocol.syslog import Facility, SDElement, Severity, SyslogMessage

__all__ = [
    "FIELDS",
    "Enrichment",
    "JsonOptions",
    "decode_record",
    "encode_batch",
    "format_time",
    "loads",
]

# Every field relay itself may write: parse_message cannot name one of them.
FIELDS = frozenset(
    (
        "timestamp",
        "received",
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
        "source",
        "input",
        "pid",
        "uid",
        "gid",
        "host",
        "labels",
    )
)

_BOM = b"\xef\xbb\xbf"
_EPOCH = datetime.fromtimestamp(0, UTC)  # "now" for a receive time that is not one
_FACILITY_NAMES = tuple(f.name for f in Facility)
_SEVERITY_NAMES = tuple(s.name for s in Severity)
# rsyslog's PRI for a message it cannot parse: user.notice.
_DEFAULT_FACILITY = Facility.user
_DEFAULT_SEVERITY = Severity.notice


@dataclass(frozen=True, slots=True)
class Enrichment:
    """What an output adds to every object; read once at start by the runtime."""

    host: dict[str, str] = field(default_factory=dict)  # only the configured facts
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JsonOptions:
    """How an output writes the JSON form.

    ``parse_message``: the key under which the fields of a message text that
    is a JSON object go; it must not be one of relay's own :data:`FIELDS`.
    """

    enrichment: Enrichment | None = None
    parse_message: str | None = None

    def __post_init__(self) -> None:
        if self.parse_message is not None and (
            not self.parse_message or self.parse_message in FIELDS
        ):
            raise ValueError(f"parse_message cannot be {self.parse_message!r}: a field of relay's")


# --- encoding ------------------------------------------------------------------


def format_time(when: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with microseconds (``...Z``).

    Outside what UTC can express in years 1-9999 (``0001-01-01T00:00:00+01:00``),
    the datetime keeps its own offset: still RFC 3339, still the same instant.
    """
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        return when.isoformat(timespec="microseconds")
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _source(peer: str) -> str | None:
    """The peer without its port: ``[::1]:514`` -> ``::1``; a path stays as it is."""
    if not peer:
        return None
    if peer[0] == "[":
        close = peer.find("]")
        return peer[1:close] if close != -1 else peer
    if peer[0] != "/" and peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


def _unicode(text: str | None) -> str | None:
    """``text`` as JSON can hold it: a socket path read with surrogateescape
    may carry lone surrogates, which become U+FFFD."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _received(received: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(received, UTC)
    except (ValueError, OverflowError, OSError):  # not a time a clock gives: NaN, 1e20
        return None


def _common(
    now: datetime | None,
    peer: str,
    input: str,
    creds: tuple[int, int, int] | None,
    options: JsonOptions,
) -> dict[str, object]:
    """The fields every message of a batch shares, computed once per batch."""
    common: dict[str, object] = {
        "received": None if now is None else format_time(now),
        "source": _unicode(_source(peer)),
        "input": _unicode(input),
    }
    if creds is not None:
        common["pid"], common["uid"], common["gid"] = creds
    enrichment = options.enrichment
    if enrichment is not None:
        if enrichment.host:
            common["host"] = enrichment.host
        if enrichment.labels:
            common["labels"] = enrichment.labels
    return common


def encode_batch(
    messages: list[bytes],
    *,
    received: float,
    peer: str,
    input: str,
    creds: tuple[int, int, int] | None,
    options: JsonOptions,
) -> list[bytes]:
    """One JSON object (bytes, no newline) per message, in order. Never raises on any bytes."""
    # What the messages share is encoded once and spliced after each one's own fields.
    now = _received(received)
    shared = b"," + orjson.dumps(_common(now, peer, input, creds, options))[1:]
    encode = _Fields(now or _EPOCH).encode
    key = options.parse_message
    if key is None:
        return [encode(raw, shared) for raw in messages]
    out: list[bytes] = []
    for raw in messages:
        own = encode(raw, b"}")
        record = orjson.loads(own)
        if _add_parsed(record, key):
            own = _dumps(record, key)
        out.append(own[:-1] + shared)
    return out


def message_fields(raw: bytes, *, now: datetime) -> dict[str, object]:
    """The message fields of one message (``timestamp`` to ``message_base64``).

    ``now`` is the receive time, for the year of a BSD timestamp.
    """
    return _Fields(now).read(raw)


# The PRI of each valid PRIVAL as written after "<" (no leading zero, RFC 5424
# §6.2.1), and the fields it stands for.
_PRI_FIELDS = {
    b"%d" % pri: {
        "facility": _FACILITY_NAMES[pri >> 3],
        "facility_code": pri >> 3,
        "severity": _SEVERITY_NAMES[pri & 7],
        "severity_code": pri & 7,
    }
    for pri in range(192)
}
_STARTS_5424 = frozenset(b"<" + text + b">1" for text in _PRI_FIELDS)  # "<PRI>1"
# A header field is PRINTUSASCII (RFC 5424 §6): these deleted, nothing is left.
_PRINTUSASCII = bytes(range(33, 127))
# RFC 5424 §6.3: SD-NAME is 1*32 PRINTUSASCII but '=', ']' and '"'; an
# SD-ELEMENT whose PARAM-VALUEs hold no backslash (no escape) and no '"'.
_SD_NAME = rb"[!#-<>-\\^-~]{1,32}"
_SD_ELEMENT = re.compile(rb'\[(%s)((?: %s="[^"\\]*")*)\]' % (_SD_NAME, _SD_NAME))
_SD_PARAM = re.compile(rb' (%s)="([^"\\]*)"' % _SD_NAME)
# RFC 3164 TAG, TAG[PID] or Snare's TAG<TAB>, as rfc3164._match_tag reads it.
_TAG_CLASS = rb"[-A-Za-z0-9_./@()]"
_TAG = re.compile(
    rb"(%s{1,%d})(?!%s)(?:\t|(?:\[([0-9]{1,%d})\])?:(?: |\Z))"
    % (_TAG_CLASS, rfc3164.MAX_TAG, _TAG_CLASS, rfc3164.MAX_PID)
)


class _Fields:
    """Writes the message fields of the messages of one batch as JSON.

    The common shapes take a fast path that reads what the parsers would
    (``<PRI>1`` with a valid header and STRUCTURED-DATA; ``<PRI>Mmm dd
    hh:mm:ss [HOST ]TAG: ``) and writes the object as bytes: what repeats in
    a batch (a timestamp's seconds, the header fields with the PRI) is
    checked and encoded once per batch and spliced in, so that only the
    message text and STRUCTURED-DATA go through orjson for each message.
    Anything else, and anything the fast path doubts, goes to
    :func:`relay.protocol.detect.parse_any`. tests/protocol/test_jsonform.py
    checks that both write the same bytes.
    """

    __slots__ = ("heads", "hosts", "now", "seconds", "sixes", "stamps", "tags")

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.seconds: dict[tuple[bytes, bytes], bytes | None] = {}  # RFC 5424 TIMESTAMP
        self.sixes: dict[bytes, bytes | None] = {}  # one with six digits of fraction
        self.stamps: dict[bytes, bytes | None] = {}  # a BSD timestamp and its SP
        self.hosts: dict[bytes, bool] = {}
        # The JSON of hostname to structured_data's key, by what they are read
        # from: an RFC 5424 PRI and header fields, an RFC 3164 PRI, host and TAG.
        # A cache's b"" is "not seen yet", its None "not for the fast path".
        self.heads: dict[tuple[bytes, bytes, bytes, bytes, bytes], bytes | None] = {}
        self.tags: dict[tuple[bytes, bytes | None, bytes | None, bytes | None], bytes] = {}

    def read(self, raw: bytes) -> dict[str, object]:
        """The message fields as a dict (what :meth:`encode` writes)."""
        record = orjson.loads(self.encode(raw, b"}"))
        assert isinstance(record, dict)
        return record

    def encode(self, raw: bytes, tail: bytes) -> bytes:
        """The JSON object of the message fields, its last bytes ``tail``
        (``}``, or the shared fields of the batch and ``}``)."""
        parts = raw.split(b" ", 7)
        if parts[0] in _STARTS_5424:
            out = self._rfc5424(raw, parts, tail)
        else:
            out = self._rfc3164(raw, tail)
        if out is None:
            return orjson.dumps(self._parsed(raw))[:-1] + tail
        return out

    def _rfc5424(self, raw: bytes, parts: list[bytes], tail: bytes) -> bytes | None:
        if len(parts) < 7:
            return None
        pri, stamp, host, app, proc, msgid, sd = parts[:7]
        key = (pri, host, app, proc, msgid)
        head = self.heads.get(key, b"")
        if head == b"":
            head = self.heads[key] = _head_5424(key)
        if head is None:
            return None
        timestamp = self._timestamp_5424(stamp)
        if timestamp is None:
            return None
        if sd == b"-":
            structured_data = b"{}"
            msg = parts[7] if len(parts) == 8 else b""
        elif sd[:1] == b"[":
            sd_start = len(pri) + len(stamp) + len(host) + len(app) + len(proc) + len(msgid) + 6
            found = _plain_structured_data(raw, sd_start)
            if found is None:
                try:
                    elements, end = rfc5424._parse_structured_data(raw, sd_start)
                except ParseError:
                    return None
                found = _structured_data(elements), end
            params, end = found
            if end < len(raw) and raw[end] != 0x20:
                return None
            structured_data = orjson.dumps(params)
            msg = raw[end + 1 :]
        else:
            return None
        return b"".join((timestamp, head, structured_data, b',"message":', _message(msg), tail))

    def _timestamp_5424(self, text: bytes) -> bytes | None:
        """``{"timestamp":`` and the TIMESTAMP in UTC (or null); None when unsure."""
        # The usual shape first, six digits of fraction (as relay, rsyslog and
        # journald write it): its seconds, "." and offset are one key.
        if len(text) == 27 or len(text) == 32:
            seconds = text[:20] + text[26:]
            head = self.sixes.get(seconds, b"")
            if head == b"":
                head = self.sixes[seconds] = _six_head(seconds)
            fraction = text[20:26]
            if head is not None and fraction.isdigit():
                return head + fraction + b'Z"'
        if text == b"-":
            return b'{"timestamp":null'
        # YYYY-MM-DDThh:mm:ss[.1*6DIGIT](Z|+hh:mm): the seconds and the offset
        # (checked by the strict parser, once per batch), then the fraction.
        if text[-1:] == b"Z":
            key = (text[:19], b"Z")
            fraction = text[20:-1]
        else:
            key = (text[:19], text[-6:])
            fraction = text[20:-6]
        utc = self.seconds.get(key, b"")
        if utc == b"":
            utc = self.seconds[key] = _utc_seconds(key[0] + key[1])
        if utc is None:
            return None
        if fraction:
            if text[19] != 0x2E or len(fraction) > 6 or not fraction.isdigit():
                return None
            return b'{"timestamp":"%s.%sZ"' % (utc, fraction.ljust(6, b"0"))
        if len(text) != 19 + len(key[1]):
            return None
        return b'{"timestamp":"%s.000000Z"' % utc

    def _rfc3164(self, raw: bytes, tail: bytes) -> bytes | None:
        close = raw.find(b">", 1, 5)
        pri = raw[1:close]
        if raw[:1] != b"<" or pri not in _PRI_FIELDS:
            return None
        stamp = raw[close + 1 : close + 17]
        timestamp = self.stamps.get(stamp, b"")
        if timestamp == b"":
            timestamp = self.stamps[stamp] = self._bsd_timestamp(stamp)
        if timestamp is None:
            return None
        pos = close + 17
        hostname = None
        tag = None
        space = raw.find(b" ", pos)
        if space != -1:
            word = raw[pos:space]
            is_host = self.hosts.get(word)
            if is_host is None:
                is_host = self.hosts[word] = rfc3164._is_host(word)
            if is_host:
                tag = _TAG.match(raw, space + 1)
                if tag is not None:
                    hostname = word
        if tag is None:
            tag = _TAG.match(raw, pos)
        app_name = procid = None
        if tag is not None:
            app_name, procid = tag.groups()
            pos = tag.end()
        key = (pri, hostname, app_name, procid)
        head = self.tags.get(key)
        if head is None:
            head = self.tags[key] = _head_3164(*key)
        return b"".join((timestamp, head, b'{},"message":', _message(raw[pos:]), tail))

    def _bsd_timestamp(self, stamp: bytes) -> bytes | None:
        """``{"timestamp":`` and ``Mmm dd hh:mm:ss`` and SP, in UTC; None for
        any other 16 octets.

        The parser reads no octet past the SP after such a timestamp, so the
        result holds for every message that starts with the same 16 octets.
        """
        found = rfc3164._parse_bsd_timestamp(stamp, 0, self.now)
        if found is None or found[1] != 15 or stamp[15:] != b" ":
            return None
        return b'{"timestamp":"%s"' % format_time(found[0]).encode("ascii")

    def _parsed(self, raw: bytes) -> dict[str, object]:
        """The slow path: relay's parser, for every message."""
        try:
            parsed = parse_any(raw, now=self.now)
        except ParseError:
            return _unparsed(raw)
        timestamp = parsed.timestamp
        record: dict[str, object] = {
            "timestamp": None if timestamp is None else format_time(timestamp),
            "hostname": _header(parsed.hostname),
            "app_name": _header(parsed.app_name),
            "procid": _header(parsed.procid),
            "msgid": _header(parsed.msgid),
            **_PRI_FIELDS[b"%d" % parsed.pri],
            "structured_data": _structured_data(parsed.structured_data),
        }
        _add_message(record, parsed.msg)
        return record


def _head_5424(key: tuple[bytes, ...]) -> bytes | None:
    """``,"hostname":`` to ``"structured_data":`` of an RFC 5424 header (PRI,
    HOSTNAME, APP-NAME, PROCID, MSGID); None when one is not valid."""
    pri, host, app, proc, msgid = key
    if not (
        0 < len(host) <= rfc5424.MAX_HOSTNAME
        and 0 < len(app) <= rfc5424.MAX_APP_NAME
        and 0 < len(proc) <= rfc5424.MAX_PROCID
        and 0 < len(msgid) <= rfc5424.MAX_MSGID
    ):
        return None
    if any(value.translate(None, _PRINTUSASCII) for value in (host, app, proc, msgid)):
        return None  # a header field is PRINTUSASCII (RFC 5424 §6)
    fields = [
        None if value == b"-" else value.decode("ascii") for value in (host, app, proc, msgid)
    ]
    return _head(pri[1:-2], *fields)


def _head_3164(pri: bytes, hostname: bytes | None, tag: bytes | None, pid: bytes | None) -> bytes:
    """``,"hostname":`` to ``"structured_data":`` of an RFC 3164 line."""
    return _head(
        pri,
        None if hostname is None else hostname.decode("ascii"),
        None if tag is None or tag == b"-" else tag.decode("ascii"),
        None if pid is None else pid.decode("ascii"),
        None,
    )


def _head(
    pri: bytes, hostname: str | None, app_name: str | None, procid: str | None, msgid: str | None
) -> bytes:
    record = {
        "hostname": hostname,
        "app_name": app_name,
        "procid": procid,
        "msgid": msgid,
        **_PRI_FIELDS[pri],
        "structured_data": None,
    }
    return b"," + orjson.dumps(record)[1 : -len(b"null}")]


def _six_head(key: bytes) -> bytes | None:
    """``{"timestamp":"`` and the UTC seconds and "." of a TIMESTAMP with six
    digits of fraction, from its seconds, "." and offset; None if not one."""
    if key[19:20] != b".":
        return None
    utc = _utc_seconds(key[:19] + key[20:])
    return None if utc is None else b'{"timestamp":"%s.' % utc


def _message(msg: bytes) -> bytes:
    """The text as a JSON string (and ``message_base64`` when it is not UTF-8)."""
    text = msg[3:] if msg[:3] == _BOM else msg
    try:
        return orjson.dumps(text.decode("utf-8"))
    except UnicodeDecodeError:
        return b'%s,"message_base64":"%s"' % (
            orjson.dumps(text.decode("utf-8", "replace")),
            base64.b64encode(msg),
        )


def _plain_structured_data(
    raw: bytes, pos: int
) -> tuple[dict[str, dict[str, str | list[str]]], int] | None:
    """STRUCTURED-DATA without a backslash in any PARAM-VALUE (the usual case),
    by regular expressions; None for anything else (an escape, a duplicate
    SD-ID, a value that is not UTF-8, a syntax error): the strict parser decides."""
    out: dict[str, dict[str, str | list[str]]] = {}
    while True:
        element = _SD_ELEMENT.match(raw, pos)
        if element is None:
            break
        sd_id = element[1].decode("ascii")
        if sd_id in out:
            return None
        params: dict[str, str | list[str]] = {}
        for name, value in _SD_PARAM.findall(element[2]):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return None
            key = name.decode("ascii")
            before = params.get(key)
            if before is None:
                params[key] = text
            elif isinstance(before, list):
                before.append(text)
            else:
                params[key] = [before, text]
        out[sd_id] = params
        pos = element.end()
    if not out or raw[pos : pos + 1] == b"[":  # an element it does not read
        return None
    return out, pos


def _utc_seconds(text: bytes) -> bytes | None:
    """An RFC 5424 TIMESTAMP without fraction as UTC seconds, None if not valid or
    outside years 1-9999 in UTC (the slow path writes those)."""
    try:
        utc = rfc5424.parse_timestamp(text).astimezone(UTC)
    except (ParseError, OverflowError):
        return None
    return utc.replace(tzinfo=None).isoformat().encode("ascii")


def _header(value: str | None) -> str | None:
    return None if value == "-" else value


def _unparsed(raw: bytes) -> dict[str, object]:
    record: dict[str, object] = {
        "timestamp": None,
        "hostname": None,
        "app_name": None,
        "procid": None,
        "msgid": None,
        **_PRI_FIELDS[b"%d" % (_DEFAULT_FACILITY * 8 + _DEFAULT_SEVERITY)],
        "structured_data": {},
    }
    _add_message(record, raw)
    return record


def _structured_data(elements: tuple[SDElement, ...]) -> dict[str, dict[str, str | list[str]]]:
    out: dict[str, dict[str, str | list[str]]] = {}
    for element in elements:
        params: dict[str, str | list[str]] = {}
        for name, value in element.params:
            before = params.get(name)
            if before is None:
                params[name] = value
            elif isinstance(before, list):
                before.append(value)
            else:
                params[name] = [before, value]
        out[element.id] = params
    return out


def _add_message(record: dict[str, object], msg: bytes) -> None:
    text = msg[3:] if msg[:3] == _BOM else msg
    try:
        record["message"] = text.decode("utf-8")
    except UnicodeDecodeError:
        record["message"] = text.decode("utf-8", "replace")
        record["message_base64"] = base64.b64encode(msg).decode("ascii")


def _add_parsed(record: dict[str, object], key: str) -> bool:
    """Put the fields of a message text that is a JSON object under ``key``."""
    text = record["message"]
    assert isinstance(text, str)
    if text.lstrip()[:1] != "{":
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if isinstance(value, dict):
        record[key] = value
        return True
    return False


def _dumps(record: dict[str, object], key: str | None) -> bytes:
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:  # a parsed message text nested too deep
        if key is None or key not in record:
            raise
        del record[key]
        return orjson.dumps(record)


# --- decoding ------------------------------------------------------------------


def loads(data: bytes) -> object:
    """Parse JSON text (orjson); raises ParseError with a short reason."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc}") from None


def decode_record(record: object) -> bytes:
    """A parsed JSON object as the RFC 5424 wire bytes of the message it describes.

    Reads the message fields of the schema (others are ignored); raises
    ParseError for a record that is not an object, a field of the wrong type,
    or a value RFC 5424 cannot carry (a space in ``hostname``...).
    """
    if not isinstance(record, dict):
        raise ParseError(f"expected a JSON object, got {_json_type(record)}")
    facility = _code(record, "facility", Facility, _DEFAULT_FACILITY)
    severity = _code(record, "severity", Severity, _DEFAULT_SEVERITY)
    stamp = record.get("timestamp")
    wire_stamp = _wire_timestamp(stamp) if type(stamp) is str else None
    message = SyslogMessage(
        facility=Facility(facility),
        severity=Severity(severity),
        timestamp=None if wire_stamp is not None else _timestamp(stamp),
        hostname=_text(record, "hostname"),
        app_name=_text(record, "app_name"),
        procid=_text(record, "procid"),
        msgid=_text(record, "msgid"),
        structured_data=_decode_sd(record.get("structured_data")),
        msg=_msg(record),
    )
    try:
        wire = rfc5424.format(message)
    except LocalProtocolError as exc:
        reason = str(exc).removeprefix("RFC 5424 ")
        raise ParseError(reason if len(reason) <= 200 else reason[:197] + "...") from None
    if wire_stamp is None:
        return wire
    # Written with the NILVALUE for TIMESTAMP (right after "<PRI>1 "): the
    # timestamp as format_timestamp would write it goes in its place.
    at = wire.index(b" ") + 1
    return b"%s%s%s" % (wire[:at], wire_stamp, wire[at + 1 :])


# An RFC 3339 timestamp as the JSON form writes it (and as most senders do):
# its seconds with offset, and the fraction.
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,6}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
# Distinct seconds-and-offset whose RFC 5424 form is remembered: a request
# spans a few seconds, so this is reached only by garbage.
_SECONDS_CACHE = 4096
_seconds_5424: dict[str, tuple[bytes, bytes] | None] = {}


def _wire_timestamp(value: str) -> bytes | None:
    """``value`` as rfc5424.format_timestamp writes it, its seconds and offset
    parsed once (and cached); None for what only the strict parser decides."""
    found = _RFC3339.fullmatch(value)
    if found is None:
        return None
    seconds, fraction, offset = found.groups()
    key = seconds + offset
    try:
        parts = _seconds_5424[key]
    except KeyError:
        if len(_seconds_5424) >= _SECONDS_CACHE:
            _seconds_5424.clear()
        try:
            text = rfc5424.format_timestamp(rfc5424.parse_timestamp(key.encode("ascii")))
        except (ParseError, LocalProtocolError):
            parts = None
        else:
            parts = text[:19].encode("ascii"), text[19:].encode("ascii")
        _seconds_5424[key] = parts
    if parts is None:
        return None
    fraction = fraction.rstrip("0") if fraction else ""
    if not fraction:
        return parts[0] + parts[1]
    return b"%s.%s%s" % (parts[0], fraction.encode("ascii"), parts[1])


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _code(
    record: dict[str, object], name: str, kind: type[Facility] | type[Severity], default: int
) -> int:
    """``facility``/``severity`` from its name or its ``_code``; they must agree."""
    code = record.get(f"{name}_code")
    text = record.get(name)
    from_code = from_name = None
    if code is not None:
        if type(code) is not int or code not in kind._value2member_map_:
            raise ParseError(f"{name}_code: expected an integer 0-{len(kind) - 1}")
        from_code = code
    if text is not None:
        if not isinstance(text, str) or text not in kind.__members__:
            raise ParseError(f"{name}: expected a name such as {list(kind)[1].name!r}")
        from_name = int(kind[text])
    if from_code is not None and from_name is not None and from_code != from_name:
        raise ParseError(f"{name} {text!r} and {name}_code {code} disagree")
    if from_code is not None:
        return from_code
    return default if from_name is None else from_name


def _timestamp(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParseError(f"timestamp: expected an RFC 3339 string, got {_json_type(value)}")
    try:
        return rfc5424.parse_timestamp(value.encode("utf-8", "replace"))
    except ParseError:
        raise ParseError(f"timestamp: not RFC 3339: {value[:40]!r}") from None


def _text(record: dict[str, object], name: str) -> str | None:
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ParseError(f"{name}: expected a string or null, got {_json_type(value)}")


def _decode_sd(value: object) -> tuple[SDElement, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ParseError(f"structured_data: expected an object, got {_json_type(value)}")
    elements = []
    for sd_id, params in value.items():
        if not isinstance(params, dict):
            raise ParseError(f"structured_data.{sd_id}: expected an object")
        pairs: list[tuple[str, str]] = []
        for name, param in params.items():
            values = param if isinstance(param, list) else [param]
            for item in values:
                if not isinstance(item, str):
                    raise ParseError(
                        f"structured_data.{sd_id}.{name}: expected a string or an array of strings"
                    )
                pairs.append((name, item))
        elements.append(SDElement(sd_id, tuple(pairs)))
    return tuple(elements)


def _msg(record: dict[str, object]) -> bytes:
    exact = record.get("message_base64")
    if exact is not None:
        if not isinstance(exact, str):
            raise ParseError(f"message_base64: expected a string, got {_json_type(exact)}")
        try:
            return base64.b64decode(exact, validate=True)
        except (binascii.Error, ValueError):
            raise ParseError("message_base64: not base64") from None
    text = record.get("message")
    if text is None:
        return b""
    if not isinstance(text, str):
        raise ParseError(f"message: expected a string, got {_json_type(text)}")
    try:
        msg = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ParseError("message: not encodable as UTF-8 (a lone surrogate)") from None
    # The encoder drops one leading BOM: give a text that starts with U+FEFF its own.
    return _BOM + msg if msg[:3] == _BOM else msg

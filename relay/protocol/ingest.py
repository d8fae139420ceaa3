"""The body of an HTTP ingest request: NDJSON or a JSON array in, messages out.

Sans-IO: bytes in, the RFC 5424 wire bytes of each record out (the JSON form
mapped back by :func:`relay.protocol.jsonform.decode_record`). A request is all
or nothing: the first bad record fails the whole body with a
:class:`BadRecord` that names where it is (the line of an NDJSON body, the
index of a JSON array's element), so the input answers 400 and queues none of
it. What the body is comes from its first byte, not from ``Content-Type``:
``curl --data-binary`` sends ``application/x-www-form-urlencoded`` unless told,
and Fluent Bit, Vector and Logstash each send their own type for NDJSON.

A gzip body (``Content-Encoding: gzip``) is inflated with a bound on what it
inflates to (:func:`inflate`): a few KiB of gzip can expand to gigabytes.
"""

from __future__ import annotations

import zlib

from relay.errors import ParseError
from relay.protocol.jsonform import decode_record, loads

# The largest request body taken, compressed or inflated, when max_body_bytes
# is not set. nginx's client_max_body_size defaults to 1 MiB, Elasticsearch's
# http.max_content_length to 100 MiB; shippers batch 1-5 MiB (Fluent Bit's
# http output 2 MiB chunks, Vector's http sink 10 MB). 10 MiB takes a full
# batch of any of them and bounds what one request holds in memory.
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# Where clients POST when path is not set: the path Vector's and Fluent Bit's
# docs use for an ingestion API, versioned so that a v2 can live beside it.
DEFAULT_PATH = "/v1/ingest"
# What an error message quotes of a bad record at most.
_QUOTE = 40


class BodyTooLarge(ParseError):
    """The body, or what it inflates to, is over the limit (HTTP 413)."""


class BadRecord(ParseError):
    """A record that is not JSON or not a message (HTTP 400); ``str()`` names it."""


def inflate(body: bytes, limit: int) -> bytes:
    """A gzip body inflated; BodyTooLarge once it passes ``limit`` bytes,
    BadRecord if it is not gzip. Concatenated members (RFC 1952 2.2) are one
    body, as gzip -d reads them."""
    out: list[bytes] = []
    size = 0
    rest = body
    while rest:
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            chunk = decoder.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise BadRecord(f"the body is not valid gzip: {exc}") from None
        size += len(chunk)
        if size > limit or decoder.unconsumed_tail:
            raise BodyTooLarge(f"the body inflates to more than {limit} bytes")
        if not decoder.eof:
            raise BadRecord("the gzip body is truncated")
        out.append(chunk)
        rest = decoder.unused_data
    return b"".join(out)


def decode_body(body: bytes) -> list[bytes]:
    """The messages of an NDJSON body or a JSON array, in order; BadRecord for
    the first bad record (nothing of the body is taken then)."""
    start = body.lstrip()
    if start.startswith(b"["):
        return _array(body)
    return _ndjson(body)


def _ndjson(body: bytes) -> list[bytes]:
    """One JSON object a line (LF or CRLF); blank lines are skipped, not counted
    as records, but the line numbers in errors count them (as an editor does)."""
    messages: list[bytes] = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            messages.append(decode_record(loads(line)))
        except ParseError as exc:
            raise BadRecord(f"line {number}: {_reason(exc)}: {_quote(line)}") from None
    return messages


def _array(body: bytes) -> list[bytes]:
    try:
        records = loads(body)
    except ParseError as exc:
        raise BadRecord(f"the body is not a JSON array: {_reason(exc)}") from None
    if not isinstance(records, list):  # "[" then not an array: loads would have failed
        raise BadRecord("the body is not a JSON array")
    messages: list[bytes] = []
    for index, record in enumerate(records):
        try:
            messages.append(decode_record(record))
        except ParseError as exc:
            raise BadRecord(f"record {index} (from 0) of the array: {_reason(exc)}") from None
    return messages


def _reason(exc: ParseError) -> str:
    return str(exc) or type(exc).__name__


def _quote(line: bytes) -> str:
    """The start of a bad line, printable: the sender sees which one it was."""
    text = line.strip()[:_QUOTE].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text + ("..." if len(line.strip()) > _QUOTE else ""))

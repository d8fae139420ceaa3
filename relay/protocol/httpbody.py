"""Request bodies of the HTTP output, from JSON records, and what ``_bulk`` answered.

Sans-IO: records in (one JSON object per message, as relay/protocol/jsonform.py
encodes them), bytes out. Each body kind is a class with the same two
methods, so that the output can cut a request anywhere (413 halves it):

* ``ndjson``: one record a line (``application/x-ndjson``; Vector's and
  Fluent Bit's ``json_lines``).
* ``json_array``: ``[rec,rec,...]`` (``application/json``).
* ``es_bulk``: Elasticsearch/OpenSearch ``_bulk``: a ``create`` action line
  naming the index, then the record (``create`` works for indices and for
  data streams alike). The index is a strftime template of the message's
  timestamp (its ``received`` time when it has none), in UTC.
* ``loki``: Grafana Loki's push API (``/loki/api/v1/push``): one stream,
  labelled with the output's static labels, each value ``[ns, record]``
  with the receive time in nanoseconds.

:func:`bulk_errors` reads a ``_bulk`` answer: which items were refused, with
their status (the whole request is answered 200 even when items fail).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import orjson

# Distinct second-resolution timestamps whose index name is remembered; a
# batch spans a few seconds, so this is never reached except by garbage.
_INDEX_CACHE = 4096
_TS = b'"timestamp":'
_RECEIVED = b'"received":"'


class NdjsonBody:
    content_type = "application/x-ndjson"

    def encode(self, records: Sequence[bytes], received: Sequence[float]) -> bytes:
        return b"\n".join(records) + b"\n"


class JsonArrayBody:
    content_type = "application/json"

    def encode(self, records: Sequence[bytes], received: Sequence[float]) -> bytes:
        return b"[" + b",".join(records) + b"]"


class EsBulkBody:
    """``_bulk`` with one ``create`` action a record, index from ``template``."""

    content_type = "application/x-ndjson"

    def __init__(self, template: str) -> None:
        self.template = template
        self._cache: dict[bytes, bytes] = {}
        # The index changes at most daily unless the template names a finer
        # field: then the cache is keyed by the day, and hits far more often.
        finer = any(f"%{c}" in template for c in "HIMSpfzZcXsTRrk")
        self._key = 19 if finer else 10

    def encode(self, records: Sequence[bytes], received: Sequence[float]) -> bytes:
        # The hot loop of the _bulk output: one find, one slice and one dict
        # lookup a record (the stamp's cut from the front of relay's own JSON).
        cache = self._cache
        parts: list[bytes] = []
        append = parts.append
        start = len(_TS) + 1
        for record in records:
            at = record.find(_TS) + start
            stamp = record[at : at + self._key] if record[at - 1] == 0x22 else _received(record)
            line = cache.get(stamp)
            if line is None:
                line = self._line(stamp)
            append(line)
            append(record)
        append(b"")
        return b"\n".join(parts)

    def _line(self, stamp: bytes) -> bytes:
        line = self._render(stamp)
        if len(self._cache) >= _INDEX_CACHE:
            self._cache.clear()
        self._cache[stamp] = line
        return line

    def _render(self, stamp: bytes) -> bytes:
        try:
            text = stamp.decode("ascii")
            when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S"[: len(text) - 2])
            index = when.strftime(self.template)
        except (UnicodeDecodeError, ValueError):
            index = datetime(1970, 1, 1).strftime(self.template)
        return orjson.dumps({"create": {"_index": index.lower()}})


def _received(record: bytes) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS`` of the record's receive time ("timestamp": null)."""
    at = record.find(_RECEIVED)
    return record[at + len(_RECEIVED) : at + len(_RECEIVED) + 19] if at >= 0 else b""


class LokiBody:
    """One stream with the static ``labels``; values in nanoseconds of receipt."""

    content_type = "application/json"

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._stream = orjson.dumps(dict(labels) or {"job": "relay"})

    def encode(self, records: Sequence[bytes], received: Sequence[float]) -> bytes:
        # A record is a JSON object; Loki wants the line as a string.
        values = b",".join(
            b'["%d000",%s]' % (round(at * 1e6), orjson.dumps(record.decode("utf-8", "replace")))
            for record, at in zip(records, received, strict=True)
        )
        return b'{"streams":[{"stream":' + self._stream + b',"values":[' + values + b"]}]}"


Body = NdjsonBody | JsonArrayBody | EsBulkBody | LokiBody


def body_for(kind: str, *, index: str, labels: Mapping[str, str]) -> Body:
    """The body of ``kind`` (one of relay.policy.http.BODIES)."""
    if kind == "json_array":
        return JsonArrayBody()
    if kind == "es_bulk":
        return EsBulkBody(index)
    if kind == "loki":
        return LokiBody(labels)
    return NdjsonBody()


def bulk_errors(answer: bytes, count: int) -> list[tuple[int, int, str]] | None:
    """The refused items of a ``_bulk`` answer to ``count`` records: (position,
    status, reason) each; [] when ``errors`` is false. None when the answer is
    not a ``_bulk`` answer for that many items (the request is then retried)."""
    # Elasticsearch and OpenSearch write "took" and "errors" first: an answer
    # without errors (the common case) is not parsed (5,000 items: ~10 ms).
    head = answer[:64]
    if head.startswith(b"{") and (b'"errors":false' in head or b'"errors": false' in head):
        return []
    try:
        doc = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if doc.get("errors") is False:
        return []
    items = doc.get("items")
    if not isinstance(items, list) or len(items) != count:
        return None
    refused = []
    for position, item in enumerate(items):
        result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
        if not isinstance(result, dict):
            return None
        status = result.get("status")
        if not isinstance(status, int):
            return None
        if not 200 <= status < 300:
            error = result.get("error")
            reason = error.get("type", "") if isinstance(error, dict) else str(error or "")
            refused.append((position, status, str(reason)))
    return refused

"""The HTTP(S) output's settings and its decisions: what an answer means.

Pure: no sockets, no trio, no clock (``now`` is passed in). The output
(relay/outputs/http.py) asks :func:`verdict` what to do with a status and
:func:`retry_after` how long the server asked it to wait; the config reads an
``[output.NAME]`` with an ``http://`` or ``https://`` URL through
:func:`http_settings` (kept here so that relay/config.py only calls it).

The delivery rules (issue 12): a batch leaves the spool only on a 2xx; 429,
5xx and connection errors are retried with back-off, honouring
``Retry-After``; 413 splits the request and retries the halves (one message
too large goes to the dead-letter file); 401 and 403 keep the batch and retry
slowly (an expired token must not lose logs); any other 4xx will never be
accepted: dead-letter file, a log line and a counter.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

BODIES = ("ndjson", "json_array", "es_bulk", "loki")
HTTP_KEYS = (
    "body",
    "index",
    "gzip",
    "token_file",
    "headers",
    "batch_max_messages",
    "batch_max_bytes",
    "flush_interval",
    "timeout",
    "dead_letter",
)
# A request carries at most this many messages and this many body bytes
# (before gzip). Elasticsearch advises bulk requests of a few MB (5-15 MB;
# its http.max_content_length is 100 MB, nginx's client_max_body_size 1 MB by
# default, which a 413 then splits for us); Vector's http sink sends 10 MB.
DEFAULT_BATCH_MAX_MESSAGES = 5000
DEFAULT_BATCH_MAX_BYTES = 4 * 1024 * 1024
# A request that is not full waits this long for more messages (Fluent Bit's
# and Vector's flush default is 1 s): at a trickle one request a second, not
# one per message.
DEFAULT_FLUSH_INTERVAL = 1.0
# An answer that takes longer is a failure to retry (Vector's default is 60 s,
# Fluent Bit's none; an ingestion API answers a few MB in well under that).
DEFAULT_TIMEOUT = 30.0
# Elasticsearch's daily index, as Logstash and Fluent Bit name it.
DEFAULT_INDEX = "logs-%Y.%m.%d"
# Headers relay sets itself: a user's would break the request.
RESERVED_HEADERS = ("content-length", "content-encoding", "content-type", "host")
# What a Retry-After may ask for, at most: a misconfigured server asking for a
# day must not park a host's logs for a day.
MAX_RETRY_AFTER = 300.0
# 401/403: retried this often (the token may be fixed any time; the file is
# read again at each attempt), and logged at most once per AUTH_LOG_INTERVAL.
AUTH_RETRY = 5.0
AUTH_LOG_INTERVAL = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class HttpSettings:
    """An http:// or https:// output's keys (relay.toml(5))."""

    body: str = "ndjson"  # one of BODIES
    index: str = DEFAULT_INDEX  # es_bulk: strftime template of each message's timestamp
    gzip: bool = False
    token_file: str = ""  # "": no Authorization header
    headers: tuple[tuple[str, str], ...] = ()
    batch_max_messages: int = DEFAULT_BATCH_MAX_MESSAGES
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    dead_letter: str = ""  # "": refused messages are counted and dropped


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # 408, 429, 5xx: try again after a back-off (Retry-After)
    SPLIT = "split"  # 413: send the halves
    AUTH = "auth"  # 401, 403: keep it, retry slowly
    REJECT = "reject"  # any other answer: it will never be taken


def verdict(status: int) -> Verdict:
    """What to do with a request the server answered ``status``."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    if status == 413:
        return Verdict.SPLIT
    if status in (401, 403):
        return Verdict.AUTH
    return Verdict.REJECT


def item_verdict(status: int) -> Verdict:
    """An Elasticsearch ``_bulk`` item's status: 429 and 5xx are retried, the
    others (400 mapping errors, 409 conflicts) never succeed."""
    found = verdict(status)
    return Verdict.REJECT if found in (Verdict.SPLIT, Verdict.AUTH) else found


def retry_after(value: str | None, now: float) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 10.2.3: seconds, or
    an HTTP date; ``now`` is the wall time), at most MAX_RETRY_AFTER; None
    without one, or for one that means nothing."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if math.isnan(when):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER)


def split(count: int) -> int:
    """Where a request of ``count`` messages refused with 413 is cut."""
    return (count + 1) // 2


# -- the config keys ----------------------------------------------------------


class Checker(Protocol):
    """What of relay.config's validator :func:`http_settings` uses."""

    def get(
        self, table: Mapping[str, Any], key: str, convert: Callable[[Any], Any], default: Any
    ) -> Any: ...

    def error(self, key: str, message: str) -> None: ...


def http_settings(
    checker: Checker,
    key: str,
    table: Mapping[str, Any],
    *,
    size: Callable[[Any], int],
    interval: Callable[[Any], float],
    seconds: Callable[[Any], float],
) -> HttpSettings:
    """The HTTP keys of ``[output.NAME]`` (``key``); mistakes go to ``checker``.
    ``size``, ``interval`` and ``seconds`` are the config's converters for sizes,
    flush intervals and timeouts."""
    get = checker.get
    body = get(table, f"{key}.body", _choice(BODIES), "ndjson")
    if "index" in table and body != "es_bulk":
        checker.error(f"{key}.index", 'only means something with body = "es_bulk"')
    token_file = get(table, f"{key}.token_file", _absolute, "")
    return HttpSettings(
        body=body,
        index=get(table, f"{key}.index", _index_template, DEFAULT_INDEX),
        gzip=get(table, f"{key}.gzip", _bool, False),
        token_file=token_file,
        headers=get(table, f"{key}.headers", _headers, ()),
        batch_max_messages=get(
            table, f"{key}.batch_max_messages", _count(1, 1_000_000), DEFAULT_BATCH_MAX_MESSAGES
        ),
        batch_max_bytes=get(table, f"{key}.batch_max_bytes", size, DEFAULT_BATCH_MAX_BYTES),
        flush_interval=get(table, f"{key}.flush_interval", interval, DEFAULT_FLUSH_INTERVAL),
        timeout=get(table, f"{key}.timeout", _positive(seconds), DEFAULT_TIMEOUT),
        dead_letter=get(table, f"{key}.dead_letter", _absolute, ""),
    )


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}")
        return str(value)

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


def _count(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return convert


def _positive(convert: Callable[[Any], float]) -> Callable[[Any], float]:
    def positive(value: Any) -> float:
        seconds = convert(value)
        if seconds <= 0:
            raise ValueError("must be more than 0 seconds")
        return seconds

    return positive


def _absolute(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError("must be an absolute path")
    return value


def _index_template(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be an index name, e.g. "logs-%Y.%m.%d"')
    # Elasticsearch index names may not hold these (and are lowercased when sent).
    bad = "".join(c for c in '\\/*?"<>| ,#' if c in value)
    if bad:
        raise ValueError(f"{value!r}: an index name may not hold {bad!r}")
    return value


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise TypeError('must be a table of strings, e.g. { "X-Scope-OrgID" = "tenant1" }')
    headers = []
    for name, text in value.items():
        if not isinstance(text, str):
            raise TypeError(f"{name}: must be a string")
        if not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
            raise ValueError(f"{name!r} is not a header name")
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"{name}: a header value may not hold a newline or NUL")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name}: relay sets this header itself")
        if name.lower() == "authorization":
            raise ValueError("Authorization: put the token in a file and name it with token_file")
        headers.append((name, text))
    return tuple(headers)

"""HTTP ingest input: ``POST`` NDJSON or a JSON array of messages, over HTTP or HTTPS.

The server is h11 (sans-IO HTTP/1.1) on the TCP input's own listener,
connection limits, idle timeout, stop and TLS (:class:`relay.inputs.tcp.TcpInput`):
no ASGI server, so mutual TLS and ``permitted_peers`` work as on ``tls://``
inputs. Each record of a body becomes a message through
:mod:`relay.protocol.ingest` (the JSON form mapped back), all or nothing.

A request is answered:

* 200 only once every record is in the spool of every output it is routed to
  (and on disk, with ``durability = "fsync"``), as the RELP input answers;
* 429 with ``Retry-After`` while a spool it is routed to is full (on_full =
  block, memory and disk spent): nothing of it is queued, the sender keeps it;
* 400 naming the NDJSON line or array index of the first bad record (nothing
  of that request is queued), 413 past ``max_body_bytes`` (compressed, or
  once inflated: a gzip bomb is cut off there), 401 without the bearer token
  of ``token_file`` when one is configured, 404/405/415 for another path,
  method or ``Content-Encoding``.

Keep-alive: a connection carries requests one after the other. A client that
breaks HTTP, or takes more than REQUEST_TIMEOUT to send one request, gets one
answer (400, 431 or 408) if it can still take one and is closed; it is counted
and logged (rate-limited), and never holds up anything but its own connection.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from relay.config import InputConfig
from relay.errors import ParseError, StartupError
from relay.inputs.tcp import CONNECTION_COUNTERS, Connection, TcpInput
from relay.message import Batch
from relay.protocol.framing import OversizePolicy, limit_frames
from relay.protocol.ingest import BodyTooLarge, decode_body, inflate
from relay.spool.router import Router
from relay.stats import Counters, LogLimit
from relay.tls.stream import ByteStream

log = logging.getLogger("relay.input")

# A request's line and headers at most. nginx's large_client_header_buffers
# is 4 x 8 KiB, h11's own default 16 KiB; a shipper sends a few hundred bytes.
MAX_HEADER_BYTES = 16 * 1024
# The whole of one request (headers and body), from its first byte: nginx's
# client_header_timeout and client_body_timeout are 60 s each. A client that
# trickles (slowloris) is answered 408 and closed past it; idle_timeout
# covers the wait between requests.
REQUEST_TIMEOUT = 60.0
# Writing one answer: a client that does not read it is closed.
SEND_TIMEOUT = 10.0
# After an answer sent before the request's body was read (401, 413...):
# what the client still sends is read and dropped for this long (and at most
# max_body_bytes) before the close, so that the close does not reset the
# connection (RFC 9112 9.6) and lose the answer in the client's buffers.
# nginx's lingering_time is 30 s, lingering_timeout 5 s.
LINGER_TIME = 2.0
# Queueing one request's batch, once the spools said they had room: the router
# may first wait for room in memory (back-pressure) before spilling to disk.
# Past this the batch is taken past the spools' budgets (never half-queued).
QUEUE_WAIT = 5.0
# Retry-After of a 429: the spools drain in seconds once the upstream is back;
# shippers (Fluent Bit, Vector) back off on their own on top of it.
RETRY_AFTER = 2
# One line per kind of refused request per this many seconds, the rest counted.
REFUSED_LOG_INTERVAL = 60.0
SERVER = b"relay"

COUNTERS = (
    "received",
    "bytes",
    *CONNECTION_COUNTERS,
    "requests",  # requests answered, whatever the answer
    "accepted_requests",  # answered 200: every record queued
    "bad_requests",  # 400: a bad record or body (nothing queued)
    "unauthorized",  # 401: no or wrong bearer token
    "too_large",  # 413: body over max_body_bytes (or inflating past it)
    "refused_full",  # 429: a spool it goes to is full (nothing queued)
    "protocol_errors",  # not HTTP/1.1 as it should be (closed)
    "request_timeouts",  # a request not sent whole within REQUEST_TIMEOUT (closed)
    "truncated",
    "dropped_oversize",
    # Read and being queued while the spools were full when the stop came:
    # taken past their budgets and saved with them, but never answered, so
    # the client sends them again (duplicates, not a loss).
    "kept_at_stop",
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request gets: status, a short text (JSON-quoted in the body), headers."""

    status: int
    text: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    close: bool = False  # the connection closes after it (the body was not read)


def read_token(config: InputConfig) -> bytes | None:
    """The bearer token of ``token_file``; StartupError with one line if it is
    missing, empty, or readable by group or others (it is a secret)."""
    path = config.token_file
    if not path:
        return None
    what = f"input {config.name}: token_file {path}"
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            token = file.read(4096).strip()
    except OSError as exc:
        raise StartupError(f"{what}: cannot read it: {exc.strerror}") from None
    if mode & 0o077:
        raise StartupError(
            f"{what} is readable by group or others (mode {mode & 0o777:03o}); "
            f"it holds a secret: chmod 600 it"
        )
    if not token or b"\n" in token:
        raise StartupError(f"{what}: must hold one token on one line")
    return token


class HttpInput(TcpInput):
    """An http:// or https:// listener: :class:`TcpInput`'s accept loop, h11 per connection."""

    def __init__(self, config: InputConfig, router: Router, counters: Counters) -> None:
        super().__init__(config, router, counters)
        self.token: bytes | None = None
        self._refused_log = LogLimit(REFUSED_LOG_INTERVAL, "requests refused this way")

    async def open(self) -> None:
        self.token = read_token(self.config)  # before binding: a bad file refuses the start
        await super().open()

    async def _session(
        self, stream: trio.SocketStream | ByteStream, connection: Connection
    ) -> None:
        conn = _Server()
        while await self._exchange(conn, stream, connection):
            if self.stopping.is_set():
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:  # not both done: close
                break
            conn.deadline = math.inf
        if conn.their_state is h11.SEND_BODY:  # answered before its body was read
            await _linger(stream, self.config.max_body_bytes)

    async def _exchange(
        self, conn: _Server, stream: trio.SocketStream | ByteStream, connection: Connection
    ) -> bool:
        """One request and its answer; False when the connection is to close."""
        try:
            request = await self._event(conn, stream, connection)
            if not isinstance(request, h11.Request):
                return False  # closed (or stopping) between requests
            answer = self._check(request)
            if answer is None:
                answer = await self._body(conn, stream, connection, request)
        except h11.RemoteProtocolError as exc:
            self.counters.add("protocol_errors")
            self._refused(connection.peer, "protocol", f"not HTTP/1.1 as it should be: {exc}")
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            answer = Answer(status, f"bad HTTP request: {exc}", close=True)
        except _Timeout:
            self.counters.add("request_timeouts")
            self._refused(
                connection.peer, "timeout", f"request not sent whole in {REQUEST_TIMEOUT:g} s"
            )
            answer = Answer(408, "request timeout", close=True)
        if answer is _GONE:
            return False
        await self._answer(conn, stream, answer)
        return not answer.close and conn.our_state is h11.DONE

    def _check(self, request: h11.Request) -> Answer | None:
        """The answer to a request refused on its headers alone, or None."""
        config = self.config
        target = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        if target != config.path:
            return Answer(404, f"no such path; POST to {config.path}", close=True)
        if request.method != b"POST":
            return Answer(405, "only POST", ((b"allow", b"POST"),), close=True)
        headers = dict(request.headers)  # h11 gives names lowercased
        if self.token is not None and not _authorized(headers.get(b"authorization"), self.token):
            self.counters.add("unauthorized")
            return Answer(
                401, "a bearer token is required", ((b"www-authenticate", b"Bearer"),), close=True
            )
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding not in (b"identity", b"gzip"):
            return Answer(415, "Content-Encoding must be gzip or identity", close=True)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            return self._too_large(close=True)
        return None

    async def _body(
        self,
        conn: _Server,
        stream: trio.SocketStream | ByteStream,
        connection: Connection,
        request: h11.Request,
    ) -> Answer:
        """Read the body, decode it, queue it: the answer."""
        if conn.they_are_waiting_for_100_continue:  # curl asks for bodies over 1 MiB
            go_on = h11.InformationalResponse(status_code=100, headers=[])
            await self._send(stream, conn.send(go_on))
        limit = self.config.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._event(conn, stream, connection)
            if isinstance(event, h11.EndOfMessage):
                break
            if not isinstance(event, h11.Data):
                return _GONE  # closed in the middle: nothing was queued
            size += len(event.data)
            if size > limit:  # chunked, no Content-Length to refuse it on
                return self._too_large(close=True)
            chunks.append(bytes(event.data))
        body = b"".join(chunks)
        headers = dict(request.headers)
        try:
            if headers.get(b"content-encoding", b"").lower() == b"gzip":
                body = inflate(body, limit)
            messages = decode_body(body)
        except BodyTooLarge:
            return self._too_large()
        except ParseError as exc:
            self.counters.add("bad_requests")
            self._refused(connection.peer, "bad", f"refused a request: {exc}")
            return Answer(400, str(exc))
        return await self._queue(messages, connection.peer)

    async def _queue(self, messages: list[bytes], peer: str) -> Answer:
        """Queue the request's records as one batch, all or nothing."""
        if messages and max(map(len, messages)) > self.config.max_message_size:
            messages = self._limit(messages)
        if not messages:
            return Answer(200, "0 records accepted")
        batch = Batch(messages, received=time.time(), peer=peer, input=self.config.name)
        full = self.router.refusing(batch)
        if full:
            self.counters.add("refused_full")
            self._refused(
                peer, "full", f"answered 429: the spool of {', '.join(full)} is full", logging.INFO
            )
            return Answer(
                429,
                f"queue full (output {', '.join(full)}); retry later",
                ((b"retry-after", str(RETRY_AFTER).encode()),),
            )
        self.counters.add("received", len(messages))
        self.counters.add("bytes", batch.nbytes)
        if self.limit is not None:
            limited = await self._limited(batch, self.limit)
            if limited is None:  # dropped by the rate limit, counted there
                return Answer(200, f"{len(messages)} records handled (rate limit)")
            batch = limited
        try:
            with trio.move_on_after(QUEUE_WAIT):
                # keep_if_cancelled: a put cut off by this wait (or the stop)
                # leaves the batch in every spool, past its budget: never half-queued.
                await self.router.put(batch, keep_if_cancelled=True)
            await self.router.wait_durable()  # fsync durability: on disk before the 200
        except trio.Cancelled:
            self.counters.add("kept_at_stop", len(batch))
            raise
        self.counters.add("accepted_requests")
        return Answer(200, f"{len(messages)} records accepted")

    def _limit(self, messages: list[bytes]) -> list[bytes]:
        """``max_message_size`` and ``oversize``, as the other inputs apply them."""
        kept, long = limit_frames(messages, self.config.max_message_size, self.config.oversize)
        dropping = self.config.oversize is OversizePolicy.DROP
        self.counters.add("dropped_oversize" if dropping else "truncated", long)
        return kept

    def _too_large(self, *, close: bool = False) -> Answer:
        self.counters.add("too_large")
        return Answer(
            413, f"body over max_body_bytes ({self.config.max_body_bytes} bytes)", close=close
        )

    async def _event(
        self,
        conn: _Server,
        stream: trio.SocketStream | ByteStream,
        connection: Connection,
    ) -> object:
        """The next h11 event, reading as needed; ``h11.ConnectionClosed`` at the
        end (EOF, idle, stop); _Timeout once REQUEST_TIMEOUT has passed since
        the request's first byte (before it, idle_timeout applies)."""
        while True:
            event = conn.next()
            if event is not h11.NEED_DATA:
                return event
            if conn.their_state is h11.IDLE and (self.stopping.is_set() or connection.closing):
                return h11.ConnectionClosed()  # between requests: close now
            if conn.deadline == math.inf and conn.started():
                conn.deadline = trio.current_time() + REQUEST_TIMEOUT
            with trio.CancelScope(deadline=conn.deadline) as scope:
                data = await self._read(stream, connection)
            if scope.cancelled_caught:
                raise _Timeout
            conn.feed(data)

    async def _answer(
        self, conn: _Server, stream: trio.SocketStream | ByteStream, answer: Answer
    ) -> None:
        """Send ``answer`` if the connection can still take one."""
        self.counters.add("requests")
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"status": answer.status, "message": answer.text}).encode() + b"\n"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"server", SERVER),
            *answer.headers,
        ]
        if answer.close or self.stopping.is_set():
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(answer.status).phrase.encode()
            response = h11.Response(status_code=answer.status, headers=headers, reason=reason)
            data = conn.send(response)
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return  # e.g. an HTTP/1.0 client's state h11 will not answer in
        await self._send(stream, data)

    async def _send(self, stream: trio.SocketStream | ByteStream, data: bytes | None) -> None:
        if not data:
            return
        with (
            trio.move_on_after(SEND_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.send_all(data)

    def _refused(self, peer: str, kind: str, text: str, level: int = logging.WARNING) -> None:
        self._refused_log.log(
            log,
            level,
            kind,
            f"input {self.config.name}: {peer}: {text}",
            trio.current_time(),
        )


class _Server(h11.Connection):
    """h11's server side, given at most MAX_HEADER_BYTES at a time while it
    reads a request's head: its max_incomplete_event_size looks only at what
    is incomplete, so a 100 KiB head that came in one read would pass whole."""

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.unfed = b""
        self.ended = False  # EOF read, to be given once all before it is
        # When the request being read must be whole (REQUEST_TIMEOUT after its
        # first byte); inf until a byte of it came.
        self.deadline = math.inf

    def started(self) -> bool:
        """Whether a byte of the next (or current) request has come."""
        return bool(self.unfed or self.trailing_data[0]) or self.their_state is not h11.IDLE

    def feed(self, data: bytes) -> None:
        if data:
            self.unfed += data
        else:
            self.ended = True

    def next(self) -> object:
        """The next event, as ``next_event``, once what was fed is given to h11."""
        while True:
            event = self.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.unfed:
                size = MAX_HEADER_BYTES if self.their_state is h11.IDLE else len(self.unfed)
                self.receive_data(self.unfed[:size])
                self.unfed = self.unfed[size:]
            elif self.ended and self.their_state is not h11.CLOSED:
                self.ended = False
                self.receive_data(b"")
            else:
                return event


class _Timeout(Exception):
    """A request was not sent whole in time."""


# A connection closed in the middle of a request: nothing to answer.
_GONE = Answer(0, "", close=True)


async def _linger(stream: trio.SocketStream | ByteStream, limit: int) -> None:
    """Read and drop what the client still sends, for LINGER_TIME and ``limit``
    bytes at most."""
    taken = 0
    with (
        trio.move_on_after(LINGER_TIME),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        while taken < limit and (data := await stream.receive_some(64 * 1024)):
            taken += len(data)


def _authorized(header: bytes | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>`` (RFC 6750 2.1), compared in constant time."""
    if header is None:
        return False
    scheme, _, credentials = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), token)

"""RELP output: syslog to rsyslog imrelp (or any RELP server), plain TCP.

Unlike plain TCP, RELP says when a message is safe: the server answers each
with an ``rsp``. A written batch stays at the head of the spool, in flight
(see :mod:`relay.outputs.window`), until every one of its messages is answered;
:meth:`RelpOutput.confirm` acks the head batches that are, in order. At most
``window`` messages are unanswered (:class:`RelpClient`); a batch bigger than
the room left is sent in parts as the answers come in. A reader task receives
the answers and wakes the writer.

When the connection is lost (or the server sends ``serverclose``), everything
unanswered is forgotten and written again from the head of the spool on a new
session, in order, with new txnrs (as librelp does): at-least-once, the
duplicates bounded by the window and counted as ``resent``.

A message the server refuses (a non-200 ``rsp``, e.g. imrelp's for a message it
cannot take) is not sent again: resending would fail the same way forever and
hold up everything behind it. It counts as answered for its batch, and is
counted in ``rejected`` (and ``dropped_rejected`` once its batch is acked); the
first refusal of each kind is logged.

A host name is looked up at every connect (``trio.open_tcp_stream``).
"""

from __future__ import annotations

import logging
from collections import Counter
from itertools import repeat
from typing import Any

import trio

from relay.message import Batch
from relay.outputs.delivery import COUNTERS as BASE_COUNTERS
from relay.outputs.delivery import RETRYABLE, Output
from relay.outputs.window import Flight, WindowLost
from relay.protocol.framing import OversizePolicy, limit_frames
from relay.protocol.relp import (
    Acked,
    Closed,
    ConnectionClosed,
    Opened,
    ProtocolViolation,
    Rejected,
    RelpClient,
    ServerClosed,
)
from relay.tls.stream import ByteStream, late_failure
from relay.tls.stream import aclose as tls_aclose

log = logging.getLogger("relay.output")

# A connect that takes longer than this is a failure to retry (with back-off).
CONNECT_TIMEOUT = 10.0
# The server's answer to ``open``: imrelp answers at once; a server that does
# not within this long is not speaking RELP to us.
OPEN_TIMEOUT = 10.0
# With the window full, a server that answers nothing for this long (or does
# not read what we write) is hung: the session is dropped and its window
# written again on a new one.
ACK_TIMEOUT = 60.0
# At stop, how long to wait for the answer to ``close`` (and those before it).
CLOSE_TIMEOUT = 1.0
RECV_SIZE = 64 * 1024

COUNTERS = (*BASE_COUNTERS, "rejected", "dropped_rejected")


class SessionLost(ConnectionError):
    """The RELP session ended while messages were in flight."""


class _Session:
    """A connection with its RELP client; ``lost`` says why it ended ("" while open)."""

    def __init__(self, stream: trio.SocketStream | ByteStream, client: RelpClient) -> None:
        self.stream = stream
        self.client = client
        self.lost = ""
        self.closed = False  # the server answered our close
        self.reader: trio.CancelScope | None = None
        self.reader_done = trio.Event()


class RelpOutput(Output):
    COUNTERS = COUNTERS

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._session: _Session | None = None
        # Each batch is a flight of its own, awaiting one answer per message.
        self._by_txnr: dict[int, Flight[None]] = {}
        self._wake = trio.Event()  # set when answers came or the session ended
        self._rejections: set[tuple[int, str]] = set()  # kinds already logged

    # -- delivering ------------------------------------------------------------

    async def deliver(self, batches: list[Batch]) -> None:
        session = self._session
        if session is None or session.lost:
            if session is not None:
                await self.reset()
            session = await self._connect()
            if self.window.moved():  # lost meanwhile: the head goes first
                raise WindowLost
        client = session.client
        messages: list[bytes] = []
        owners: list[Flight[None]] = []
        now = trio.current_time()
        for batch in batches:
            # In flight at once: if sending fails halfway, the loss counts these
            # as resent too (some of them may have arrived).
            count = len(batch)
            flight = self.window.written((batch,), now, None, awaiting=count)
            messages.extend(batch.messages)
            owners.extend([flight] * count)
        if messages and max(map(len, messages)) > client.max_data:
            messages = self._truncate(messages, client.max_data)
        pos = 0
        while pos < len(messages):
            await self._wait_room(session)
            data, txnrs = client.send(messages[pos : pos + client.room()])
            self._by_txnr.update(zip(txnrs, owners[pos : pos + len(txnrs)], strict=True))
            pos += len(txnrs)
            with trio.fail_after(ACK_TIMEOUT):  # a peer that stopped reading is hung too
                await session.stream.send_all(data)

    def _truncate(self, messages: list[bytes], limit: int) -> list[bytes]:
        """RELP servers refuse frames over their maximum (imrelp ends the session)."""
        kept, long = limit_frames(messages, limit, OversizePolicy.TRUNCATE)
        self.counters.add("truncated", long)
        log.warning(
            "output %s: %d messages longer than %d octets truncated (RELP frame limit)",
            self.name,
            long,
            limit,
        )
        return kept

    async def _wait_room(self, session: _Session) -> None:
        with trio.fail_after(ACK_TIMEOUT):
            while not session.lost and session.client.room() == 0:
                self._wake = trio.Event()
                await self._wake.wait()
        if session.lost:
            raise SessionLost(session.lost)

    async def _connect(self) -> _Session:
        endpoint = self.config.endpoint
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp_stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
            stream = await self.wrap_tls(tcp_stream, endpoint)
        session = _Session(stream, RelpClient(window=self.config.window))
        try:
            await stream.send_all(session.client.open())
            with trio.fail_after(OPEN_TIMEOUT):
                await self._wait_opened(session)
        except BaseException as exc:
            late = None
            if self.config.tls is not None:
                peer = endpoint.address
                late = await late_failure(stream, exc, self.config.tls, peer)
            await tls_aclose(stream)
            if late is not None:
                raise self.tls_failed(late) from None
            raise
        self._session = session
        log.info("output %s: RELP session open to %s", self.name, endpoint.url)
        assert self._nursery is not None  # deliver() runs only inside run()
        session.reader = trio.CancelScope()
        self._nursery.start_soon(self._read, session)
        return session

    async def _wait_opened(self, session: _Session) -> None:
        while True:
            data = await session.stream.receive_some(RECV_SIZE)
            for event in session.client.receive_data(data):
                if isinstance(event, Opened):
                    return
                if isinstance(event, ProtocolViolation):
                    raise ConnectionRefusedError(f"RELP open refused: {event.text}")
                raise ConnectionResetError("server closed the RELP session before opening it")
            if not data:
                raise ConnectionResetError("server closed the connection before opening RELP")

    async def _read(self, session: _Session) -> None:
        """Take the server's answers until the session ends; wake the writer."""
        assert session.reader is not None
        try:
            with session.reader:
                while not session.lost:
                    try:
                        data = await session.stream.receive_some(RECV_SIZE)
                    except RETRYABLE as exc:
                        self._lose(session, f"connection lost: {exc.__cause__ or exc}")
                        break
                    self._handle(session, session.client.receive_data(data))
                    self._wake.set()
                    if not data:
                        self._lose(session, "server closed the connection")
        finally:
            session.reader_done.set()

    def _handle(self, session: _Session, events: list[Any]) -> None:
        by_txnr = self._by_txnr
        for event in events:
            if isinstance(event, Acked):
                # Counted per flight in C (a read answers thousands of
                # messages, of a few flights): no Python step per answer.
                answered = Counter(map(by_txnr.pop, event.txnrs, repeat(None)))
                for flight, count in answered.items():
                    if flight is not None:
                        flight.awaiting -= count
            elif isinstance(event, Rejected):
                flight = by_txnr.pop(event.txnr, None)
                if flight is not None:
                    flight.awaiting -= 1
                    flight.refused += 1
                self._rejected(event)
            elif isinstance(event, Closed):
                session.closed = True
            elif isinstance(event, ServerClosed):
                self._lose(session, "server closed the RELP session (serverclose)")
            elif isinstance(event, ProtocolViolation):
                self._lose(session, f"RELP error from the server: {event.text}")
            elif isinstance(event, ConnectionClosed):
                self._lose(session, "server closed the connection")

    def _rejected(self, event: Rejected) -> None:
        self.counters.add("rejected")
        kind = (event.code, event.text)
        if kind not in self._rejections:
            self._rejections.add(kind)
            log.warning(
                "output %s: the server refused a message: %d %s; such messages are "
                "dropped, not sent again (counted as rejected)",
                self.name,
                event.code,
                event.text,
            )

    def _lose(self, session: _Session, reason: str) -> None:
        """The session ended: forget its window; the head is written again."""
        if session.lost:
            return
        session.lost = reason
        self._wake.set()
        if session is not self._session:
            return
        self._forget_window(reason)

    def _forget_window(self, reason: str) -> None:
        """Batches not fully answered are sent again from the head of the spool;
        the answered ones before them stay, for confirm() to ack."""
        self._by_txnr.clear()
        resent = self.window.lost()
        if resent:
            log.warning(
                "output %s: %s; sending again the last %d messages not all acknowledged "
                "(the collector may see some twice)",
                self.name,
                reason,
                resent,
            )

    # -- the window ------------------------------------------------------------

    def written(self, batches: list[Batch], now: float) -> None:
        pass  # in flight since deliver() began to send them; safe once answered

    # -- closing -----------------------------------------------------------------

    async def reset(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._lose(session, session.lost or "RELP session dropped")
            if session.reader is not None:
                session.reader.cancel()
            await tls_aclose(session.stream)
        self._forget_window("RELP session dropped")

    async def aclose(self) -> None:
        """Close the session in order: ``close``, and its answer, briefly awaited."""
        session = self._session
        if session is not None and not session.lost:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                if session.reader is not None:  # one task receives at a time
                    session.reader.cancel()
                    await session.reader_done.wait()
                try:
                    await session.stream.send_all(session.client.close())
                    while not session.closed and not session.lost:
                        data = await session.stream.receive_some(RECV_SIZE)
                        self._handle(session, session.client.receive_data(data))
                        if not data:
                            break
                except RETRYABLE:
                    pass
            # What was answered meanwhile is safe; the rest stays queued (and is
            # saved), not "resent": nothing was lost.
            self.confirm(trio.current_time())
        self.window.release()
        self._by_txnr.clear()
        self._session = None
        if session is not None:
            session.lost = session.lost or "closed"
            await tls_aclose(session.stream)

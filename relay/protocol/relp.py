"""RELP sessions: the events, the state-machine table, a sans-IO client and server.

The spec is rsyslog/librelp ``doc/relp.md`` (version 0.0.1, 2008); frames and
offers are :mod:`relay.protocol.relpframe`. Where the spec is silent or
contradicts itself we do what librelp does on the wire (``src/relpsess.c``,
``copen.c``, ``scrsp.c``), because rsyslog's imrelp/omrelp are the peers that
matter:

* A connection starts with TXNR 1. The server answers every command with an
  ``rsp`` carrying its TXNR; the client may have up to a window of them
  unanswered. The spec says both "The server may reply in any order" and
  "Responses must be sent by the server in the exact same order as commands
  where received": our server answers in order, our client (like librelp's)
  takes an answer for any txnr in flight.
* ``rsp`` data is ``CODE SP TEXT [LF DATA]``; 200 is OK, the rest errors.
* The 200 rsp to ``open`` carries the offers the server accepts; librelp's
  client, like ours, refuses a server offering more than it speaks.

Both sides are state machines driven by one table, :data:`TRANSITIONS`. A
(role, state, input) missing from it is a protocol error that closes the
session: the peer's mistakes come back as a :class:`ProtocolViolation` event,
ours raise :class:`LocalProtocolError`. Nothing here reads the clock: timeouts
are the caller's. The server never acknowledges a ``syslog`` frame by itself;
the caller sends the ``rsp`` once the message is safely queued.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from typing import Generic, TypeVar

from relay.errors import LocalProtocolError
from relay.protocol.relpframe import (
    DEFAULT_MAX_DATA,
    MAX_TXNR,
    NUMBER_DIGITS,
    RELP_VERSION,
    SOFTWARE,
    Frame,
    Offers,
    RelpDecoder,
    RelpProtocolError,
    encode_offers,
    encode_parts,
    next_txnr,
    offers_syslog,
    our_offers,
    parse_offers,
    relp_version,
)

# rsyslog omrelp's default windowSize is 128 (librelp RELP_DFLT_WINDOW_SIZE).
# Two RELP hops (rsyslog omrelp -> imrelp) on loopback moved about 2,900 msg/s
# with it and 85,000 msg/s with 4096: the window, not the CPU, is the limit. 1024 is 8x
# omrelp's default while keeping small what a reconnect resends (and may
# deliver twice); raise it for long fat links.
DEFAULT_WINDOW = 1024

# A conforming client has at most its window unanswered; operators raise
# omrelp's 128 to a few thousand. More than this is a client ignoring its
# window, which the spec warns "can be abused for denial of service attacks".
DEFAULT_MAX_UNANSWERED = 65536

_MAX_RSP_TEXT = 80  # librelp's rsp reader (scrsp.c) keeps 80 octets of text
# txnrs in flight must stay unique across the wrap (open and close too)
_MAX_WINDOW = MAX_TXNR - 2


# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """Server: the client sent ``open``; answer with :meth:`RelpServer.accept_open`."""

    offers: Offers


@dataclass(frozen=True, slots=True)
class SyslogMessages:
    """Server: messages (``syslog`` commands) sent as ``txnrs``, in order;
    answer them (:meth:`RelpServer.send_ok`) once they are safely queued.

    One event for the messages of one read: an event per message cost more
    than relaying the message.
    """

    txnrs: tuple[int, ...]
    messages: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """Server: the client sent ``close``; answer earlier txnrs, then this one."""

    txnr: int


@dataclass(frozen=True, slots=True)
class Opened:
    """Client: the server accepted ``open`` with these offers; messages may flow."""

    offers: Offers


@dataclass(frozen=True, slots=True)
class Acked:
    """Client: the server took the messages sent as ``txnrs`` (rsp 200), in
    the order it answered them.

    One event for the answers of one read: a server answers every message,
    and an event per answer cost more than relaying the message.
    """

    txnrs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Client: the server refused the message sent as ``txnr`` (a non-200 rsp).

    It leaves :meth:`~RelpClient.unacked`: retrying or dead-lettering is the caller's choice.
    """

    txnr: int
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Closed:
    """Client: the server answered our ``close``; the session is over."""


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """Client: the server sent the ``serverclose`` hint; resend :meth:`~RelpClient.unacked`."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Either side: the stream ended before the session was closed."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Either side: the peer broke RELP; the session is CLOSED.

    A server sends :func:`violation_reply` and closes the connection ("the
    peer that detects the problem closes the underlying (TCP) connection");
    ``txnr`` is the command to answer, if any. A client just closes.
    """

    rsp_code: int
    text: str
    txnr: int | None = None


# what each side's receive_data returns, besides ConnectionClosed and ProtocolViolation
ServerEvent = SessionOpened | SyslogMessages | CloseRequested
ClientEvent = Opened | Acked | Rejected | Closed | ServerClosed


# -- the state machines ------------------------------------------------------


class Role(enum.StrEnum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.StrEnum):
    IDLE = "idle"  # no open yet
    OPENING = "opening"  # open sent (client) / received and not yet answered (server)
    OPEN = "open"  # messages flow
    CLOSING = "closing"  # close sent (client) / received and not yet answered (server)
    CLOSED = "closed"  # nothing more may be sent; the connection is to be closed


class Input(enum.StrEnum):  # str's C hash: the table is on the hot path
    """What can happen to a session: a frame received, or something we send."""

    RECV_OPEN = "'open' command"
    RECV_SYSLOG = "'syslog' command"
    RECV_CLOSE = "'close' command"
    RECV_RSP = "'rsp' from a client"
    RECV_RSP_OPEN = "'rsp' to 'open'"
    RECV_RSP_SYSLOG = "'rsp' to 'syslog'"
    RECV_RSP_CLOSE = "'rsp' to 'close'"
    RECV_RSP_UNKNOWN = "'rsp' for a txnr not in flight"
    RECV_SERVERCLOSE = "'serverclose' hint"
    RECV_UNKNOWN = "unknown command"  # or a command a server sent
    RECV_EOF = "end of stream"
    SEND_OPEN = "send 'open'"
    SEND_ACCEPT_OPEN = "accept 'open'"
    SEND_SYSLOG = "send 'syslog'"
    SEND_RSP = "answer 'syslog'"
    SEND_CLOSE = "send 'close'"
    SEND_CLOSE_RSP = "answer 'close'"
    SEND_SERVERCLOSE = "send 'serverclose'"

    @property
    def local(self) -> bool:
        return self.name.startswith("SEND_")


_C, _S = Role.CLIENT, Role.SERVER
_IDLE, _OPENING, _OPEN, _CLOSING, _CLOSED = State

#: (role, state, input) -> next state; the spec's "STATE DIAGRAMS" (Session
#: Startup, Message Transmission, Session Termination) plus the hint and EOF.
TRANSITIONS: dict[tuple[Role, State, Input], State] = {
    (_S, _IDLE, Input.RECV_OPEN): _OPENING,
    (_S, _OPENING, Input.SEND_ACCEPT_OPEN): _OPEN,
    (_S, _OPEN, Input.RECV_SYSLOG): _OPEN,
    (_S, _OPEN, Input.SEND_RSP): _OPEN,
    (_S, _OPEN, Input.RECV_CLOSE): _CLOSING,
    (_S, _CLOSING, Input.SEND_RSP): _CLOSING,  # rsps owed from before the close
    (_S, _CLOSING, Input.SEND_CLOSE_RSP): _CLOSED,
    (_C, _IDLE, Input.SEND_OPEN): _OPENING,
    (_C, _OPENING, Input.RECV_RSP_OPEN): _OPEN,
    (_C, _OPEN, Input.SEND_SYSLOG): _OPEN,
    (_C, _OPEN, Input.RECV_RSP_SYSLOG): _OPEN,
    (_C, _OPEN, Input.SEND_CLOSE): _CLOSING,
    (_C, _CLOSING, Input.RECV_RSP_SYSLOG): _CLOSING,
    (_C, _CLOSING, Input.RECV_RSP_CLOSE): _CLOSED,
    # a server may hint at any time; librelp's also does after answering close
    **{(_S, state, Input.SEND_SERVERCLOSE): _CLOSED for state in State},
    **{(_C, state, Input.RECV_SERVERCLOSE): _CLOSED for state in State},
    **{(role, state, Input.RECV_EOF): _CLOSED for role in Role for state in State},
}


class StateMachine:
    """One side of a session, moved only through :data:`TRANSITIONS`."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.IDLE

    def process(self, what: Input, *, txnr: int | None = None) -> State:
        """Move on ``what``; a missing entry closes the session and raises.

        ``LocalProtocolError`` for our own inputs, :class:`RelpProtocolError`
        (answering ``txnr``) for the peer's.
        """
        new = TRANSITIONS.get((self.role, self.state, what))
        if new is None:
            was, self.state = self.state, State.CLOSED
            if what.local:
                raise LocalProtocolError(f"cannot {what.value} in RELP state {was.value}")
            raise RelpProtocolError(f"{what.value} not allowed in state {was.value}", txnr=txnr)
        self.state = new
        return new


def _rsp_data(code: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    if not 100 <= code <= 999 or b"\n" in raw or len(raw) > _MAX_RSP_TEXT:
        raise LocalProtocolError("rsp needs a 3-digit code and at most 80 octets of text, no LF")
    return b"%d %s" % (code, raw)  # RSPDATA = STATUS SP HUMAN-TEXT [LF DATA]


def _parse_rsp(data: bytes) -> tuple[int, str, bytes]:
    """``(code, text, data)`` of an rsp's data part (scrsp.c's readRspHdr)."""
    head, _, body = data.partition(b"\n")
    code, sp, text = head[:3], head[3:4], head[4:]
    if len(code) != 3 or not code.isdigit() or sp not in (b" ", b""):
        raise RelpProtocolError(f"malformed rsp {bytes(data[:40])!r}")
    return int(code), text.decode("utf-8", "replace"), body


# The only hint the spec defines, always with txnr 0 and no data.
SERVERCLOSE = b"0 serverclose 0\n"


def violation_reply(violation: ProtocolViolation) -> bytes:
    """A server's last words after ``violation``: the error rsp if one is owed, then serverclose."""
    out = b""
    if violation.txnr is not None:
        text = violation.text.replace("\n", " ").encode("utf-8")[:_MAX_RSP_TEXT]
        out = encode_parts(violation.txnr, b"rsp", b"%d %s" % (violation.rsp_code, text))
    return out + SERVERCLOSE


_E = TypeVar("_E")


class _Endpoint(Generic[_E]):
    """What client and server share: the decoder, the machine, failing."""

    def __init__(self, role: Role, max_data: int) -> None:
        self._machine = StateMachine(role)
        self._decoder = RelpDecoder(max_data=max_data)
        self._failed = False
        # Frames read after one that must be answered first, and whether the
        # stream ended after them: see resume().
        self._held: tuple[list[Frame], bool] | None = None

    @property
    def state(self) -> State:
        """Where the session is; CLOSED means the connection is to be closed."""
        return self._machine.state

    def receive_data(self, data: bytes) -> list[_E | ProtocolViolation | ConnectionClosed]:
        """Take the peer's next bytes (``b""`` at EOF); return what they meant.

        A protocol error ends the list with a :class:`ProtocolViolation`; the
        session is then CLOSED and more data raises ``LocalProtocolError``.
        """
        if self._failed:
            if data:
                raise LocalProtocolError("RELP session failed; close the connection")
            return []
        if self._held is not None:
            raise LocalProtocolError("answer the open first (accept_open, then resume)")
        return self._process(data, eof=not data)

    def _process(
        self, data: bytes, *, eof: bool, held: list[Frame] | None = None
    ) -> list[_E | ProtocolViolation | ConnectionClosed]:
        """The events of ``data`` fed to the decoder, or of ``held`` frames."""
        events: list[_E | ProtocolViolation | ConnectionClosed] = []
        try:
            frames = self._decoder.receive_data(data) if held is None else held
            for i, frame in enumerate(frames):
                event = self._handle(frame)
                if event is not None:
                    events.append(event)
                if self._must_answer_first():
                    # What came after it waits for resume(): the rest of this
                    # read's frames, a malformed one and the end of the stream.
                    rest = frames[i + 1 :]
                    if rest or eof or self._decoder.error is not None:
                        self._held = (rest, eof)
                    return events
            if self._decoder.error is not None:
                raise self._decoder.error
        except RelpProtocolError as exc:
            self._machine.state = State.CLOSED
            self._failed = True
            self._on_fail()
            txnr = exc.txnr if self._machine.role is Role.SERVER else None  # clients never answer
            events.append(ProtocolViolation(exc.rsp_code, str(exc), txnr))
            return events
        if eof:
            was = self._machine.state
            self._machine.process(Input.RECV_EOF)
            if was is not State.CLOSED:
                events.append(ConnectionClosed())
        return events

    def resume(self) -> list[_E | ProtocolViolation | ConnectionClosed]:
        """The events of what came after a command that had to be answered
        first (a server's ``open``), in the same read; call it once answered."""
        if self._held is None:
            return []
        frames, eof = self._held
        self._held = None
        return self._process(b"", eof=eof, held=frames)

    def _must_answer_first(self) -> bool:
        """Whether the last frame must be answered before the next is read."""
        return False

    def _handle(self, frame: Frame) -> _E | None:
        raise NotImplementedError

    def _on_fail(self) -> None:
        """Forget what the failed session owed."""


_SERVER_INPUTS = {
    "open": Input.RECV_OPEN,
    "syslog": Input.RECV_SYSLOG,
    "close": Input.RECV_CLOSE,
    "rsp": Input.RECV_RSP,
    "serverclose": Input.RECV_SERVERCLOSE,
}


class RelpServer(_Endpoint[ServerEvent]):
    """One RELP session at the server (imrelp's side), sans-IO.

    Feed reads to :meth:`receive_data`; send what :meth:`accept_open`,
    :meth:`send_rsp` and :meth:`server_close` return. A read that holds the
    ``open`` and more stops at the open: answer it, then :meth:`resume`. Answers go out in the
    order the commands came (spec, "Responses must be sent by the server in
    the exact same order as commands where received").
    """

    def __init__(
        self,
        *,
        max_data: int = DEFAULT_MAX_DATA,
        max_unanswered: int = DEFAULT_MAX_UNANSWERED,
        software: Sequence[str] = SOFTWARE,
    ) -> None:
        if max_unanswered < 1:
            raise ValueError("max_unanswered must be positive")
        super().__init__(Role.SERVER, max_data)
        self.max_unanswered = max_unanswered
        self._offers = our_offers(software)
        encode_offers(self._offers)  # fail now, not at the first client
        self._expect = 1  # "A RELP connection start with TXNR 1"
        self._open_txnr = 0
        self._owed: deque[tuple[int, Input]] = deque()  # (txnr, SEND_RSP | SEND_CLOSE_RSP)

    def unanswered(self) -> list[int]:
        """Txnrs of syslog/close commands still owed an rsp, in the order owed."""
        return [txnr for txnr, _ in self._owed]

    def _handle(self, frame: Frame) -> ServerEvent:
        txnr = frame.txnr
        if txnr:  # hints are outside the sequence (relpframe.c)
            if txnr != self._expect:
                raise RelpProtocolError(f"txnr {txnr} out of sequence, expected {self._expect}")
            self._expect = next_txnr(txnr)
        what = _SERVER_INPUTS.get(frame.command, Input.RECV_UNKNOWN)
        answerable = what not in (Input.RECV_RSP, Input.RECV_SERVERCLOSE)
        try:
            self._machine.process(what, txnr=txnr if answerable else None)
        except RelpProtocolError as exc:
            if what is Input.RECV_UNKNOWN:
                raise RelpProtocolError(f"unknown command {frame.command!r}", txnr=txnr) from exc
            raise
        if what is Input.RECV_SYSLOG:
            if len(self._owed) >= self.max_unanswered:
                raise RelpProtocolError(f"client exceeds {self.max_unanswered} unanswered frames")
            self._owed.append((txnr, Input.SEND_RSP))
            return SyslogMessages((txnr,), (frame.data,))
        if what is Input.RECV_CLOSE:
            self._owed.append((txnr, Input.SEND_CLOSE_RSP))
            return CloseRequested(txnr)
        offers = parse_offers(frame.data)  # RECV_OPEN: the only other entry
        if relp_version(offers) is None:  # "at a minimum the relp_version offer"
            raise RelpProtocolError("open without a valid relp_version offer", txnr=txnr)
        if not offers_syslog(offers):
            raise RelpProtocolError("required command not supported by client", txnr=txnr)
        self._open_txnr = txnr
        return SessionOpened(offers)

    def receive_data(self, data: bytes) -> list[ServerEvent | ProtocolViolation | ConnectionClosed]:
        """As :meth:`_Endpoint.receive_data`; a run of well-formed ``syslog``
        commands in sequence, the bulk of what a client sends, is read on a
        fast path (:meth:`_scan_syslog`) and becomes one :class:`SyslogMessages`."""
        decoder = self._decoder
        if (
            not data
            or self._failed
            or decoder.error is not None
            or self.state is not State.OPEN
            or self._held is not None
        ):
            return super().receive_data(data)
        data = decoder.take_buffered() + data
        txnrs, messages, pos = self._scan_syslog(data)
        events: list[ServerEvent | ProtocolViolation | ConnectionClosed] = []
        if txnrs:
            # The table's own transition for each of them, a loop onto OPEN.
            self._machine.process(Input.RECV_SYSLOG, txnr=txnrs[-1])
            events.append(SyslogMessages(tuple(txnrs), tuple(messages)))
        if pos < len(data):
            events = _merge_messages([*events, *super().receive_data(data[pos:])])
        return events

    def _scan_syslog(self, data: bytes) -> tuple[list[int], list[bytes], int]:
        """The ``TXNR syslog DATALEN DATA LF`` frames (DATALEN > 0, txnrs in
        sequence, within limits) at the start of ``data``, now owed an answer,
        and where the first other frame, or an unfinished one, starts."""
        txnrs: list[int] = []
        messages: list[bytes] = []
        expect = self._expect
        max_data = self._decoder.max_data
        room = self.max_unanswered - len(self._owed)
        pos = 0
        end = len(data)
        find = data.find
        startswith = data.startswith
        lengths = _DATALENS
        while pos < end and len(txnrs) < room:
            # The txnr owed next, as the client must send it (no leading
            # zeros: anything else is for the general path): one compare
            # in place of a search, a slice and a conversion.
            head = b"%d syslog " % expect
            if not startswith(head, pos):
                break
            start = pos + len(head)
            sp = find(b" ", start, start + NUMBER_DIGITS + 1)
            if sp < 0:
                break  # DATALEN 0 (no SP), or not a number: the general path
            field = data[start:sp]
            size = lengths.get(field, 0)
            if not size:
                if not field.isdigit():
                    break
                size = int(field)
                if size and len(lengths) < _MAX_DATALENS:
                    lengths[field] = size
            stop = sp + 1 + size
            if not 0 < size <= max_data or stop >= end or data[stop] != 0x0A:
                break  # unfinished, or wrong: the general path says which
            txnrs.append(expect)
            messages.append(data[sp + 1 : stop])
            expect = 1 if expect >= MAX_TXNR else expect + 1
            pos = stop + 1
        if txnrs:
            self._expect = expect
            self._owed.extend(zip(txnrs, repeat(Input.SEND_RSP)))
        return txnrs, messages, pos

    def _on_fail(self) -> None:
        self._owed.clear()

    def resume(self) -> list[ServerEvent | ProtocolViolation | ConnectionClosed]:
        """As :meth:`_Endpoint.resume`, the messages as one event."""
        return _merge_messages(super().resume())

    def _must_answer_first(self) -> bool:
        # A client may send messages right behind its open, in one write
        # (imrelp takes them): they are read once the open is answered.
        return self._machine.state is State.OPENING

    def accept_open(self) -> bytes:
        """The 200 rsp to ``open`` with our offers; the session is then OPEN.
        Then :meth:`resume` gives what the client sent after its open."""
        self._machine.process(Input.SEND_ACCEPT_OPEN)
        return encode_parts(self._open_txnr, b"rsp", b"200 OK\n" + encode_offers(self._offers))

    def send_rsp(self, txnr: int, code: int = 200, text: str = "OK") -> bytes:
        """Answer the oldest unanswered ``syslog`` or ``close`` command, ``txnr``.

        Answering ``close`` ends the session (CLOSED). A txnr that is not the
        next one owed raises ``LocalProtocolError`` and changes nothing.
        """
        if not self._owed or self._owed[0][0] != txnr:
            owed = self._owed[0][0] if self._owed else None
            raise LocalProtocolError(f"rsp for txnr {txnr}, but the next one owed is {owed}")
        data = _rsp_data(code, text)
        self._machine.process(self._owed[0][1])
        self._owed.popleft()
        return encode_parts(txnr, b"rsp", data)

    def send_ok(self, txnrs: Sequence[int]) -> bytes:
        """``200 OK`` to the next ``syslog`` commands owed, ``txnrs``, in one
        buffer. Raises ``LocalProtocolError`` (changing nothing) unless they
        are the next ones owed, in order, and none is a ``close``."""
        owed = self._owed
        count = len(txnrs)
        if count > len(owed):
            raise LocalProtocolError(f"{count} rsps, but {len(owed)} are owed")
        # Checked and answered for the whole read at once (C loops, no
        # Python step per message); the loop below only names the mismatch.
        if list(islice(owed, count)) != list(zip(txnrs, repeat(Input.SEND_RSP))):
            for i, txnr in enumerate(txnrs):
                if owed[i] != (txnr, Input.SEND_RSP):
                    raise LocalProtocolError(
                        f"rsp 200 for txnr {txnr}, but the one owed is {owed[i][0]} "
                        f"({owed[i][1].value})"
                    )
        if not txnrs:
            return b""
        self._machine.process(Input.SEND_RSP)  # a loop onto OPEN or CLOSING
        if count == len(owed):
            owed.clear()
        else:
            self._owed = deque(islice(owed, count, None))
        parts = [_ACK_TAIL] * (2 * count)
        parts[0::2] = map(_DECIMAL, txnrs)
        return b"".join(parts)

    def server_close(self) -> bytes:
        """The ``serverclose`` hint, sent before the server closes the connection."""
        self._machine.process(Input.SEND_SERVERCLOSE)
        self._owed.clear()
        return SERVERCLOSE


class RelpClient(_Endpoint[ClientEvent]):
    """One RELP session at the client (omrelp's side), sans-IO.

    ``open()``, wait for :class:`Opened`, then ``send()`` while ``room()``;
    each message ends as :class:`Acked` or :class:`Rejected`. After the
    connection breaks, :meth:`unacked` lists what a new client on a new
    connection must send again, in order (new txnrs, as librelp's
    ``relpSessTryReestablish`` does).
    """

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_data: int = DEFAULT_MAX_DATA,
        software: Sequence[str] = SOFTWARE,
    ) -> None:
        if not 1 <= window <= _MAX_WINDOW:
            raise ValueError("window must be between 1 and 999,999,997")
        self.window = window
        self.max_data = max_data
        super().__init__(Role.CLIENT, DEFAULT_MAX_DATA)
        self._offers = encode_offers(our_offers(software))
        self._next = 1  # "A RELP connection start with TXNR 1"
        self._open_txnr = 0  # 0: none in flight
        self._close_txnr = 0
        self._inflight: dict[int, bytes] = {}  # syslog txnr -> message, in send order

    def room(self) -> int:
        """How many messages :meth:`send` takes now."""
        if self._machine.state is not State.OPEN:
            return 0
        return self.window - len(self._inflight)

    def unacked(self) -> list[tuple[int, bytes]]:
        """``(txnr, message)`` sent but not answered, in the order sent."""
        return list(self._inflight.items())

    def _take_txnr(self) -> int:
        txnr = self._next
        self._next = next_txnr(txnr)
        return txnr

    def open(self) -> bytes:
        """The ``open`` command with our offers."""
        self._machine.process(Input.SEND_OPEN)
        self._open_txnr = self._take_txnr()
        return encode_parts(self._open_txnr, b"open", self._offers)

    def send(self, messages: Sequence[bytes]) -> tuple[bytes, list[int]]:
        """Frame as many ``messages`` as the window allows; return bytes and txnrs.

        Raises ``LocalProtocolError`` (changing nothing) when the window is
        full or a message is longer than ``max_data``: check :meth:`room`.
        """
        if not messages:
            return b"", []
        self._machine.process(Input.SEND_SYSLOG)
        batch = messages[: self.room()]
        if not batch:
            raise LocalProtocolError(f"RELP window of {self.window} is full")
        if max(map(len, batch)) > self.max_data:
            raise LocalProtocolError(f"message longer than max_data ({self.max_data} octets)")
        txnr = self._next
        last = txnr + len(batch) - 1
        if last > MAX_TXNR or b"" in batch:  # the wrap, or an empty message (no SP)
            return self._send_each(batch)
        # One frame per message, made for the whole batch at once: the parts
        # (TXNR, " syslog DATALEN ", DATA, LF) interleaved in one list and
        # joined once, so each message is copied once. A Python loop with a
        # format per frame cost 3 times as much (callgrind, in the commit).
        txnrs = list(range(txnr, last + 1))
        count = len(batch)
        parts: list[bytes] = [_LF] * (4 * count)
        parts[0::4] = map(_DECIMAL, txnrs)
        parts[1::4] = map(_SYSLOG_HEADS.__getitem__, map(len, batch))
        parts[2::4] = batch
        self._inflight.update(zip(txnrs, batch, strict=True))
        self._next = next_txnr(last)
        return b"".join(parts), txnrs

    def _send_each(self, batch: Sequence[bytes]) -> tuple[bytes, list[int]]:
        """:meth:`send`'s frames one by one: across the txnr wrap, or with an
        empty message (``TXNR syslog 0`` has no SP before its LF)."""
        txnrs: list[int] = []
        out: list[bytes] = []
        txnr = self._next
        inflight = self._inflight
        for message in batch:
            if message:
                out.append(b"%d syslog %d %s\n" % (txnr, len(message), message))
            else:
                out.append(b"%d syslog 0\n" % txnr)
            inflight[txnr] = message
            txnrs.append(txnr)
            txnr = 1 if txnr >= MAX_TXNR else txnr + 1
        self._next = txnr
        return b"".join(out), txnrs

    def close(self) -> bytes:
        """The ``close`` command; the session ends when the server answers it."""
        self._machine.process(Input.SEND_CLOSE)
        self._close_txnr = self._take_txnr()
        return b"%d close 0\n" % self._close_txnr

    def receive_data(self, data: bytes) -> list[ClientEvent | ProtocolViolation | ConnectionClosed]:
        """As :meth:`_Endpoint.receive_data`; a run of plain ``200 OK`` answers
        to messages in flight, the bulk of what a server sends, is read on a
        fast path (:func:`_scan_acks`) and becomes one :class:`Acked`."""
        decoder = self._decoder
        if not data or self._failed or decoder.error is not None or self.state not in _ACKING:
            return super().receive_data(data)
        data = decoder.take_buffered() + data
        txnrs, pos = _scan_acks(data, self._inflight)
        events: list[ClientEvent | ProtocolViolation | ConnectionClosed] = []
        if txnrs:
            # The table's own transition for each of them, a loop onto this state.
            self._machine.process(Input.RECV_RSP_SYSLOG)
            events.append(Acked(tuple(txnrs)))
        if pos < len(data):
            events = _merge_acks([*events, *super().receive_data(data[pos:])])
        return events

    def _classify(self, frame: Frame) -> Input:
        if frame.command == "serverclose":
            return Input.RECV_SERVERCLOSE
        if frame.command != "rsp":
            return Input.RECV_UNKNOWN  # a server sends no commands
        txnr = frame.txnr
        if txnr in self._inflight:
            return Input.RECV_RSP_SYSLOG
        if txnr == self._open_txnr:
            return Input.RECV_RSP_OPEN
        if txnr == self._close_txnr:
            return Input.RECV_RSP_CLOSE
        return Input.RECV_RSP_UNKNOWN

    def _handle(self, frame: Frame) -> ClientEvent | None:
        what = self._classify(frame)
        was = self._machine.state
        try:
            self._machine.process(what)
        except RelpProtocolError as exc:
            if what is Input.RECV_RSP_UNKNOWN:
                raise RelpProtocolError(
                    f"rsp for txnr {frame.txnr}, which is not in flight"
                ) from exc
            raise
        if what is Input.RECV_RSP_SYSLOG:
            code, text, _ = _parse_rsp(frame.data)
            del self._inflight[frame.txnr]
            return Acked((frame.txnr,)) if code == 200 else Rejected(frame.txnr, code, text)
        if what is Input.RECV_RSP_OPEN:
            self._open_txnr = 0
            return self._opened(frame.data)
        if what is Input.RECV_RSP_CLOSE:
            # librelp's server answers close with an empty rsp (cclose.c)
            self._close_txnr = 0
            return Closed()
        return None if was is State.CLOSED else ServerClosed()  # RECV_SERVERCLOSE

    def _opened(self, data: bytes) -> Opened:
        code, text, body = _parse_rsp(data)
        if code != 200:
            raise RelpProtocolError(f"server refused the session: {code} {text}", rsp_code=code)
        offers = parse_offers(body)
        version = relp_version(offers)
        if version is None:  # "If it is not, the client MUST close the connection."
            raise RelpProtocolError("server sent no valid relp_version offer")
        if version > RELP_VERSION:  # relpSessCBrspOpen: RELP_RET_INCOMPAT_OFFERS
            raise RelpProtocolError(f"server speaks relp_version {version}, we {RELP_VERSION}")
        if not offers_syslog(offers):  # "this command MUST NOT be used"
            raise RelpProtocolError("server does not accept syslog")
        return Opened(offers)


_LF = b"\n"
_DECIMAL = b"%d".__mod__


class _SyslogHeads(dict[int, bytes]):
    """``b" syslog DATALEN "`` by DATALEN, made once per length seen: a
    lookup costs a fifth of formatting it per frame. Bounded: the first
    _MAX_HEADS lengths seen stay (about 100 bytes each)."""

    def __missing__(self, length: int) -> bytes:
        head = b" syslog %d " % length
        if len(self) < _MAX_HEADS:
            self[length] = head
        return head


_MAX_HEADS = 4096

# DATALEN fields already read (b"300" -> 300), for the server's fast path;
# bounded as _SyslogHeads is.
_DATALENS: dict[bytes, int] = {}
_MAX_DATALENS = 4096

_SYSLOG_HEADS = _SyslogHeads()

# Where a client takes answers to messages; in both, such an answer leaves the
# state as it is (TRANSITIONS), so a run of them is one transition.
_ACKING = frozenset({State.OPEN, State.CLOSING})
# librelp's answer to a message it took (relpSessSendResponse "200 OK").
_ACK_TAIL = b" rsp 6 200 OK\n"
_ACK_LINE = _ACK_TAIL[:-1]


def _scan_acks(data: bytes, inflight: dict[int, bytes]) -> tuple[list[int], int]:
    """The txnrs of the ``TXNR rsp 6 200 OK`` frames at the start of ``data``
    that answer messages in ``inflight`` (removed from it), and where the
    first other frame, or an unfinished one, starts."""
    # The bulk of a server's answers: nothing but such frames, each txnr in
    # flight once. When every line of ``data`` ends in the tail, they are
    # read without a Python loop per answer (a third of the instructions).
    # bytes.count runs one search for the tail; split on it would run one per
    # answer, each preparing the 14-byte needle again.
    lines = data.split(b"\n")
    rest = lines.pop()
    if lines and data.count(_ACK_TAIL) == len(lines):
        fields = list(map(bytes.removesuffix, lines, repeat(_ACK_LINE)))
        if (
            b"".join(fields).isdigit()
            and min(map(len, fields)) > 0
            and max(map(len, fields)) <= NUMBER_DIGITS
        ):
            txnrs = list(map(int, fields))
            if len(set(txnrs)) == len(txnrs) and all(map(inflight.__contains__, txnrs)):
                deque(map(inflight.pop, txnrs), maxlen=0)  # pop them all, in C
                return txnrs, len(data) - len(rest)
    return _scan_acks_each(data, inflight)


def _scan_acks_each(data: bytes, inflight: dict[int, bytes]) -> tuple[list[int], int]:
    """:func:`_scan_acks` one frame at a time: what comes before the first
    frame that is not a plain answer to a message in flight."""
    txnrs: list[int] = []
    pos = 0
    end = len(data)
    find = data.find
    startswith = data.startswith
    while pos < end:
        sp = find(b" ", pos, pos + NUMBER_DIGITS + 1)
        if sp <= pos or not startswith(_ACK_TAIL, sp):
            break
        field = data[pos:sp]
        if not field.isdigit():
            break
        txnr = int(field)
        if inflight.pop(txnr, None) is None:
            break  # not in flight: the general path says what is wrong
        txnrs.append(txnr)
        pos = sp + len(_ACK_TAIL)
    return txnrs, pos


def _merge_acks(
    events: list[ClientEvent | ProtocolViolation | ConnectionClosed],
) -> list[ClientEvent | ProtocolViolation | ConnectionClosed]:
    """``events`` with each run of :class:`Acked` made one."""
    merged: list[ClientEvent | ProtocolViolation | ConnectionClosed] = []
    run: list[int] = []
    for event in events:
        if isinstance(event, Acked):
            run.extend(event.txnrs)
            continue
        if run:
            merged.append(Acked(tuple(run)))
            run = []
        merged.append(event)
    if run:
        merged.append(Acked(tuple(run)))
    return merged


def _merge_messages(
    events: list[ServerEvent | ProtocolViolation | ConnectionClosed],
) -> list[ServerEvent | ProtocolViolation | ConnectionClosed]:
    """``events`` with each run of :class:`SyslogMessages` made one."""
    merged: list[ServerEvent | ProtocolViolation | ConnectionClosed] = []
    txnrs: list[int] = []
    messages: list[bytes] = []
    for event in events:
        if isinstance(event, SyslogMessages):
            txnrs.extend(event.txnrs)
            messages.extend(event.messages)
            continue
        if txnrs:
            merged.append(SyslogMessages(tuple(txnrs), tuple(messages)))
            txnrs, messages = [], []
        merged.append(event)
    if txnrs:
        merged.append(SyslogMessages(tuple(txnrs), tuple(messages)))
    return merged

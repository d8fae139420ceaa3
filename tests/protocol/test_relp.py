"""RELP sessions: relay/protocol/relp.py.

Spec quotes are from rsyslog/librelp ``doc/relp.md``; frames marked "librelp"
were captured from rsyslog 8.2302 / librelp 1.11.0 on loopback.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import LocalProtocolError
from relay.protocol.relp import (
    TRANSITIONS,
    Acked,
    Closed,
    CloseRequested,
    ConnectionClosed,
    Input,
    Opened,
    ProtocolViolation,
    Rejected,
    RelpClient,
    RelpServer,
    Role,
    ServerClosed,
    SessionOpened,
    State,
    StateMachine,
    SyslogMessages,
    violation_reply,
)
from relay.protocol.relpframe import MAX_TXNR, Frame, RelpProtocolError, encode_frame, parse_offers
from tests.protocol.relpwire import LIBRELP_OPEN, decode

OPEN_DATA = b"relp_version=0\ncommands=syslog"
OPEN_RSP_DATA = b"200 OK\n" + OPEN_DATA


def state_now(machine: RelpClient | RelpServer) -> State:
    """``machine.state`` read anew: mypy keeps an attribute narrowed by an
    earlier ``assert ... is State.X`` across the calls that change it."""
    return machine.state


def rsp(txnr: int, data: bytes) -> bytes:
    return encode_frame(Frame(txnr, "rsp", data))


OPEN_RSP = rsp(1, OPEN_RSP_DATA)


# -- the table -------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("what", list(Input))
def test_every_state_input_pair(role: Role, state: State, what: Input) -> None:
    """Each pair either has an entry or closes the session with an error."""
    machine = StateMachine(role)
    machine.state = state
    expected = TRANSITIONS.get((role, state, what))
    if expected is not None:
        assert machine.process(what) is expected
        assert machine.state is expected
        return
    error = LocalProtocolError if what.local else RelpProtocolError
    with pytest.raises(error):
        machine.process(what, txnr=5)
    assert machine.state is State.CLOSED


@given(st.sampled_from(Role), st.lists(st.sampled_from(Input), max_size=12))
def test_random_walks_only_follow_the_table(role: Role, walk: list[Input]) -> None:
    machine = StateMachine(role)
    for what in walk:
        before = machine.state
        try:
            machine.process(what)
        except (LocalProtocolError, RelpProtocolError):
            assert (role, before, what) not in TRANSITIONS
            assert machine.state is State.CLOSED
        else:
            assert machine.state is TRANSITIONS[role, before, what]


def test_closed_is_terminal() -> None:
    for (_, state, _), after in TRANSITIONS.items():
        if state is State.CLOSED:
            assert after is State.CLOSED


# -- server ------------------------------------------------------------------------


def open_server() -> RelpServer:
    server = RelpServer()
    assert server.receive_data(LIBRELP_OPEN) == [SessionOpened(parse_offers(LIBRELP_OPEN[10:-1]))]
    rsp = server.accept_open()
    assert rsp.startswith(b"1 rsp ") and b" 200 OK\nrelp_version=0\ncommands=syslog\n" in rsp
    assert b"\nrelp_software=relay," in rsp
    return server


def test_server_session() -> None:
    server = open_server()
    events = server.receive_data(b"2 syslog 1 a\n3 syslog 1 b\n4 close 0\n")
    assert events == [SyslogMessages((2, 3), (b"a", b"b")), CloseRequested(4)]
    assert server.state is State.CLOSING
    assert server.unanswered() == [2, 3, 4]
    # answers go out in the order the commands came, close last
    with pytest.raises(LocalProtocolError, match="next one owed is 2"):
        server.send_rsp(4)
    assert server.state is State.CLOSING  # a wrong txnr changes nothing
    assert server.send_rsp(2) == b"2 rsp 6 200 OK\n"
    assert server.send_rsp(3, 500, "queue full") == b"3 rsp 14 500 queue full\n"
    assert server.send_rsp(4) == b"4 rsp 6 200 OK\n"
    assert state_now(server) is State.CLOSED
    # as librelp does, the hint may follow the answer to close
    assert server.server_close() == b"0 serverclose 0\n"
    assert server.receive_data(b"") == []


def test_server_does_not_answer_syslog_by_itself() -> None:
    server = open_server()
    assert server.receive_data(b"2 syslog 1 a\n") == [SyslogMessages((2,), (b"a",))]
    assert server.unanswered() == [2]


@pytest.mark.parametrize(
    ("feed", "rsp_code", "text", "txnr"),
    [
        # "the connection is only ready AFTER the client has received the 'open' response"
        (b"1 syslog 1 a\n", 500, "'syslog' command not allowed in state idle", 1),
        (b"1 starttls 0\n", 500, "unknown command 'starttls'", 1),
        (b"1 open 15 commands=syslog\n", 500, "open without a valid relp_version offer", 1),
        (b"1 open 14 relp_version=0\n", 500, "required command not supported by client", 1),
        (b"2 open 0\n", 500, "txnr 2 out of sequence, expected 1", None),
        (b"0 serverclose 0\n", 500, "'serverclose' hint not allowed in state idle", None),
        (b"1 rsp 6 200 OK\n", 500, "'rsp' from a client not allowed in state idle", None),
        (b"1 syslog 3 abcd\n", 500, "missing trailer after 3 octets of data", None),
    ],
)
def test_server_violations(feed: bytes, rsp_code: int, text: str, txnr: int | None) -> None:
    server = RelpServer()
    events = server.receive_data(feed)
    assert events[-1] == ProtocolViolation(rsp_code, text, txnr)
    assert server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
    assert server.receive_data(b"") == []


def test_server_second_open_after_accept() -> None:
    server = open_server()
    events = server.receive_data(b"2 open 0\n")
    assert events == [ProtocolViolation(500, "'open' command not allowed in state open", 2)]


def test_server_reads_what_came_behind_the_open_once_it_is_answered() -> None:
    """imrelp takes an open with messages right behind it in one write: so do we."""
    server = RelpServer()
    wire = LIBRELP_OPEN + b"2 syslog 1 a\n3 syslog 1 b\n4 close 0\n"
    assert [type(e) for e in server.receive_data(wire)] == [SessionOpened]
    with pytest.raises(LocalProtocolError, match="answer the open first"):
        server.receive_data(b"5 syslog 1 c\n")
    assert server.accept_open().startswith(b"1 rsp ")
    assert server.resume() == [SyslogMessages((2, 3), (b"a", b"b")), CloseRequested(4)]
    assert server.resume() == []
    assert server.send_ok([2, 3]) == b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n"


@pytest.mark.parametrize(
    ("behind", "expected"),
    [
        (b"2 open 0\n", ProtocolViolation(500, "'open' command not allowed in state open", 2)),
        (b"2 syslog 1 aX", ProtocolViolation(500, "missing trailer after 1 octets of data")),
        (b"", ConnectionClosed()),
    ],
    ids=["second open", "malformed", "eof"],
)
def test_server_after_the_open_a_fault_or_the_end_comes_with_resume(
    behind: bytes, expected: object
) -> None:
    server = RelpServer()
    events = server.receive_data(LIBRELP_OPEN + behind)
    if not behind:  # the end of the stream comes in a read of its own
        events += server.receive_data(b"")
        assert events[-1] == expected
        return
    assert [type(e) for e in events] == [SessionOpened]
    server.accept_open()
    assert server.resume() == [expected]


def test_violation_reply() -> None:
    reply = violation_reply(ProtocolViolation(500, "'syslog' command not allowed", 1))
    assert reply == b"1 rsp 32 500 'syslog' command not allowed\n0 serverclose 0\n"
    assert violation_reply(ProtocolViolation(500, "bad frame")) == b"0 serverclose 0\n"
    long = violation_reply(ProtocolViolation(500, "x\n" * 100, 3))
    assert decode(long)[0][0] == Frame(3, "rsp", b"500 " + b"x " * 40)


def test_server_bounds_unanswered_frames() -> None:
    server = RelpServer(max_unanswered=2)
    server.receive_data(LIBRELP_OPEN)
    server.accept_open()
    events = server.receive_data(b"2 syslog 0\n3 syslog 0\n4 syslog 0\n")
    assert events[-1] == ProtocolViolation(500, "client exceeds 2 unanswered frames", None)
    assert server.unanswered() == []


def test_server_bounds_unanswered_frames_on_the_fast_path() -> None:
    server = RelpServer(max_unanswered=2)
    server.receive_data(LIBRELP_OPEN)
    server.accept_open()
    events = server.receive_data(b"2 syslog 1 a\n3 syslog 1 b\n4 syslog 1 c\n")
    assert events[0] == SyslogMessages((2, 3), (b"a", b"b"))
    assert events[-1] == ProtocolViolation(500, "client exceeds 2 unanswered frames", None)


def test_server_takes_a_run_of_messages_as_one_event() -> None:
    """What the fast path leaves to the general one (DATALEN 0 here) joins the run."""
    server = open_server()
    events = server.receive_data(b"2 syslog 1 a\n3 syslog 0\n4 syslog 2 bc\n5 close 0\n")
    assert events == [SyslogMessages((2, 3, 4), (b"a", b"", b"bc")), CloseRequested(5)]
    assert server.send_ok([2, 3, 4]) == b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 6 200 OK\n"
    assert server.unanswered() == [5]


@pytest.mark.parametrize("cut", range(1, 39))
def test_server_messages_split_anywhere_are_each_taken_once(cut: int) -> None:
    server = open_server()
    wire = b"2 syslog 3 abc\n3 syslog 3 def\n4 syslog 3 ghi\n"
    events = server.receive_data(wire[:cut]) + server.receive_data(wire[cut:])
    assert all(isinstance(e, SyslogMessages) for e in events)
    assert [m for e in events if isinstance(e, SyslogMessages) for m in e.messages] == [
        b"abc",
        b"def",
        b"ghi",
    ]
    assert server.unanswered() == [2, 3, 4]


def test_server_out_of_sequence_after_a_run() -> None:
    server = open_server()
    events = server.receive_data(b"2 syslog 1 a\n3 syslog 1 b\n5 syslog 1 c\n")
    assert events == [
        SyslogMessages((2, 3), (b"a", b"b")),
        ProtocolViolation(500, "txnr 5 out of sequence, expected 4", None),
    ]


def test_server_send_ok_answers_only_what_is_owed_in_order() -> None:
    server = open_server()
    server.receive_data(b"2 syslog 1 a\n3 syslog 1 b\n4 close 0\n")
    with pytest.raises(LocalProtocolError):
        server.send_ok([3])  # 2 comes first
    with pytest.raises(LocalProtocolError):
        server.send_ok([2, 3, 4])  # 4 is a close: send_rsp answers it
    assert server.unanswered() == [2, 3, 4]  # nothing changed
    assert server.send_ok([2, 3]) == b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n"
    server.send_rsp(4)
    assert server.state is State.CLOSED


def test_server_local_errors() -> None:
    server = RelpServer()
    with pytest.raises(LocalProtocolError):
        server.send_rsp(1)
    assert server.state is State.IDLE
    with pytest.raises(LocalProtocolError, match="accept 'open'"):
        server.accept_open()
    assert state_now(server) is State.CLOSED  # a missing entry ends the session
    server = open_server()
    server.receive_data(b"2 syslog 0\n")
    with pytest.raises(LocalProtocolError):
        server.send_rsp(2, 200, "no\nnewline")
    with pytest.raises(LocalProtocolError):
        server.send_rsp(2, 2000)
    assert server.unanswered() == [2]


def test_server_eof() -> None:
    server = open_server()
    assert server.receive_data(b"2 syslog 0\n") == [SyslogMessages((2,), (b"",))]
    assert server.receive_data(b"") == [ConnectionClosed()]
    assert server.state is State.CLOSED


# every frame a client can send, in every server state: the table or CLOSED
_SERVER_RECIPES: dict[State, Callable[[RelpServer], int]] = {
    State.IDLE: lambda s: 1,
    State.OPENING: lambda s: (s.receive_data(b"1 open 30 " + OPEN_DATA + b"\n"), 2)[1],
    State.OPEN: lambda s: (_SERVER_RECIPES[State.OPENING](s), s.accept_open(), 2)[2],
    State.CLOSING: lambda s: (
        _SERVER_RECIPES[State.OPEN](s),
        s.receive_data(b"2 syslog 0\n3 close 0\n"),
        4,
    )[2],
    State.CLOSED: lambda s: (
        _SERVER_RECIPES[State.OPEN](s),
        s.receive_data(b"2 close 0\n"),
        s.send_rsp(2),
        3,
    )[3],
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize(
    ("what", "frame"),
    [
        (Input.RECV_OPEN, b"%d open 30 " + OPEN_DATA + b"\n"),
        (Input.RECV_SYSLOG, b"%d syslog 1 x\n"),
        (Input.RECV_CLOSE, b"%d close 0\n"),
        (Input.RECV_RSP, b"%d rsp 6 200 OK\n"),
        (Input.RECV_SERVERCLOSE, b"0 serverclose 0\n"),
        (Input.RECV_UNKNOWN, b"%d starttls 0\n"),
        (Input.RECV_EOF, b""),
    ],
)
def test_server_walk(state: State, what: Input, frame: bytes) -> None:
    server = RelpServer()
    txnr = _SERVER_RECIPES[state](server)
    assert server.state is state
    events = server.receive_data(frame.replace(b"%d", b"%d" % txnr))
    expected = TRANSITIONS.get((Role.SERVER, state, what))
    violations = [e for e in events if isinstance(e, ProtocolViolation)]
    if expected is None:
        assert len(violations) == 1 and events[-1] is violations[0]
    else:
        assert violations == []
    assert server.state is (expected or State.CLOSED)


# -- client ------------------------------------------------------------------------


def open_client(window: int = 8) -> RelpClient:
    client = RelpClient(window=window)
    assert client.room() == 0
    assert client.open() == (
        b"1 open 56 relp_version=0\ncommands=syslog\nrelp_software=relay,"
        + __import__("relay").__version__.encode()
        + b"\n"
    )
    events = client.receive_data(OPEN_RSP)
    assert events == [Opened(parse_offers(OPEN_DATA))]
    assert client.state is State.OPEN
    return client


def test_client_session() -> None:
    client = open_client(window=3)
    assert client.room() == 3
    wire, sent = client.send([b"a", b"", b"c", b"d"])
    assert (wire, sent) == (b"2 syslog 1 a\n3 syslog 0\n4 syslog 1 c\n", [2, 3, 4])
    assert client.room() == 0
    with pytest.raises(LocalProtocolError, match="window of 3 is full"):
        client.send([b"d"])
    assert client.state is State.OPEN
    events = client.receive_data(b"2 rsp 6 200 OK\n3 rsp 14 500 queue full\n")
    assert events == [Acked((2,)), Rejected(3, 500, "queue full")]
    assert client.unacked() == [(4, b"c")]
    assert client.room() == 2
    assert client.close() == b"5 close 0\n"
    assert client.room() == 0
    # librelp: the rsp to close is empty, and serverclose follows it
    events = client.receive_data(b"4 rsp 6 200 OK\n5 rsp 0\n0 serverclose 0\n")
    assert events == [Acked((4,)), Closed()]
    assert state_now(client) is State.CLOSED
    assert client.receive_data(b"") == []


def test_client_refuses_oversize_message() -> None:
    client = RelpClient(max_data=4)
    client.open()
    client.receive_data(OPEN_RSP)
    with pytest.raises(LocalProtocolError, match="max_data"):
        client.send([b"1234", b"12345"])
    assert client.unacked() == []
    assert client.send([]) == (b"", [])


def test_client_local_errors() -> None:
    client = RelpClient()
    with pytest.raises(LocalProtocolError, match="send 'syslog'"):
        client.send([b"too early"])
    assert client.state is State.CLOSED
    with pytest.raises(ValueError):
        RelpClient(window=0)


@pytest.mark.parametrize(
    ("rsp", "text"),
    [
        (rsp(1, b"500 error 1 on open"), "server refused the session: 500 error 1 on open"),
        (rsp(1, b"200 OK\nrelp_version=0"), "server does not accept syslog"),
        (rsp(1, b"200 OK\ncommands=syslog"), "server sent no valid relp_version offer"),
        (
            rsp(1, b"200 OK\nrelp_version=x\ncommands=syslog"),
            "server sent no valid relp_version offer",
        ),
        (rsp(1, b"200 OK\nrelp_version=1\ncommands=syslog"), "server speaks relp_version 1, we 0"),
        (rsp(1, b"OK"), "malformed rsp b'OK'"),
        (rsp(1, b"200OK"), "malformed rsp b'200OK'"),
        (b"7 rsp 6 200 OK\n", "rsp for txnr 7, which is not in flight"),
        (b"1 syslog 1 x\n", "unknown command not allowed in state opening"),
    ],
)
def test_client_violations(rsp: bytes, text: str) -> None:
    client = RelpClient()
    client.open()
    events = client.receive_data(rsp)
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert (events[0].text, events[0].txnr) == (text, None)
    assert client.state is State.CLOSED


def test_client_rsp_for_acked_txnr_is_a_violation() -> None:
    client = open_client()
    client.send([b"a"])
    events = client.receive_data(b"2 rsp 6 200 OK\n2 rsp 6 200 OK\n")
    assert events[0] == Acked((2,))
    assert events[1] == ProtocolViolation(500, "rsp for txnr 2, which is not in flight")


def test_client_takes_a_run_of_200_answers_as_one_event() -> None:
    """librelp answers every message; a run of plain 200s read at once is one
    Acked, whatever else comes between runs keeps its own event and order."""
    client = open_client()
    client.send([b"a", b"b", b"c", b"d", b"e"])
    wire = b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 8 500 full\n5 rsp 6 200 OK\n6 rsp 6 200 OK\n"
    assert client.receive_data(wire) == [
        Acked((2, 3)),
        Rejected(4, 500, "full"),
        Acked((5, 6)),
    ]
    assert client.unacked() == []


@pytest.mark.parametrize("cut", range(1, 45))
def test_client_answers_split_anywhere_are_each_taken_once(cut: int) -> None:
    client = open_client()
    client.send([b"a", b"b", b"c"])
    wire = b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n4 rsp 6 200 OK\n"
    events = client.receive_data(wire[:cut]) + client.receive_data(wire[cut:])
    assert [t for e in events if isinstance(e, Acked) for t in e.txnrs] == [2, 3, 4]
    assert client.unacked() == []


def test_client_serverclose_and_eof_keep_unacked() -> None:
    client = open_client()
    client.send([b"a", b"b"])
    assert client.receive_data(b"2 rsp 6 200 OK\n0 serverclose 0\n") == [
        Acked((2,)),
        ServerClosed(),
    ]
    assert client.unacked() == [(3, b"b")]
    client = open_client()
    client.send([b"a"])
    assert client.receive_data(b"") == [ConnectionClosed()]
    assert client.unacked() == [(2, b"a")]


# every frame a server can send, in every client state: the table or CLOSED
_CLIENT_RECIPES: dict[State, Callable[[RelpClient], object]] = {
    State.IDLE: lambda c: None,
    State.OPENING: lambda c: c.open(),
    State.OPEN: lambda c: (c.open(), c.receive_data(OPEN_RSP)),
    State.CLOSING: lambda c: (_CLIENT_RECIPES[State.OPEN](c), c.send([b"m"]), c.close()),
    State.CLOSED: lambda c: (
        _CLIENT_RECIPES[State.OPEN](c),
        c.close(),
        c.receive_data(b"2 rsp 0\n"),
    ),
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize(
    "frame",
    [
        OPEN_RSP,  # the open's txnr
        b"2 rsp 6 200 OK\n",  # the syslog's txnr in the CLOSING recipe
        b"3 rsp 6 200 OK\n",  # the close's txnr in the CLOSING recipe
        b"99 rsp 6 200 OK\n",
        b"0 serverclose 0\n",
        b"1 syslog 1 x\n",
        b"",
    ],
)
def test_client_walk(state: State, frame: bytes) -> None:
    client = RelpClient()
    _CLIENT_RECIPES[state](client)
    assert client.state is state
    what = {
        b"1 ": Input.RECV_RSP_OPEN if state is State.OPENING else Input.RECV_RSP_UNKNOWN,
        b"2 ": Input.RECV_RSP_SYSLOG if state is State.CLOSING else Input.RECV_RSP_UNKNOWN,
        b"3 ": Input.RECV_RSP_CLOSE if state is State.CLOSING else Input.RECV_RSP_UNKNOWN,
        b"99": Input.RECV_RSP_UNKNOWN,
        b"0 ": Input.RECV_SERVERCLOSE,
        b"": Input.RECV_EOF,
    }[frame[:2]]
    if frame[2:8] == b"syslog":  # a command, which a server never sends
        what = Input.RECV_UNKNOWN
    events = client.receive_data(frame)
    expected = TRANSITIONS.get((Role.CLIENT, state, what))
    violations = [e for e in events if isinstance(e, ProtocolViolation)]
    assert (violations == []) is (expected is not None)
    assert client.state is (expected or State.CLOSED)


# -- client and server together -------------------------------------------------


class Pair:
    """A client and a server wired together in memory (h11's ConnectionPair)."""

    def __init__(self, window: int = 128) -> None:
        self.client = RelpClient(window=window)
        self.server = RelpServer()
        self.owed: list[int] = []
        self.received: list[bytes] = []

    def open(self) -> None:
        events = self.server.receive_data(self.client.open())
        assert isinstance(events[0], SessionOpened)
        events2 = self.client.receive_data(self.server.accept_open())
        assert isinstance(events2[0], Opened)

    def to_server(self, wire: bytes, cut: int) -> None:
        for part in filter(None, (wire[:cut], wire[cut:])):  # b"" would mean EOF
            for event in self.server.receive_data(part):
                assert isinstance(event, SyslogMessages), event
                self.received.extend(event.messages)
                self.owed.extend(event.txnrs)

    def ack(self, count: int) -> list[int]:
        wire = b"".join(self.server.send_rsp(txnr) for txnr in self.owed[:count])
        del self.owed[:count]
        if not wire:
            return []
        events = self.client.receive_data(wire)
        assert all(isinstance(e, Acked) for e in events)
        return [t for e in events if isinstance(e, Acked) for t in e.txnrs]


def test_pair_10000_messages_window_128() -> None:
    rnd = random.Random(5424)
    pair = Pair(window=128)
    pair.open()
    messages = [b"<13>1 - host app - - - message %d" % i for i in range(10_000)]
    sent: list[int] = []
    acked: list[int] = []
    position = 0
    while len(acked) < len(messages):
        room = pair.client.room()
        assert room == 128 - len(pair.client.unacked())
        if position < len(messages) and room:
            wire, txnrs = pair.client.send(messages[position : position + rnd.randint(1, 200)])
            position += len(txnrs)
            sent += txnrs
            pair.to_server(wire, rnd.randint(0, len(wire)))
        acked += pair.ack(rnd.randint(0 if room else 1, len(pair.owed)))
    assert pair.received == messages
    assert acked == sent == list(range(2, 10_002))
    assert pair.client.unacked() == []
    events = pair.server.receive_data(pair.client.close())
    assert events == [CloseRequested(10_002)]
    wire = pair.server.send_rsp(10_002) + pair.server.server_close()
    assert pair.client.receive_data(wire) == [Closed()]
    assert pair.client.state is pair.server.state is State.CLOSED


def test_pair_across_txnr_wrap() -> None:
    pair = Pair(window=8)
    pair.open()
    pair.client._next = pair.server._expect = MAX_TXNR - 1  # 1e9 messages in a blink
    wire, txnrs = pair.client.send([b"a", b"b", b"c", b"d"])
    assert txnrs == [MAX_TXNR - 1, MAX_TXNR, 1, 2]
    pair.to_server(wire, len(wire) // 2)
    assert pair.ack(4) == txnrs
    assert pair.received == [b"a", b"b", b"c", b"d"]


def test_resend_after_break() -> None:
    """Client 1 loses its connection with messages unacked; client 2 resends them in order."""
    first = Pair(window=16)
    first.open()
    messages = [b"m%d" % i for i in range(10)]
    wire, _ = first.client.send(messages)
    first.to_server(wire, len(wire))
    first.ack(3)
    assert first.client.receive_data(b"") == [ConnectionClosed()]  # the break
    assert first.client.unacked() == [(5 + i, b"m%d" % (3 + i)) for i in range(7)]

    second = Pair(window=16)
    second.open()
    wire, txnrs = second.client.send([data for _, data in first.client.unacked()])
    assert txnrs == list(range(2, 9))  # new txnrs, same order
    second.to_server(wire, 5)
    assert second.received == messages[3:]
    assert second.ack(7) == txnrs


@given(st.integers(1, 64), st.lists(st.binary(max_size=40), max_size=100), st.randoms())
def test_pair_any_window(window: int, messages: list[bytes], rnd: random.Random) -> None:
    pair = Pair(window=window)
    pair.open()
    position = 0
    while position < len(messages) or pair.owed:
        if position < len(messages) and pair.client.room():
            wire, txnrs = pair.client.send(messages[position:])
            assert len(txnrs) <= window
            position += len(txnrs)
            pair.to_server(wire, rnd.randint(0, len(wire)))
        pair.ack(rnd.randint(1, max(1, len(pair.owed))))
    assert pair.received == messages
    assert pair.client.unacked() == []


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=50), st.integers(0, 2))
def test_client_send_is_frame_for_frame_encode_frame(messages: list[bytes], past: int) -> None:
    """send() frames a batch at once; the bytes are those of each frame made alone,
    also up to MAX_TXNR (past 1), across the wrap (past 2) and with empty messages."""
    client = open_client(window=64)
    client._next = min(MAX_TXNR, MAX_TXNR - len(messages) + past)
    wire, txnrs = client.send(messages)
    assert wire == b"".join(
        encode_frame(Frame(txnr, "syslog", m)) for txnr, m in zip(txnrs, messages, strict=True)
    )
    assert client.unacked() == list(zip(txnrs, messages, strict=True))


@given(st.lists(st.integers(1, 12), max_size=20), st.integers(0, 60))
def test_client_answers_any_txnrs_as_one_by_one(answered: list[int], cut: int) -> None:
    """A read of plain 200 answers, some for txnrs not (or no more) in flight, and
    cut anywhere: the events are those of the answers read one by one."""
    wire = b"".join(b"%d rsp 6 200 OK\n" % txnr for txnr in answered)
    batch, single = open_client(), open_client()
    for client in (batch, single):
        client.send([b"m%d" % i for i in range(10)])  # txnrs 2..11
    events = _feed(batch, [wire[:cut], wire[cut:]])
    one_by_one = _feed(single, [wire[i : i + 1] for i in range(len(wire))])
    assert [t for e in events if isinstance(e, Acked) for t in e.txnrs] == [
        t for e in one_by_one if isinstance(e, Acked) for t in e.txnrs
    ]
    assert [e for e in events if not isinstance(e, Acked)] == [
        e for e in one_by_one if not isinstance(e, Acked)
    ]
    assert batch.unacked() == single.unacked()


def _feed(client: RelpClient, reads: list[bytes]) -> list[object]:
    """The events of ``reads`` (empty ones skipped: b"" is the end), up to a violation."""
    events: list[object] = []
    for data in reads:
        if data and not any(isinstance(e, ProtocolViolation) for e in events):
            events += client.receive_data(data)
    return events

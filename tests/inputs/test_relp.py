"""relay/inputs/relp.py over real loopback sockets, our RelpClient on the other end."""

from __future__ import annotations

import logging
import re
import socket
from typing import cast

import pytest
import trio
import trio.testing

from relay.config import Endpoint, InputConfig
from relay.inputs import relp
from relay.message import Batch
from relay.outputs import delivery
from relay.protocol.relp import (
    Acked,
    ClientEvent,
    Closed,
    ConnectionClosed,
    Opened,
    ProtocolViolation,
    RelpClient,
    RelpServer,
    ServerClosed,
)
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from relay.tls.context import TlsProfile, client_context
from relay.tls.stream import COUNTERS as TLS_COUNTERS
from tests.protocol.relpwire import decode
from tests.tlshelpers import SERVER, Pki, listener, target
from tests.waiting import await_until

Event = ClientEvent | ProtocolViolation | ConnectionClosed


async def start_input(spool: Spool, tls: TlsProfile | None = None) -> relp.RelpInput:
    scheme = "relp" if tls is None else "relp+tls"
    config = InputConfig("r", Endpoint(scheme, "127.0.0.1", 0), tls=tls)
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    names = relp.COUNTERS + (TLS_COUNTERS if tls else ())
    relp_input = relp.RelpInput(config, router, Counters("input", "r", names))
    await relp_input.open()
    return relp_input


def port_of(relp_input: relp.RelpInput) -> int:
    return int(relp_input.address.rsplit(":", 1)[1])


def queued(spool: Spool) -> list[bytes]:
    return [m for b in spool.peek(1 << 40) for m in b.messages]


def acks(events: list[Event]) -> int:
    """How many messages ``events`` acknowledge."""
    return sum(len(e.txnrs) for e in events if isinstance(e, Acked))


class Peer:
    """Our sans-IO RelpClient on a real connection."""

    def __init__(self, stream: trio.abc.Stream, window: int = 1024) -> None:
        self.stream = stream
        self.client = RelpClient(window=window)
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, port: int, window: int = 1024, rcvbuf: int = 0) -> Peer:
        """An open session; ``rcvbuf``: a receive buffer this small (a client
        that reads its answers late fills it at once)."""
        sock = trio.socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        peer = cls(trio.SocketStream(sock), window)
        await peer.open()
        return peer

    async def open(self) -> None:
        """Send open and wait for the server's 200."""
        await self.stream.send_all(self.client.open())
        assert isinstance((await self.next_events())[0], Opened)

    async def next_events(self) -> list[Event]:
        while True:
            data = bytes(await self.stream.receive_some(65536))
            events = self.client.receive_data(data)
            if events or not data:
                self.events += events
                return events

    async def acks_until(self, count: int) -> int:
        acked = acks(self.events)
        while acked < count:
            events = await self.next_events()
            assert events, "connection ended"
            acked += acks(events)
        return acked


async def test_messages_are_queued_as_one_batch_then_acked() -> None:
    spool = memory_spool()
    relp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input))
        data, _ = peer.client.send([b"<13>seq=%d" % i for i in range(100)])
        await peer.stream.send_all(data)
        assert await peer.acks_until(100) == 100
        assert queued(spool) == [b"<13>seq=%d" % i for i in range(100)]
        assert len(spool.peek(1 << 40)) <= 2  # one read, one batch (or two reads)
        await peer.stream.send_all(peer.client.close())
        assert any(isinstance(e, Closed) for e in await peer.next_events())
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    assert relp_input.counters["received"] == 100
    assert relp_input.counters["connections"] == 1


async def test_ack_only_after_the_spool_took_the_batch() -> None:
    """A full blocking spool delays the rsp: acked means queued."""
    spool = memory_spool(max_messages=10, max_bytes=1 << 20)
    spool.put_nowait(Batch([b"<13>old"] * 10, received=0.0))  # full
    relp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input))
        data, _ = peer.client.send([b"<13>new"])
        await peer.stream.send_all(data)
        with trio.move_on_after(0.5):
            await peer.next_events()
            raise AssertionError("acked while the spool was full")
        assert b"<13>new" not in queued(spool)
        spool.ack(1)  # room: the input's put completes, then the ack comes
        events = await peer.next_events()
        assert [type(e) for e in events] == [Acked]
        assert queued(spool)[-1] == b"<13>new"
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_violation_gets_500_and_serverclose_and_is_counted() -> None:
    spool = memory_spool()
    relp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relp_input))
        client = RelpClient()
        await stream.send_all(client.open())
        reply = b""
        while b"\n" not in reply:
            reply += await stream.receive_some(65536)
        await stream.send_all(b"2 bogus 0\n")
        rest = b""
        while chunk := await stream.receive_some(65536):
            rest += chunk  # ends: the input closed the connection
        assert rest.startswith(b"2 rsp ")
        assert b" 500 " in rest
        assert rest.endswith(b"0 serverclose 0\n")
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert relp_input.counters["protocol_errors"] == 1
    assert len(spool) == 0


async def test_stop_acks_what_was_sent_then_serverclose() -> None:
    spool = memory_spool()
    relp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input))
        data, _ = peer.client.send([b"<13>seq=%d" % i for i in range(500)])
        await peer.stream.send_all(data)
        await relp_input.stop()
        events: list[Event] = []
        while not any(isinstance(e, ServerClosed | ConnectionClosed) for e in events):
            events += await peer.next_events()
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    assert acks(peer.events) == 500
    assert any(isinstance(e, ServerClosed) for e in peer.events)
    assert len(queued(spool)) == 500


async def test_oversize_messages_are_truncated_and_counted() -> None:
    spool = memory_spool()
    config = InputConfig("r", Endpoint("relp", "127.0.0.1", 0), max_message_size=16)
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    relp_input = relp.RelpInput(config, router, Counters("input", "r", relp.COUNTERS))
    await relp_input.open()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input))
        data, _ = peer.client.send([b"<13>short", b"<13>" + b"x" * 100])
        await peer.stream.send_all(data)
        assert await peer.acks_until(2) == 2
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>short", b"<13>xxxxxxxxxxxx"]
    assert relp_input.counters["truncated"] == 1


async def test_reading_goes_on_while_the_client_does_not_read_its_answers() -> None:
    """librelp (omrelp) reads answers only when it sends: once its queue is empty
    it reads nothing. Its last messages must still be read and queued, although
    the answers to earlier ones cannot be written (the client's receive buffer
    is tiny here). Before answers had a writer of their own, the input stopped
    reading after about a thousand and both sides waited for ever."""
    spool = memory_spool()
    relp_input = await start_input(spool)
    count = 20_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input), window=count, rcvbuf=4096)
        data, _ = peer.client.send([b"<13>seq=%d" % i for i in range(count)])
        with trio.fail_after(10):  # the input reads all of it, answered or not
            await peer.stream.send_all(data)
        await await_until(lambda: len(queued(spool)) >= count, 10)  # no answer read yet
        assert await peer.acks_until(count) == count
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>seq=%d" % i for i in range(count)]


async def test_a_client_that_does_not_read_its_answers_is_named_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past REPLY_BACKLOG the input stops reading and says why, once; when the
    client reads again, everything is queued and answered."""
    monkeypatch.setattr(relp, "REPLY_BACKLOG", 4096)
    spool = memory_spool()
    relp_input = await start_input(spool)
    count = 20_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        peer = await Peer.connect(port_of(relp_input), window=count, rcvbuf=4096)
        data, _ = peer.client.send([b"<13>seq=%d" % i for i in range(count)])
        with caplog.at_level(logging.WARNING, "relay.input"):
            nursery.start_soon(peer.stream.send_all, data)  # blocks: the input stops reading
            await await_until(lambda: "does not read our answers" in caplog.text, 10)
            assert len(queued(spool)) < count
            assert await peer.acks_until(count) == count  # reading again: all of them
        await peer.stream.aclose()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>seq=%d" % i for i in range(count)]
    assert caplog.text.count("does not read our answers") == 1


async def test_answers_waiting_past_the_backlog_stop_the_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client ignoring its window and never reading meets REPLY_BACKLOG: it is
    not read until it reads, so what waits for it stays bounded."""
    left, right = trio.testing.lockstep_stream_pair()  # a write waits for a read
    # Replies only writes to its stream: a lockstep pair stands in for the socket.
    replies = relp.Replies(cast("trio.SocketStream", left), backlog=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replies.write)
        replies.add([b"x" * 60])
        await trio.testing.wait_all_tasks_blocked()
        replies.add([b"y" * 60])  # 60 in the writer's hands, 60 waiting: 120 > 100
        with trio.move_on_after(1) as scope:
            await replies.wait_room()
        assert scope.cancelled_caught, "room while 120 bytes wait and nobody reads"
        assert await right.receive_some() == b"x" * 60
        await replies.wait_room()  # 60 left: room
        replies.finish()
        assert await right.receive_some() == b"y" * 60


# -- a peer that breaks RELP closes its own session, never the relay -------------

OPEN = b"1 open 46 relp_version=0\nrelp_software=x\ncommands=syslog\n"
# What an attacker tried (one write each, and every split into two): each broke
# the whole relay once, because the open and the violation came in one read.
BAD_SESSIONS = {
    "unknown command": OPEN + b"2 frobnicate 1 x\n",
    "txnr out of sequence": OPEN + b"7 syslog 5 hello\n",
    "huge txnr": OPEN + b"999999999 syslog 5 hello\n",
    "datalen past the data": OPEN + b"2 syslog 999999999 hello\n",
    "missing trailer": OPEN + b"2 syslog 5 helloX\n",
    "rsp from a client": OPEN + b"2 rsp 6 200 OK\n",
    "negative datalen": OPEN + b"2 syslog -5 hello\n",
    "second open": OPEN + OPEN.replace(b"1 open", b"2 open"),
    "syslog before open": b"1 syslog 5 hello\n" + OPEN,
    "close then more": OPEN + b"2 close 0\n3 syslog 5 hello\n",
}


def splits(wire: bytes) -> list[list[bytes]]:
    """``wire`` in one write, then in two at every position."""
    return [[wire]] + [[wire[:i], wire[i:]] for i in range(1, len(wire))]


async def answers_until_closed(stream: trio.abc.Stream, writes: list[bytes]) -> tuple[bytes, bool]:
    """Send ``writes`` one by one, then read what the input answers until it
    closes: (the answers, whether the close was orderly rather than a reset)."""
    reply = b""
    try:
        for data in writes:
            await stream.send_all(data)
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    except trio.BrokenResourceError:
        # The input closed with our second write unread: its kernel sends a
        # reset, which may discard its answers before we read them. A close.
        return reply, False
    return reply, True


def assert_refused_as_relp_says(reply: bytes, orderly: bool, wire: bytes) -> None:
    """Answers to what came before the fault (the open, a close), then the
    error rsp if one is owed and serverclose (unless reset, or the session
    ended with its close answered): never a message acknowledged."""
    frames, error = decode(reply)
    assert error is None or not orderly, reply
    commands = {
        int(txnr): command.decode() for txnr, command in re.findall(rb"(\d+) (open|close) ", wire)
    }
    answered_close = False
    for frame in frames:
        if frame.command == "serverclose":
            continue
        assert frame.command == "rsp", reply
        if int(frame.data[:3]) == 200:  # only the open and a close are answered 200
            assert commands.get(frame.txnr) in ("open", "close"), reply
            answered_close = commands[frame.txnr] == "close"
        else:
            assert int(frame.data[:3]) >= 400, reply
    if orderly and not answered_close:
        assert frames, "the input closed without serverclose"
        assert (frames[-1].txnr, frames[-1].command) == (0, "serverclose"), reply


async def good_sender(port: int, tls: TlsProfile | None, count: int, done: trio.Event) -> None:
    """A well-behaved client on its own connection: every message acked."""
    peer = Peer(await open_client(port, tls))
    await peer.open()
    for start in range(0, count, 100):
        data, _ = peer.client.send([b"<13>good seq=%d" % i for i in range(start, start + 100)])
        await peer.stream.send_all(data)
        await peer.acks_until(start + 100)
    await peer.stream.aclose()
    done.set()


async def open_client(port: int, tls: TlsProfile | None) -> trio.abc.Stream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return stream
    ssl_stream = trio.SSLStream(stream, client_context(tls, SERVER), server_hostname=SERVER)
    await ssl_stream.do_handshake()
    return ssl_stream


@pytest.mark.parametrize("scheme", ["relp", "relp+tls"])
@pytest.mark.parametrize("name", sorted(BAD_SESSIONS))
async def test_a_broken_session_closes_alone_in_one_write_and_every_split(
    name: str, scheme: str, pki: Pki
) -> None:
    wire = BAD_SESSIONS[name]
    spool = memory_spool()
    server_tls = client_tls = None
    if scheme == "relp+tls":
        server_tls, client_tls = listener(pki.server), target(pki.ca.cert_path)
    relp_input = await start_input(spool, server_tls)
    port = port_of(relp_input)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        done = trio.Event()
        nursery.start_soon(good_sender, port, client_tls, 5000, done)
        for writes in splits(wire):
            stream = await open_client(port, client_tls)
            reply, orderly = await answers_until_closed(stream, writes)
            assert_refused_as_relp_says(reply, orderly, wire)
            await stream.aclose()
        with trio.fail_after(30):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>good seq=%d" % i for i in range(5000)]
    errors = relp_input.counters["protocol_errors"]
    if name == "close then more":  # a split after the close ends the session first, cleanly
        assert 0 < errors < len(wire)
    else:
        assert errors == len(wire)  # every split, and whole


async def test_messages_right_behind_the_open_in_one_write_are_taken() -> None:
    """As imrelp does: a client need not wait for the open's answer."""
    spool = memory_spool()
    relp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(relp_input))
        client = RelpClient()
        wire = client.open()
        stand_in = RelpServer()  # its answer to the open lets our client frame ahead
        stand_in.receive_data(wire)
        client.receive_data(stand_in.accept_open())
        data, _ = client.send([b"<13>seq=%d" % i for i in range(100)])
        reply, orderly = await answers_until_closed(stream, [wire + data + b"102 close 0\n"])
        assert orderly
        await stream.aclose()
        nursery.cancel_scope.cancel()
    frames, error = decode(reply)
    assert error is None
    assert [(f.txnr, f.data[:6]) for f in frames] == [
        (1, b"200 OK"),
        *[(txnr, b"200 OK") for txnr in range(2, 102)],
        (102, b"200 OK"),
    ]
    assert queued(spool) == [b"<13>seq=%d" % i for i in range(100)]
    assert relp_input.counters["protocol_errors"] == 0

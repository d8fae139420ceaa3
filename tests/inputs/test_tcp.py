"""relay/inputs/tcp.py over real loopback sockets."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.config import Endpoint, InputConfig
from relay.inputs import tcp
from relay.message import Batch
from relay.outputs import delivery
from relay.protocol.framing import encode_lines, encode_octet_counted
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from relay.tls import stream as tlswire
from tests.tlshelpers import Pki, listener
from tests.waiting import await_until


async def start_input(spool: Spool, **settings: object) -> tcp.TcpInput:
    config = InputConfig("t", Endpoint("tcp", "127.0.0.1", 0), **settings)  # type: ignore[arg-type]
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    tcp_input = tcp.TcpInput(config, router, Counters("input", "t", tcp.COUNTERS))
    await tcp_input.open()
    return tcp_input


def port_of(tcp_input: tcp.TcpInput) -> int:
    return int(tcp_input.address.rsplit(":", 1)[1])


def queued(spool: Spool) -> list[bytes]:
    return [m for b in spool.peek(1 << 40) for m in b.messages]


async def test_both_framings_and_the_peer_is_recorded() -> None:
    spool = memory_spool()
    tcp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        port = port_of(tcp_input)
        for wire in (encode_octet_counted([b"<13>a", b"<13>b\nc"]), encode_lines([b"<13>d"])):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(wire)
            await stream.aclose()
        while len(spool) < 3:
            await spool.wait_changed()
        nursery.cancel_scope.cancel()
    assert sorted(queued(spool)) == [b"<13>a", b"<13>b\nc", b"<13>d"]
    assert spool.peek(1 << 40)[0].peer.startswith("127.0.0.1:")
    assert tcp_input.counters["received"] == 3
    assert tcp_input.counters["connections"] == 2


async def test_full_spool_stops_reading_then_delivers_everything() -> None:
    """Back-pressure: the input never queues past the bound, and loses nothing."""
    spool = memory_spool(max_messages=50, max_bytes=1 << 20)
    tcp_input = await start_input(spool)
    count = 5_000
    # Frames of 1,005 bytes: one read holds at most RECV_SIZE // 1,005 + 1 of
    # them (about 260), a small part of the 5,000 sent.
    messages = [(b"<13>seq=%d " % i).ljust(1000, b".") for i in range(count)]
    wire = encode_octet_counted(messages)
    # The limit plus the one read that crossed it.
    bound = 50 + tcp.RECV_SIZE // (len(wire) // count) + 1
    assert bound < count // 10
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(tcp_input))

        async def sender() -> None:
            await stream.send_all(wire)
            await stream.aclose()

        nursery.start_soon(sender)
        most = 0
        while len(got) < count:
            # Look once nothing moves: the input waits for room, or (had nothing
            # held it back) it has read all the sender and the kernel could pass.
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            most = max(most, len(spool))
            batches = await spool.wait_batches(1 << 20)
            got += [m for b in batches for m in b.messages]
            spool.ack(len(batches))
        nursery.cancel_scope.cancel()
    assert got == messages
    assert 50 <= most <= bound


async def eof_within(stream: trio.SocketStream, seconds: float) -> bool:
    """Whether the input closes ``stream`` (EOF or reset) within ``seconds``."""
    with trio.move_on_after(seconds):
        try:
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_when_full_a_newcomer_takes_the_place_of_the_longest_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tcp, "EVICT_IDLE", 0.0)  # any quiet connection may make room
    spool = memory_spool()
    tcp_input = await start_input(spool, max_connections=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        port = port_of(tcp_input)
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(100)]
        await await_until(lambda: tcp_input.active == 100, 10)
        newcomer = await trio.open_tcp_stream("127.0.0.1", port)
        await newcomer.send_all(b"<13>newcomer\n")
        await await_until(lambda: len(spool) == 1, 5)  # served at once
        assert queued(spool) == [b"<13>newcomer"]
        assert await eof_within(idle[0], 5)  # the oldest made room
        assert tcp_input.active == 100  # 99 of the idle ones and the newcomer
        assert tcp_input.counters["evicted_idle"] == 1
        assert tcp_input.counters["refused_connections"] == 0
        for stream in [*idle, newcomer]:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_when_full_and_nobody_is_idle_a_newcomer_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp, "EVICT_IDLE", 3600.0)  # nobody has been quiet that long
    spool = memory_spool()
    tcp_input = await start_input(spool, max_connections=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        port = port_of(tcp_input)
        busy = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(100)]
        await await_until(lambda: tcp_input.active == 100, 10)
        for _ in range(3):
            newcomer = await trio.open_tcp_stream("127.0.0.1", port)
            assert await eof_within(newcomer, 5)  # refused at once, not left waiting
            await newcomer.aclose()
        assert tcp_input.counters["refused_connections"] == 3
        assert tcp_input.active == 100
        await busy[0].send_all(b"<13>still served\n")
        await await_until(lambda: len(spool) == 1, 5)
        for stream in busy:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    # one line for the first, the rest counted (rate-limited)
    assert caplog.text.count("max_connections") == 1


async def test_idle_timeout_closes_connections_that_send_nothing() -> None:
    spool = memory_spool()
    tcp_input = await start_input(spool, idle_timeout=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        port = port_of(tcp_input)
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        talker = await trio.open_tcp_stream("127.0.0.1", port)
        for i in range(10):  # one message every 0.1 s for a second: never idle
            await talker.send_all(b"<13>%d\n" % i)
            assert not await eof_within(talker, 0.1)
        for stream in silent:
            assert await eof_within(stream, 1)  # closed long before
        assert await eof_within(talker, 5)  # then quiet: closed too
        assert tcp_input.counters["idle_timeouts"] == 4
        assert queued(spool) == [b"<13>%d" % i for i in range(10)]
        for stream in [*silent, talker]:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_timeout_zero_keeps_quiet_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spool = memory_spool()
    tcp_input = await start_input(spool, idle_timeout=0.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        quiet = await trio.open_tcp_stream("127.0.0.1", port_of(tcp_input))
        assert not await eof_within(quiet, 86400)  # a day of the mock clock
        assert tcp_input.counters["idle_timeouts"] == 0
        await quiet.aclose()
        nursery.cancel_scope.cancel()


async def test_an_error_in_one_session_closes_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = memory_spool()
    tcp_input = await start_input(spool)
    put = tcp_input.router.put

    async def put_or_fail(batch: Batch, *, keep_if_cancelled: bool = False) -> None:
        if b"<13>boom" in batch.messages:
            raise RuntimeError("injected")
        await put(batch, keep_if_cancelled=keep_if_cancelled)

    tcp_input.router.put = put_or_fail  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        port = port_of(tcp_input)
        good = await trio.open_tcp_stream("127.0.0.1", port)
        await good.send_all(b"<13>before\n")
        await await_until(lambda: len(spool) == 1, 5)
        for _ in range(2):
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            await bad.send_all(b"<13>boom\n")
            assert await eof_within(bad, 5)
            await bad.aclose()
        await good.send_all(b"<13>after\n")
        await await_until(lambda: len(spool) == 2, 5)
        assert queued(spool) == [b"<13>before", b"<13>after"]
        assert tcp_input.counters["session_errors"] == 2
        await good.aclose()
        nursery.cancel_scope.cancel()
    assert caplog.text.count("closed on an error: RuntimeError: injected") == 1  # rate-limited
    assert "a bug in relay" in caplog.text


async def test_malformed_input_does_not_cost_the_next_good_message() -> None:
    """Bad PRI, bad octet counts, NUL bytes, invalid UTF-8, an oversize frame and
    a frame cut short, all on one connection: each good message still arrives."""
    spool = memory_spool()
    tcp_input = await start_input(spool, max_message_size=1000)
    good = [b"<13>1 - - - - - good %d" % i for i in range(6)]
    wire = b"".join(
        [
            encode_octet_counted([good[0]]),
            b"12x <999>bad count and bad PRI\n",
            encode_octet_counted([good[1]]),
            encode_octet_counted([b"\x00\x00 NUL bytes"]),
            encode_octet_counted([good[2]]),
            encode_octet_counted([b"<13>\xff\xfe invalid utf-8"]),
            encode_octet_counted([good[3]]),
            encode_octet_counted([b"<13>" + b"x" * 5000]),
            encode_octet_counted([good[4]]),
            b"99999999999999999999 absurd\n",
            encode_octet_counted([good[5]]),
            b"100 <13>cut short",
        ]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(tcp_input))
        for i in range(0, len(wire), 7):  # arbitrary read boundaries
            await stream.send_all(wire[i : i + 7])
        await stream.aclose()
        await await_until(
            lambda: tcp_input.counters["connections"] >= 1 and not tcp_input.active, 10
        )
        nursery.cancel_scope.cancel()
    got = queued(spool)
    assert [m for m in got if b"good" in m] == good
    assert b"\x00\x00 NUL bytes" in got and b"<13>\xff\xfe invalid utf-8" in got
    assert b"<13>" + b"x" * 996 in got  # truncated to max_message_size, not split
    assert got[-1] == b"<13>cut short"  # kept at EOF, counted as truncated
    assert tcp_input.counters["framing_errors"] == 2
    assert tcp_input.counters["truncated"] == 2


async def test_stop_takes_in_what_senders_already_wrote() -> None:
    """At stop, what is already in our kernel's buffers is read and queued."""
    spool = memory_spool()
    tcp_input = await start_input(spool)
    count = 20_000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(tcp_input))
        await stream.send_all(encode_octet_counted([b"<13>seq=%d" % i for i in range(count)]))
        await tcp_input.stop()  # the sender's data may not have been read yet
        await await_until(lambda: not tcp_input.active, 5)  # connections end once quiet
        await stream.aclose()
    assert queued(spool) == [b"<13>seq=%d" % i for i in range(count)]


async def test_a_batch_waiting_for_room_when_the_stop_comes_is_kept() -> None:
    """The sender cannot send it again: it goes past the budget, to be saved."""
    spool = memory_spool(max_messages=10, max_bytes=1 << 20)
    spool.put_nowait(Batch([b"<13>old"] * 10, received=0.0))  # full; nothing acks
    tcp_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(tcp_input))
        await stream.send_all(encode_lines([b"<13>seq=%d" % i for i in range(100)]))
        await await_until(lambda: tcp_input.counters["received"] == 100, 5)  # read, waiting
        await tcp_input.stop()
        nursery.cancel_scope.cancel()  # the end of the stop's grace
    await stream.aclose()
    assert queued(spool) == [b"<13>old"] * 10 + [b"<13>seq=%d" % i for i in range(100)]
    assert tcp_input.counters["kept_at_stop"] == 100


async def test_a_stalled_handshake_is_logged_as_its_own_category(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another failure from the same address in the same minute does not hide it."""
    monkeypatch.setattr(tlswire, "HANDSHAKE_TIMEOUT", 0.3)
    config = InputConfig("t", Endpoint("tls", "127.0.0.1", 0), tls=listener(pki.server))
    router = Router([Route(memory_spool(), Counters("output", "o", delivery.COUNTERS))])
    counters = Counters("input", "t", tcp.COUNTERS + tlswire.COUNTERS)
    tls_input = tcp.TcpInput(config, router, counters)
    await tls_input.open()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tls_input.serve)
        port = port_of(tls_input)
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b"<13>plaintext\n")
        assert await eof_within(plain, 5)
        stalled = await trio.open_tcp_stream("127.0.0.1", port)  # says nothing
        assert await eof_within(stalled, 5)
        for stream in (plain, stalled):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert counters["tls_plaintext_on_tls_port"] == 1
    assert counters["tls_handshake_timeout"] == 1
    assert "[handshake_timeout]" in caplog.text
    assert "the client did not finish it in time" in caplog.text

"""relay/inputs/proxied.py: the PROXY protocol on stream inputs, over real loopback sockets."""

from __future__ import annotations

import contextlib
import ipaddress
import logging

import pytest
import trio

from relay.config import Endpoint, InputConfig
from relay.inputs import proxied, relp, tcp
from relay.outputs import delivery
from relay.protocol.framing import encode_lines
from relay.protocol.proxy import encode_v1, encode_v2
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from relay.tls.context import client_context
from relay.tls.stream import COUNTERS as TLS_COUNTERS
from tests.inputs.test_relp import Peer
from tests.inputs.test_tcp import eof_within, port_of, queued
from tests.tlshelpers import SERVER, Pki, listener, target
from tests.waiting import await_until

LOOPBACK = [ipaddress.IPv4Network("127.0.0.1/32")]
CLIENT = ("192.0.2.7", 40123)  # RFC 5737 documentation address: only ever in a header
SERVED = ("127.0.0.1", 514)


async def start_input(
    spool: Spool,
    scheme: str = "tcp",
    trusted: list[ipaddress.IPv4Network] = LOOPBACK,
    **more: object,
) -> tcp.TcpInput:
    config = InputConfig(
        "p",
        Endpoint(scheme, "127.0.0.1", 0),
        proxy_protocol=True,
        proxy_trusted=tuple(trusted),
        **more,  # type: ignore[arg-type]
    )
    router = Router([Route(spool, Counters("output", "o", delivery.COUNTERS))])
    module = relp if scheme.startswith("relp") else tcp
    names = module.COUNTERS + proxied.COUNTERS + TLS_COUNTERS
    kind = relp.RelpInput if module is relp else tcp.TcpInput
    the_input = kind(config, router, Counters("input", "p", names))
    await the_input.open()
    return the_input


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("one_write", [True, False], ids=["one-write", "header-apart"])
async def test_the_client_in_the_header_is_the_peer(version: int, one_write: bool) -> None:
    spool = memory_spool()
    the_input = await start_input(spool)
    header = encode_v1(CLIENT, SERVED) if version == 1 else encode_v2(CLIENT, SERVED)
    payload = encode_lines([b"<13>seq=%d" % i for i in range(3)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        if one_write:
            await stream.send_all(header + payload)
        else:
            for part in (header[:5], header[5:], payload):
                await stream.send_all(part)
        await stream.aclose()
        while len(spool) < 3:
            await spool.wait_changed()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>seq=%d" % i for i in range(3)]
    assert {b.peer for b in spool.peek(1 << 40)} == {"192.0.2.7:40123"}


@pytest.mark.parametrize(
    ("source", "peer"),
    [
        (("2001:db8::7", 7), "[2001:db8::7]:7"),
        (("::ffff:192.0.2.7", 7), "192.0.2.7:7"),  # IPv4-mapped: the IPv4 client it is
    ],
)
async def test_an_ipv6_client(source: tuple[str, int], peer: str) -> None:
    spool = memory_spool()
    the_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        await stream.send_all(encode_v2(source, ("2001:db8::1", 514)) + b"<13>six\n")
        await stream.aclose()
        while len(spool) < 1:
            await spool.wait_changed()
        nursery.cancel_scope.cancel()
    assert spool.peek(1)[0].peer == peer


async def test_header_before_the_tls_handshake(pki: Pki) -> None:
    spool = memory_spool()
    the_input = await start_input(spool, "tls", tls=listener(pki.server))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        await stream.send_all(encode_v2(CLIENT, SERVED))
        context = client_context(target(pki.ca.cert_path), SERVER)
        tls_stream = trio.SSLStream(stream, context, server_hostname=SERVER)
        await tls_stream.send_all(b"<13>over tls\n")
        await tls_stream.aclose()
        while len(spool) < 1:
            await spool.wait_changed()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>over tls"]
    assert spool.peek(1)[0].peer == "192.0.2.7:40123"


async def test_relp_session_after_the_header() -> None:
    spool = memory_spool()
    the_input = await start_input(spool, "relp")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        await stream.send_all(encode_v1(CLIENT, SERVED))
        peer = Peer(stream)
        await peer.open()
        data, _ = peer.client.send([b"<13>relp seq=0"])
        await stream.send_all(data)
        assert await peer.acks_until(1) == 1
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert queued(spool) == [b"<13>relp seq=0"]
    assert spool.peek(1)[0].peer == "192.0.2.7:40123"


@pytest.mark.parametrize(
    ("wire", "trusted", "counter", "says"),
    [
        pytest.param(
            encode_v2(CLIENT, SERVED) + b"<13>after\n",
            [ipaddress.ip_network("10.0.0.0/8")],
            "proxy_untrusted",
            "from 127.0.0.1:",
            id="untrusted",
        ),
        pytest.param(b"<13>no header\n", LOOPBACK, "proxy_bad_header", "no PROXY", id="no-header"),
        pytest.param(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n<13>x\n",
            LOOPBACK,
            "proxy_bad_header",
            "CRLF",
            id="v1-lf",
        ),
        pytest.param(
            b"PROXY TCP4 1.2.3.4", LOOPBACK, "proxy_bad_header", "closed after 18 bytes", id="cut"
        ),
    ],
)
async def test_refused_counted_logged_nothing_queued(
    wire: bytes,
    trusted: list[ipaddress.IPv4Network],
    counter: str,
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = memory_spool()
    the_input = await start_input(spool, trusted=trusted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
            with contextlib.suppress(trio.BrokenResourceError):  # closed before we wrote
                await stream.send_all(wire)
                if says.startswith("closed"):
                    await stream.send_eof()
            assert await eof_within(stream, 5)
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert len(spool) == 0
    assert the_input.counters[counter] == 3
    assert the_input.counters["connections"] == 0
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == 1  # one line an interval: the others are counted
    assert says in refusals[0].getMessage()


async def test_local_is_a_quiet_health_check(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    spool = memory_spool()
    the_input = await start_input(spool)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        await stream.send_all(encode_v2(None) + b"<13>not a message\n")
        assert await eof_within(stream, 5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert len(spool) == 0
    assert the_input.counters["proxy_local"] == 1
    assert the_input.counters["proxy_bad_header"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


async def test_a_silent_connection_is_refused_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxied, "HEADER_TIMEOUT", 0.2)
    the_input = await start_input(memory_spool())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_input.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
        assert await eof_within(stream, 5)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert the_input.counters["proxy_bad_header"] == 1


async def test_the_stop_ends_the_wait_for_a_header() -> None:
    the_input = await start_input(memory_spool())
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(the_input.serve)
            stream = await trio.open_tcp_stream("127.0.0.1", port_of(the_input))
            await stream.send_all(b"PROXY TCP4")
            await await_until(lambda: any(c.read_scope for c in the_input._connections), 5)
            await the_input.stop()
            assert await eof_within(stream, 5)
            await stream.aclose()
    assert the_input.counters["proxy_bad_header"] == 0

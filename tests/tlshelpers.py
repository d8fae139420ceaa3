"""What the tests of relay/tls/ (context, certs, failures) share.

A test PKI (:class:`Pki`, the ``pki`` fixture in tests/conftest.py), the
profiles of a relay listener and target, and one real connection between two
``trio.SSLStream`` over TCP on 127.0.0.1 with both ends going through
``tlsfailures.handshake`` (:func:`connect`, :func:`handshake_pair`), checked
with :func:`assert_failed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest
import trio

from relay.tls import context as tls
from relay.tls import failures as tlsfailures
from relay.tls.context import TlsProfile
from relay.tls.failures import HandshakeCategory as Cat
from relay.tls.failures import HandshakeFailure
from tests.certs import CertFiles, CertificateAuthority

LOOPBACK = "127.0.0.1"
SERVER = "server.example.net"
CLIENT = "client.example.net"
# The client's highest version: TLS 1.2 (a peer that cannot do 1.3) or the default, 1.3.
# They differ in when a client learns the server refused its certificate.
BOTH_VERSIONS = pytest.mark.parametrize(
    "client_max", [ssl.TLSVersion.TLSv1_2, None], ids=["tls1.2", "tls1.3"]
)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: CertFiles
    client: CertFiles
    other_ca: CertificateAuthority

    @classmethod
    def create(cls, root: Path) -> Pki:
        """A CA with a server and a client certificate, and another CA that trusts neither."""
        ca = CertificateAuthority.create(root / "pki")
        other = CertificateAuthority.create(root / "other", "Other CA")
        return cls(ca, ca.issue(SERVER), ca.issue(CLIENT), other)


def listener(files: CertFiles, **settings: object) -> TlsProfile:
    return TlsProfile(cert=files.cert, key=files.key, ca=files.ca, **settings)  # type: ignore[arg-type]


def target(ca: Path, files: CertFiles | None = None, **settings: object) -> TlsProfile:
    cert, key = (files.cert, files.key) if files else (None, None)
    return TlsProfile(cert=cert, key=key, ca=ca, **settings)  # type: ignore[arg-type]


# -- one connection, both ends ----------------------------------------------


@dataclasses.dataclass
class Side:
    failure: HandshakeFailure | None = None
    version: str | None = None
    peer_cert: bytes | None = None
    received: bytes | bytearray = b""


ClientFn = Callable[[int], Awaitable[Side]]


async def connect(
    server_ctx: ssl.SSLContext, server: TlsProfile, client: ClientFn
) -> tuple[Side, Side]:
    """Serve one connection with ``tlsfailures.handshake``; run ``client`` against it."""
    done = trio.Event()
    result = Side()

    async def serve(tcp: trio.SocketStream) -> None:
        host, port = tcp.socket.getpeername()[:2]
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        result.failure = await tlsfailures.handshake(stream, server, peer=f"{host}:{port}")
        assert result.failure is None or result.failure.role == "server"
        if result.failure is None:
            result.version = stream.version()
            result.peer_cert = stream.getpeercert(binary_form=True)
            with contextlib.suppress(trio.BrokenResourceError):  # a client that refused us
                await stream.send_all(b"ok")
                result.received = await stream.receive_some(100)
        done.set()
        await trio.aclose_forcefully(stream)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host=LOOPBACK))
            client_side = await client(listeners[0].socket.getsockname()[1])
            await done.wait()
            nursery.cancel_scope.cancel()
    return result, client_side


def tls_client(ctx: ssl.SSLContext, profile: TlsProfile, hostname: str = SERVER) -> ClientFn:
    async def run(port: int) -> Side:
        side = Side()
        stream = trio.SSLStream(
            await trio.open_tcp_stream(LOOPBACK, port), ctx, server_hostname=hostname
        )
        peer = f"{LOOPBACK}:{port}"
        side.failure = await tlsfailures.handshake(stream, profile, peer=peer)
        if side.failure is None:
            side.version = stream.version()
            side.peer_cert = stream.getpeercert(binary_form=True)
            try:
                # In TLS 1.3 the server judges our certificate after our handshake
                # is done: its verdict (an alert) arrives with the first read.
                side.received = await stream.receive_some(100)
                await stream.send_all(b"hi")
            except trio.BrokenResourceError as exc:
                side.failure = await tlsfailures.handshake_failure(stream, exc, profile, peer=peer)
        await trio.aclose_forcefully(stream)
        assert side.failure is None or side.failure.role == "client"
        return side

    return run


def raw_client(data: bytes) -> ClientFn:
    async def run(port: int) -> Side:
        tcp = await trio.open_tcp_stream(LOOPBACK, port)
        await tcp.send_all(data)
        side = Side(received=await tcp.receive_some(100))
        await tcp.aclose()
        return side

    return run


async def handshake_pair(
    server: TlsProfile,
    client: TlsProfile,
    hostname: str = SERVER,
    *,
    client_max: ssl.TLSVersion | None = None,
    now: datetime | None = None,
) -> tuple[Side, Side]:
    """A relay listener and a relay target; ``now`` lets a context hold a dated cert."""
    ctx = tls.client_context(client, hostname, now=now)
    if client_max is not None:
        ctx.maximum_version = client_max
    return await connect(
        tls.server_context(server, now=now), server, tls_client(ctx, client, hostname)
    )


# The category in words, as the log line says it.
WORDS = {
    Cat.UNKNOWN_CA: "unknown CA",
    Cat.NAME_MISMATCH: "name mismatch",
    Cat.EXPIRED: "certificate expired",
    Cat.NOT_YET_VALID: "certificate not yet valid",
    Cat.NO_CLIENT_CERT: "no client certificate",
    Cat.PEER_NOT_PERMITTED: "peer not permitted",
    Cat.PROTOCOL_MISMATCH: "protocol mismatch",
    Cat.PLAINTEXT_ON_TLS_PORT: "plaintext on the TLS port",
    Cat.OTHER: "",
}


def assert_failed(side: Side, category: Cat, *texts: str) -> None:
    """The failure is ``category``, and its one line names peer, role, category and ``texts``."""
    failure = side.failure
    assert failure is not None, "the handshake should have failed"
    assert failure.category == category, failure.line
    assert "\n" not in failure.line
    words = f" ({WORDS[category]})" if WORDS[category] else ""
    assert failure.line.startswith(
        f"TLS {failure.role} handshake with {failure.peer} failed{words}: "
    )
    assert failure.peer.startswith(f"{LOOPBACK}:")
    for text in texts:
        assert text in failure.line


def day(when: datetime) -> str:
    return when.strftime("%Y-%m-%d")

"""relay/tlsfailures.py: every handshake failure, over real loopback TLS.

Every handshake here is a real one between two ``trio.SSLStream`` over TCP on
127.0.0.1, with certificates minted for the test (tests/certs.py). Both ends
go through ``tlsfailures.handshake``, so each failure is checked from both roles: the
side that rejected, and the side that received the TLS alert.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
import trio

from relay.tls import context as tls
from relay.tls import failures as tlsfailures
from relay.tls.context import TlsProfile
from relay.tls.failures import HandshakeCategory as Cat
from tests.tlshelpers import (
    BOTH_VERSIONS,
    CLIENT,
    LOOPBACK,
    SERVER,
    Pki,
    assert_failed,
    connect,
    day,
    handshake_pair,
    listener,
    raw_client,
    target,
    tls_client,
)

# -- each failure, from both ends -------------------------------------------


@BOTH_VERSIONS
async def test_unknown_ca_of_the_server(pki: Pki, client_max: ssl.TLSVersion | None) -> None:
    stranger = pki.other_ca.issue(SERVER, stem="stranger")
    server, client = await handshake_pair(
        listener(stranger), target(pki.ca.cert_path), client_max=client_max
    )
    assert_failed(
        client,
        Cat.UNKNOWN_CA,
        "TLS client handshake with 127.0.0.1:",
        "issued by CN=Other CA",
        str(pki.ca.cert_path),
    )
    assert_failed(
        server,
        Cat.UNKNOWN_CA,
        "TLS server handshake with 127.0.0.1:",
        "does not trust",
        str(stranger.cert),
        "CN=Other CA",
    )


@BOTH_VERSIONS
async def test_unknown_ca_of_the_client(pki: Pki, client_max: ssl.TLSVersion | None) -> None:
    stranger = pki.other_ca.issue(CLIENT, stem="stranger")
    server, client = await handshake_pair(
        listener(pki.server, require_client_cert=True),
        target(pki.ca.cert_path, stranger),
        client_max=client_max,
    )
    assert_failed(server, Cat.UNKNOWN_CA, "the client's certificate", str(pki.ca.cert_path))
    assert_failed(client, Cat.UNKNOWN_CA, "the server does not trust", str(stranger.cert))


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("wrong.example.net", "expected wrong.example.net"), ("127.0.0.2", "expected 127.0.0.2")],
)
async def test_name_mismatch(pki: Pki, hostname: str, expected: str) -> None:
    server, client = await handshake_pair(listener(pki.server), target(pki.ca.cert_path), hostname)
    presented = "presented server.example.net, localhost, 127.0.0.1"
    assert_failed(client, Cat.NAME_MISMATCH, expected, presented)
    assert_failed(
        server,
        Cat.NAME_MISMATCH,
        "the client rejected our certificate",
        "server.example.net, localhost",
    )


async def test_expired_server_certificate(pki: Pki) -> None:
    now = datetime.now(UTC)
    old = pki.ca.issue(
        SERVER, stem="old", not_before=now - timedelta(days=400), not_after=now - timedelta(days=3)
    )
    # The listener was configured while its certificate was still valid.
    ctx = tls.server_context(listener(old), now=now - timedelta(days=10))
    client_profile = target(pki.ca.cert_path)
    server, client = await connect(
        ctx, listener(old), tls_client(tls.client_context(client_profile, SERVER), client_profile)
    )
    assert_failed(
        client,
        Cat.EXPIRED,
        "the server's certificate CN=server.example.net expired on",
        day(old.not_after),
        "3 days ago",
    )
    assert_failed(
        server,
        Cat.EXPIRED,
        f"the client says our certificate {old.cert} has expired",
        day(old.not_after),
    )


@BOTH_VERSIONS
async def test_expired_client_certificate(pki: Pki, client_max: ssl.TLSVersion | None) -> None:
    now = datetime.now(UTC)
    old = pki.ca.issue(
        CLIENT, stem="old", not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)
    )
    client_profile = target(pki.ca.cert_path, old)
    ctx = tls.client_context(client_profile, SERVER, now=now - timedelta(days=10))
    if client_max is not None:
        ctx.maximum_version = client_max
    server_profile = listener(pki.server, require_client_cert=True)
    server, client = await connect(
        tls.server_context(server_profile), server_profile, tls_client(ctx, client_profile)
    )
    # OpenSSL keeps no client certificate it rejected: the server cannot say the dates.
    assert_failed(server, Cat.EXPIRED, "the client's certificate", "has expired")
    assert_failed(
        client,
        Cat.EXPIRED,
        f"the server says our certificate {old.cert} has expired",
        day(old.not_after),
    )


async def test_not_yet_valid_server_certificate(pki: Pki) -> None:
    now = datetime.now(UTC)
    early = pki.ca.issue(
        SERVER, stem="early", not_before=now + timedelta(days=2), not_after=now + timedelta(days=90)
    )
    ctx = tls.server_context(listener(early), now=now + timedelta(days=3))
    client_profile = target(pki.ca.cert_path)
    server, client = await connect(
        ctx, listener(early), tls_client(tls.client_context(client_profile, SERVER), client_profile)
    )
    assert_failed(client, Cat.NOT_YET_VALID, "is not valid until", day(early.not_before))
    assert_failed(
        server, Cat.NOT_YET_VALID, str(early.cert), "not valid until", day(early.not_before)
    )


@BOTH_VERSIONS
async def test_no_client_certificate(pki: Pki, client_max: ssl.TLSVersion | None) -> None:
    server, client = await handshake_pair(
        listener(pki.server, require_client_cert=True),
        target(pki.ca.cert_path),
        client_max=client_max,
    )
    assert_failed(server, Cat.NO_CLIENT_CERT, "the client sent no certificate")
    assert_failed(
        client, Cat.NO_CLIENT_CERT, "the server requires a client certificate", "none configured"
    )


async def test_min_version_13_refuses_a_12_only_peer(pki: Pki) -> None:
    server, client = await handshake_pair(
        listener(pki.server, min_version="1.3"),
        target(pki.ca.cert_path),
        client_max=ssl.TLSVersion.TLSv1_2,
    )
    assert_failed(
        server, Cat.PROTOCOL_MISMATCH, "offered no TLS version we accept (TLS 1.3 to 1.3)"
    )
    assert_failed(client, Cat.PROTOCOL_MISMATCH, "accepts none of the TLS versions we offer")


async def test_no_shared_cipher(pki: Pki) -> None:
    cipher = "ECDHE-ECDSA-AES128-GCM-SHA256"
    server, client = await handshake_pair(
        listener(pki.server, ciphers=cipher),
        target(pki.ca.cert_path, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"),
        client_max=ssl.TLSVersion.TLSv1_2,
    )
    assert_failed(server, Cat.PROTOCOL_MISMATCH, "no cipher in common", cipher)
    assert_failed(client, Cat.PROTOCOL_MISMATCH, "handshake failure alert")


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"<13>Nov 22 10:00:00 host app: hello\n", "starts with '<13>Nov 22 10:00...'"),
        (b"31 <13>1 - host app - - - hello", "starts with '31 <13>1 - host ...'"),
        (b"GET / HTTP/1.1\r\n\r\n", "starts with 'GET / HTTP/1.1\\r\\n...'"),
    ],
)
async def test_plaintext_on_the_tls_port(pki: Pki, data: bytes, shown: str) -> None:
    server, client = await connect(
        tls.server_context(listener(pki.server)), listener(pki.server), raw_client(data)
    )
    assert_failed(
        server,
        Cat.PLAINTEXT_ON_TLS_PORT,
        "the peer sent plaintext",
        shown,
        "is it configured for TLS?",
    )
    assert client.received == b""  # closed, and no TLS alert written into a plaintext log


async def test_garbage_is_not_called_plaintext(pki: Pki) -> None:
    server, _ = await connect(
        tls.server_context(listener(pki.server)),
        listener(pki.server),
        raw_client(b"\x00\x01\x02\x03garbage"),
    )
    assert_failed(server, Cat.OTHER, "not TLS", "\\x00\\x01")


async def test_tls_target_on_a_plaintext_port(pki: Pki) -> None:
    async def plaintext_server(tcp: trio.SocketStream) -> None:
        await tcp.send_all(b"<13>hello, I only speak plaintext\n")
        await tcp.receive_some(1000)
        await tcp.aclose()

    profile = target(pki.ca.cert_path)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, plaintext_server, 0, host=LOOPBACK))
        port = listeners[0].socket.getsockname()[1]
        client = await tls_client(tls.client_context(profile, SERVER), profile)(port)
        nursery.cancel_scope.cancel()
    assert_failed(
        client, Cat.PROTOCOL_MISMATCH, "the server did not answer in TLS", "is this a TLS port?"
    )


def test_looks_like_plaintext() -> None:
    assert tlsfailures.looks_like_plaintext(b"<13>Nov")
    assert tlsfailures.looks_like_plaintext(b"123 <13>1")
    assert tlsfailures.looks_like_plaintext(b"GET /")
    assert not tlsfailures.looks_like_plaintext(b"\x16\x03\x01\x02\x00")  # a ClientHello
    assert not tlsfailures.looks_like_plaintext(b"")


def test_other_failures() -> None:
    profile = TlsProfile()
    slow = tlsfailures.classify_handshake_error(
        trio.TooSlowError(), role="server", peer="10.0.0.1:5", profile=profile
    )
    assert slow.category == Cat.HANDSHAKE_TIMEOUT
    assert slow.line.startswith(
        "TLS server handshake with 10.0.0.1:5 failed (handshake timeout): the client did not "
        "finish it in time"
    )
    eof = trio.BrokenResourceError()
    eof.__cause__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    probe = tlsfailures.classify_handshake_error(
        eof, role="server", peer="10.0.0.1:5", profile=profile
    )
    assert probe.category == Cat.OTHER and "without a TLS alert" in probe.line
    with pytest.raises(ValueError, match="role"):
        tlsfailures.classify_handshake_error(eof, role="listener", peer="x", profile=profile)

"""relay/tls.py: contexts, peer checks and handshake failures, over real loopback TLS.

Every handshake here is a real one between two ``trio.SSLStream`` over TCP on
127.0.0.1, with certificates minted for the test (tests/certs.py). Both ends
go through ``tls.handshake``, so each failure is checked from both roles: the
side that rejected, and the side that received the TLS alert.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from relay import tls
from relay.errors import ConfigError
from relay.tls import HandshakeCategory as Cat
from relay.tls import HandshakeFailure, TlsProfile
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


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create(tmp_path / "pki")
    other = CertificateAuthority.create(tmp_path / "other", "Other CA")
    return Pki(ca, ca.issue(SERVER), ca.issue(CLIENT), other)


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
    """Serve one connection with ``tls.handshake``; run ``client`` against it."""
    done = trio.Event()
    result = Side()

    async def serve(tcp: trio.SocketStream) -> None:
        host, port = tcp.socket.getpeername()[:2]
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        result.failure = await tls.handshake(stream, server, peer=f"{host}:{port}")
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
        side.failure = await tls.handshake(stream, profile, peer=peer)
        if side.failure is None:
            side.version = stream.version()
            side.peer_cert = stream.getpeercert(binary_form=True)
            try:
                # In TLS 1.3 the server judges our certificate after our handshake
                # is done: its verdict (an alert) arrives with the first read.
                side.received = await stream.receive_some(100)
                await stream.send_all(b"hi")
            except trio.BrokenResourceError as exc:
                side.failure = await tls.handshake_failure(stream, exc, profile, peer=peer)
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


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- success ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_max", "version"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (None, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
async def test_handshake_and_data(
    pki: Pki, client_max: ssl.TLSVersion | None, version: str
) -> None:
    server, client = await handshake_pair(
        listener(pki.server), target(pki.ca.cert_path), client_max=client_max
    )
    assert server.failure is None and client.failure is None
    assert server.version == client.version == version
    assert (client.received, server.received) == (b"ok", b"hi")
    assert server.peer_cert is None  # no client certificate asked for


@BOTH_VERSIONS
async def test_mutual_tls(pki: Pki, client_max: ssl.TLSVersion | None) -> None:
    server, client = await handshake_pair(
        listener(pki.server, require_client_cert=True),
        target(pki.ca.cert_path, pki.client),
        client_max=client_max,
    )
    assert server.failure is None and client.failure is None
    assert server.peer_cert is not None
    assert tls.CertificateInfo.from_der(server.peer_cert).common_name == CLIENT
    assert server.received == b"hi"


async def test_hostname_is_verified_by_default(pki: Pki) -> None:
    ctx = tls.client_context(TlsProfile(ca=pki.ca.cert_path), SERVER)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.server_context(listener(pki.server)).verify_mode == ssl.CERT_NONE
    assert (
        tls.server_context(listener(pki.server, require_client_cert=True)).verify_mode
        == ssl.CERT_REQUIRED
    )
    # An address is checked against the IP entries of subjectAltName.
    server, client = await handshake_pair(listener(pki.server), target(pki.ca.cert_path), LOOPBACK)
    assert server.failure is None and client.failure is None


async def test_cn_only_certificate_matches_its_cn(pki: Pki) -> None:
    legacy = pki.ca.issue("legacy.example.net", san=False)
    server, client = await handshake_pair(
        listener(legacy), target(pki.ca.cert_path), "legacy.example.net"
    )
    assert server.failure is None and client.failure is None
    _, client = await handshake_pair(listener(legacy), target(pki.ca.cert_path), "localhost")
    assert_failed(
        client, Cat.NAME_MISMATCH, "expected localhost", "legacy.example.net (CN, no subjectAltName"
    )


async def test_verify_false_connects_and_warns_once(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = pki.other_ca.issue("stranger.example.net")
    profile = TlsProfile(ca=pki.ca.cert_path, verify=False)  # unique: warned once per profile
    with caplog.at_level(logging.WARNING, logger="relay.tls"):
        tls.client_context(profile, SERVER)
        server, client = await handshake_pair(listener(stranger), profile, "wrong.example.net")
    assert server.failure is None and client.failure is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "relay.tls"]
    assert len(warnings) == 1
    assert "verify = false" in warnings[0] and SERVER in warnings[0]


async def test_verify_false_with_a_pinned_fingerprint(pki: Pki) -> None:
    stranger = pki.other_ca.issue(SERVER, stem="stranger")
    pinned = tls.CertificateInfo.from_pem_file(stranger.cert).fingerprint
    server, client = await handshake_pair(
        listener(stranger), TlsProfile(verify=False, permitted_peers=(pinned,))
    )
    assert server.failure is None and client.failure is None
    other = tls.CertificateInfo.from_pem_file(pki.server.cert).fingerprint
    _, client = await handshake_pair(
        listener(stranger), TlsProfile(verify=False, permitted_peers=(other,))
    )
    assert_failed(client, Cat.PEER_NOT_PERMITTED, pinned, f"permitted {other}")


async def test_key_and_certificate_in_one_file(pki: Pki, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(pki.server.key.read_bytes() + pki.server.cert.read_bytes())
    profile = TlsProfile(cert=combined, ca=pki.ca.cert_path)
    server, client = await handshake_pair(profile, target(pki.ca.cert_path))
    assert server.failure is None and client.failure is None


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
    assert tls.looks_like_plaintext(b"<13>Nov")
    assert tls.looks_like_plaintext(b"123 <13>1")
    assert tls.looks_like_plaintext(b"GET /")
    assert not tls.looks_like_plaintext(b"\x16\x03\x01\x02\x00")  # a ClientHello
    assert not tls.looks_like_plaintext(b"")


def test_other_failures() -> None:
    profile = TlsProfile()
    slow = tls.classify_handshake_error(
        trio.TooSlowError(), role="server", peer="10.0.0.1:5", profile=profile
    )
    assert slow.category == Cat.OTHER and "did not finish in time" in slow.line
    assert slow.line.startswith("TLS server handshake with 10.0.0.1:5 failed: it did not")
    eof = trio.BrokenResourceError()
    eof.__cause__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    probe = tls.classify_handshake_error(eof, role="server", peer="10.0.0.1:5", profile=profile)
    assert probe.category == Cat.OTHER and "without a TLS alert" in probe.line
    with pytest.raises(ValueError, match="role"):
        tls.classify_handshake_error(eof, role="listener", peer="x", profile=profile)


# -- permitted peers --------------------------------------------------------


@pytest.mark.parametrize(
    "permitted",
    [
        [CLIENT],
        ["CLIENT.Example.NET"],
        ["*.example.net"],
        ["*.EXAMPLE.net."],
        ["other.example.net", "localhost"],
        ["127.0.0.1"],
        ["fingerprint"],
        ["bare-fingerprint"],
    ],
)
async def test_permitted_peer_is_allowed(pki: Pki, permitted: list[str]) -> None:
    info = tls.CertificateInfo.from_pem_file(pki.client.cert)
    forms = {
        "fingerprint": info.fingerprint.lower(),
        "bare-fingerprint": info.sha256.replace(":", ""),
    }
    profile = listener(pki.server, permitted_peers=tuple(forms.get(p, p) for p in permitted))
    server, client = await handshake_pair(profile, target(pki.ca.cert_path, pki.client))
    assert server.failure is None and client.failure is None
    assert server.received == b"hi"


@pytest.mark.parametrize(
    "permitted",
    [
        ["*.example.org"],
        ["*.net"],
        ["other.example.net"],
        ["example.net"],
        ["10.0.0.1"],
        ["fingerprint"],
    ],
)
async def test_permitted_peer_is_refused(pki: Pki, permitted: list[str]) -> None:
    other = tls.CertificateInfo.from_pem_file(pki.server.cert)
    peers = tuple(other.fingerprint if p == "fingerprint" else p for p in permitted)
    profile = listener(pki.server, permitted_peers=peers)
    server, client = await handshake_pair(profile, target(pki.ca.cert_path, pki.client))
    client_print = tls.CertificateInfo.from_pem_file(pki.client.cert).fingerprint
    assert_failed(
        server,
        Cat.PEER_NOT_PERMITTED,
        "(peer not permitted): presented names client.example.net, localhost, 127.0.0.1",
        client_print,
        f"permitted {peers[0]}",
    )
    # We refuse after the handshake, with no TLS alert to say so (like rsyslog).
    assert_failed(client, Cat.OTHER, "the server closed the connection without a TLS alert")


async def test_permitted_peers_on_a_target_replace_the_host_name(pki: Pki) -> None:
    # rsyslog's x509/name: the target is an address, the certificate names a host.
    ok = target(pki.ca.cert_path, permitted_peers=(SERVER,))
    assert not tls.client_context(ok, "10.9.8.7").check_hostname
    server, client = await handshake_pair(listener(pki.server), ok, "10.9.8.7")
    assert server.failure is None and client.failure is None
    refused = target(pki.ca.cert_path, permitted_peers=("*.example.org",))
    _, client = await handshake_pair(listener(pki.server), refused, "10.9.8.7")
    assert_failed(
        client,
        Cat.PEER_NOT_PERMITTED,
        "presented names server.example.net",
        "permitted *.example.org",
    )


async def test_permitted_peers_on_a_listener_ask_for_a_client_certificate(pki: Pki) -> None:
    server, _ = await handshake_pair(
        listener(pki.server, permitted_peers=(CLIENT,)), target(pki.ca.cert_path)
    )
    assert_failed(server, Cat.NO_CLIENT_CERT)


def test_check_peer_names(pki: Pki) -> None:
    def der(files: CertFiles) -> bytes:
        return ssl.PEM_cert_to_DER_cert(files.cert.read_text())

    def allowed(permitted: str, files: CertFiles) -> bool:
        return tls.check_peer(TlsProfile(permitted_peers=(permitted,)), der(files)) is None

    deep = pki.ca.issue("a.b.example.net", san=["DNS:a.b.example.net"])
    wild = pki.ca.issue("*.example.com", san=["DNS:*.example.com"], stem="wild")
    legacy = pki.ca.issue("Legacy.Example.Net", san=False)
    assert allowed("*.b.example.net", deep)
    assert not allowed("*.example.net", deep)  # one label only (RFC 6125)
    assert allowed("x.example.com", wild)  # a presented wildcard covers one label
    assert not allowed("x.y.example.com", wild)
    assert allowed("*.example.com", wild)
    assert allowed("legacy.example.net", legacy)  # the CN, when there is no SAN
    assert not allowed("localhost", legacy)
    assert tls.check_peer(TlsProfile(), None) is None  # no list: nothing to check
    reason = tls.check_peer(TlsProfile(permitted_peers=(CLIENT,)), None)
    assert reason == f"peer not permitted: it presented no certificate; permitted {CLIENT}"
    unreadable = tls.check_peer(TlsProfile(permitted_peers=(CLIENT,)), b"not-a-cert")
    assert unreadable is not None and "its certificate cannot be read" in unreadable


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("sha256:12:34", "64 hex digits"),
        ("sha1:" + "ab:" * 19 + "ab", "neither a host name"),
        ("a.*.example.net", "neither a host name"),
        ("host name", "neither a host name"),
    ],
)
def test_bad_permitted_peer(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TlsProfile(permitted_peers=(entry,))


# -- configuration errors ---------------------------------------------------


def encrypted_key(files: CertFiles, path: Path) -> Path:
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    encryption = serialization.BestAvailableEncryption(b"secret")
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def test_load_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    expired = pki.ca.issue(
        "old", not_before=now - timedelta(days=9), not_after=now - timedelta(days=2)
    )
    early = pki.ca.issue(
        "early", not_before=now + timedelta(days=1), not_after=now + timedelta(days=9)
    )
    cases: list[tuple[TlsProfile, str]] = [
        (TlsProfile(cert=missing, key=pki.server.key), f"{missing}: no such file"),
        (TlsProfile(cert=pki.server.cert, key=missing), f"{missing}: no such file"),
        (
            TlsProfile(cert=pki.server.cert, key=pki.client.key),
            f"{pki.client.key}: the private key does not match the certificate in "
            f"{pki.server.cert}",
        ),
        (TlsProfile(cert=garbage, key=pki.server.key), f"{garbage}: no PEM certificate"),
        (TlsProfile(cert=pki.server.cert, key=garbage), f"{garbage}: no usable PEM private key"),
        (TlsProfile(cert=pki.server.cert), f"{pki.server.cert}: no usable PEM private key"),
        (
            TlsProfile(cert=pki.server.cert, key=encrypted_key(pki.server, tmp_path / "enc.key")),
            "the private key is encrypted",
        ),
        (
            TlsProfile(cert=expired.cert, key=expired.key),
            f"{expired.cert}: certificate CN=old expired on {stamp(expired.not_after)}, "
            "2 days ago: renew it",
        ),
        (
            TlsProfile(cert=early.cert, key=early.key),
            f"{early.cert}: certificate CN=early is not valid until "
            f"{stamp(early.not_before)}: is the clock right?",
        ),
        (dataclasses.replace(listener(pki.server), ca=garbage), f"{garbage}: no PEM certificate"),
        (dataclasses.replace(listener(pki.server), ca=missing), f"{missing}: no such file"),
        (listener(pki.server, ciphers="NO-SUCH-CIPHER"), "OpenSSL knows no cipher"),
        (TlsProfile(), "a TLS listener needs a certificate"),
        (
            TlsProfile(cert=pki.server.cert, key=pki.server.key, require_client_cert=True),
            "needs ca",
        ),
        (
            listener(pki.server, require_client_cert=True, verify=False),
            "verify = false cannot be combined",
        ),
    ]
    for profile, message in cases:
        with pytest.raises(ConfigError) as caught:
            tls.server_context(profile, now=now)
        assert message in str(caught.value)
        assert "\n" not in str(caught.value)
    # A target checks its own certificate the same way.
    with pytest.raises(ConfigError, match="expired on"):
        tls.client_context(target(pki.ca.cert_path, expired), SERVER, now=now)
    with pytest.raises(ConfigError, match="no host name"):
        tls.client_context(target(pki.ca.cert_path), "")


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"min_version": "1.1"}, "min_version"),
        ({"key": Path("k.pem")}, "cert"),
        ({"expiry_warning_days": -1}, "expiry_warning_days"),
        ({"ciphers": " "}, "ciphers"),
    ],
)
def test_bad_profile(settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TlsProfile(**settings)  # type: ignore[arg-type]
    assert caught.value.key == key


# -- certificates and expiry ------------------------------------------------


def test_certificate_info(pki: Pki) -> None:
    info = tls.CertificateInfo.from_pem_file(pki.server.cert)
    assert info.source == str(pki.server.cert)
    assert info.subject == "CN=server.example.net" and info.issuer == "CN=Relay Test CA"
    assert info.san_dns == (SERVER, "localhost") and info.san_ips == (LOOPBACK,)
    assert info.not_after == pki.server.not_after.replace(microsecond=0)
    der = ssl.PEM_cert_to_DER_cert(pki.server.cert.read_text())
    assert tls.CertificateInfo.from_der(der, "peer x").sha256 == info.sha256
    assert len(info.sha256) == 95 and info.fingerprint.startswith("sha256:")


def test_expiry_warning_names_file_and_date(pki: Pki) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    soon = pki.ca.issue("soon.example.net", now=now, valid_for=timedelta(days=10))
    gone = pki.ca.issue(
        "gone.example.net", not_before=now - timedelta(days=90), not_after=now - timedelta(days=5)
    )
    infos = [tls.CertificateInfo.from_pem_file(p) for p in (soon.cert, pki.server.cert, gone.cert)]
    lines = tls.expiry_warnings(infos, now, 30)
    assert lines == [
        f"certificate {soon.cert} (CN=soon.example.net) expires on {day(soon.not_after)} "
        f"{soon.not_after:%H:%M:%S} UTC, in 10 days",
        f"certificate {gone.cert} (CN=gone.example.net) expired on {day(gone.not_after)} "
        f"{gone.not_after:%H:%M:%S} UTC, 5 days ago",
    ]
    assert tls.expiry_warnings(infos[:1], now, 9) == []
    assert infos[0].seconds_left(now) == 10 * 86400


# -- reloading ----------------------------------------------------------------


async def test_reload_keeps_old_context_on_bad_material_and_switches_on_good(pki: Pki) -> None:
    profile = listener(pki.server)
    reloadable = tls.ReloadableContext(profile, server_side=True)
    first = reloadable.context
    client_profile = target(pki.ca.cert_path)
    client_ctx = tls.client_context(client_profile, SERVER)

    async def presented() -> str:
        _, client = await connect(
            reloadable.context, profile, tls_client(client_ctx, client_profile)
        )
        assert client.failure is None and client.peer_cert is not None
        return tls.CertificateInfo.from_der(client.peer_cert).sha256

    before = await presented()
    assert not reloadable.files_changed()
    # A half-written renewal: the new certificate is there, the key is still the old one.
    renewed = pki.ca.issue(SERVER, stem="renewed")
    pki.server.cert.write_bytes(renewed.cert.read_bytes())
    assert reloadable.files_changed()
    reason = reloadable.reload()
    assert reason is not None
    assert f"{pki.server.key}: the private key does not match" in reason
    assert "keeping the previous certificates" in reason
    assert reloadable.last_error == reason
    assert not reloadable.files_changed()  # no retry until the files change again
    assert reloadable.context is first
    assert await presented() == before
    # Garbage is refused the same way.
    pki.server.key.write_text("garbage")
    assert reloadable.files_changed()
    assert "no usable PEM private key" in (reloadable.reload() or "")
    assert reloadable.context is first
    # The key arrives: the next connection gets the new certificate.
    pki.server.key.write_bytes(renewed.key.read_bytes())
    assert reloadable.files_changed()
    assert reloadable.reload() is None
    assert reloadable.context is not first and not reloadable.files_changed()
    assert reloadable.last_error is None
    after = await presented()
    assert after != before and after == tls.CertificateInfo.from_pem_file(renewed.cert).sha256


async def test_established_connection_survives_reload(pki: Pki) -> None:
    profile = listener(pki.server)
    reloadable = tls.ReloadableContext(profile, server_side=True)
    client_profile = target(pki.ca.cert_path)
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, reloadable.context, server_side=True)
    client = trio.SSLStream(b, tls.client_context(client_profile, SERVER), server_hostname=SERVER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    renewed = pki.ca.issue(SERVER, stem="renewed")
    assert reloadable.reload(listener(renewed)) is None
    assert reloadable.profile.cert == renewed.cert
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"<13>still here")
        assert await server.receive_some(100) == b"<13>still here"


def test_reloadable_expiry_warnings(pki: Pki) -> None:
    now = datetime.now(UTC)
    soon = pki.ca.issue("soon.example.net", now=now, valid_for=timedelta(days=10))
    reloadable = tls.ReloadableContext(
        target(pki.ca.cert_path, soon), server_side=False, server_hostname=SERVER
    )
    assert [info.source for info in reloadable.certificates] == [
        str(soon.cert),
        str(pki.ca.cert_path),
    ]
    (line,) = reloadable.expiry_warnings(now)
    assert str(soon.cert) in line and "in 10 days" in line

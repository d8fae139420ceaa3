"""relay/tlswire.py: the handshakes around relay.tls, over real loopback TLS."""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from relay.stats import Counters, LogLimit
from relay.tls.certs import CertificateInfo
from relay.tls.context import ReloadableContext
from relay.tls.profile import TlsProfile
from relay.tls.stream import (
    COUNTERS,
    HandshakeError,
    PeerCertificates,
    TlsAcceptor,
    TlsStream,
    connect,
)
from tests.certs import CertificateAuthority


def test_failure_log_one_line_per_interval_then_the_count() -> None:
    failures = LogLimit(60, "failures from this address")
    assert failures.line("10.0.0.5 unknown_ca", "x", now=0) == "x"
    assert failures.line("10.0.0.5 unknown_ca", "x", now=30) is None
    assert failures.line("10.0.0.6 unknown_ca", "y", now=30) == "y"
    assert failures.line("10.0.0.5 unknown_ca", "x", now=59) is None
    assert failures.line("10.0.0.5 unknown_ca", "x", now=61) == (
        "x (2 more failures from this address not logged)"
    )


def test_peer_certificate_expiring_is_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority.create(tmp_path)
    leaf = ca.issue("a.example.net", valid_for=timedelta(days=3))
    der = CertificateInfo.from_pem_file(leaf.cert)
    der_bytes = ssl.PEM_cert_to_DER_cert(leaf.cert.read_text())
    peers = PeerCertificates(days=30)
    with caplog.at_level(logging.WARNING, "relay.tls"):
        peers.saw(der_bytes, "10.0.0.5:1234")
        peers.saw(der_bytes, "10.0.0.5:1235")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "of peer 10.0.0.5:1234" in lines[0] and der.subject in lines[0]


async def _serve_once(acceptor: TlsAcceptor, task_status: trio.TaskStatus[int]) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    ssl_stream = await acceptor.accept(stream, "127.0.0.1:1")
    if ssl_stream is not None:
        await ssl_stream.send_all(b"hello")
        await ssl_stream.aclose()
    await listeners[0].aclose()


async def test_client_names_the_mismatch_and_server_counts_nothing(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    server = ca.issue("wrong.example.net", san=["DNS:wrong.example.net"])
    counters = Counters("input", "in", COUNTERS)
    acceptor = TlsAcceptor("in", TlsProfile(cert=server.cert, key=server.key), counters)
    client = ReloadableContext(
        TlsProfile(ca=server.ca), server_side=False, server_hostname="localhost"
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_once, acceptor)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(HandshakeError) as caught:
            await connect(stream, client, "localhost", f"localhost:{port}")
    failure = caught.value.failure
    assert failure.category == "name_mismatch"
    assert "expected localhost, the server presented wrong.example.net" in failure.line


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"]
)
async def test_refused_client_is_counted_by_category(
    tmp_path: Path, version: ssl.TLSVersion
) -> None:
    ca = CertificateAuthority.create(tmp_path / "a")
    server = ca.issue("relay.example.net")
    stranger = CertificateAuthority.create(tmp_path / "b", "Other CA").issue("x.example.net")
    counters = Counters("input", "in", COUNTERS)
    profile = TlsProfile(cert=server.cert, key=server.key, ca=server.ca, require_client_cert=True)
    acceptor = TlsAcceptor("in", profile, counters)
    client = ReloadableContext(
        TlsProfile(cert=stranger.cert, key=stranger.key, ca=server.ca),
        server_side=False,
        server_hostname="localhost",
        now=datetime.now(UTC),
    )
    client.context.maximum_version = version
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_once, acceptor)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if version is ssl.TLSVersion.TLSv1_3:
            # The server judges our certificate after our Finished: the
            # handshake completes, the refusal comes with the first read.
            ssl_stream = await connect(stream, client, "localhost", f"localhost:{port}")
            try:
                assert ssl_stream.version() == "TLSv1.3"
                with pytest.raises(trio.BrokenResourceError):
                    await ssl_stream.receive_some(10)
            finally:
                await trio.aclose_forcefully(ssl_stream)
        else:  # TLS 1.2: within the handshake, with the server's alert
            with pytest.raises(HandshakeError) as caught:
                await connect(stream, client, "localhost", f"localhost:{port}")
            assert caught.value.failure.category == "unknown_ca"
    assert counters["tls_failures"] == 1 and counters["tls_unknown_ca"] == 1


async def test_a_read_takes_every_record_at_hand_then_eof(tmp_path: Path) -> None:
    """rsyslog writes a TLS record per message: 1,000 records written before the
    first read come in a few reads, not 1,000 (trio's SSLStream alone returns
    one record per read); close_notify after them is still an EOF."""
    ca = CertificateAuthority.create(tmp_path)
    server = ca.issue("relay.example.net")
    acceptor = TlsAcceptor(
        "in", TlsProfile(cert=server.cert, key=server.key), Counters("input", "in", COUNTERS)
    )
    client = ReloadableContext(
        TlsProfile(ca=server.ca), server_side=False, server_hostname="localhost"
    )
    records = [b"<13>record %d\n" % i for i in range(1000)]
    written = trio.Event()

    async def serve(task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        ssl_stream = await acceptor.accept(await listeners[0].accept(), "127.0.0.1:1")
        assert ssl_stream is not None
        for record in records:
            await ssl_stream.send_all(record)  # one record each
        await ssl_stream.aclose()
        written.set()
        await listeners[0].aclose()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve)
        stream = TlsStream(
            await connect(await trio.open_tcp_stream("127.0.0.1", port), client, "localhost", "x")
        )
        await written.wait()
        reads: list[bytes] = []
        while data := await stream.receive_some(256 * 1024):
            reads.append(data)
        await stream.aclose()
    assert b"".join(reads) == b"".join(records)
    assert len(reads) <= 10, f"{len(reads)} reads for 1,000 records"

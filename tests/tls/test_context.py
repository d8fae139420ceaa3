"""relay/tls.py: contexts and permitted peers, over real loopback TLS.

Every handshake here is a real one between two ``trio.SSLStream`` over TCP on
127.0.0.1, with certificates minted for the test (tests/certs.py, through
tests/tlshelpers.py). The failures themselves are tested in
tests/tls/test_failures.py.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization

from relay.errors import ConfigError
from relay.tls import certs as tlscerts
from relay.tls import context as tls
from relay.tls.context import TlsProfile
from relay.tls.failures import HandshakeCategory as Cat
from tests.certs import CertFiles
from tests.tlshelpers import (
    BOTH_VERSIONS,
    CLIENT,
    LOOPBACK,
    SERVER,
    Pki,
    assert_failed,
    connect,
    handshake_pair,
    listener,
    target,
    tls_client,
)

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
    assert tlscerts.CertificateInfo.from_der(server.peer_cert).common_name == CLIENT
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
    pinned = tlscerts.CertificateInfo.from_pem_file(stranger.cert).fingerprint
    server, client = await handshake_pair(
        listener(stranger), TlsProfile(verify=False, permitted_peers=(pinned,))
    )
    assert server.failure is None and client.failure is None
    other = tlscerts.CertificateInfo.from_pem_file(pki.server.cert).fingerprint
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
    info = tlscerts.CertificateInfo.from_pem_file(pki.client.cert)
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
    other = tlscerts.CertificateInfo.from_pem_file(pki.server.cert)
    peers = tuple(other.fingerprint if p == "fingerprint" else p for p in permitted)
    profile = listener(pki.server, permitted_peers=peers)
    server, client = await handshake_pair(profile, target(pki.ca.cert_path, pki.client))
    client_print = tlscerts.CertificateInfo.from_pem_file(pki.client.cert).fingerprint
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


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


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
        return tlscerts.CertificateInfo.from_der(client.peer_cert).sha256

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
    assert after != before and after == tlscerts.CertificateInfo.from_pem_file(renewed.cert).sha256


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


def test_load_files_checks_ciphers_like_the_start(pki: Pki) -> None:
    """`relay check` says what starting the listener or target would."""
    for ciphers in ("NO-SUCH-CIPHER", "5", "ECDHE\0"):
        profile = listener(pki.server, ciphers=ciphers)
        [problem] = tls.load_files(profile)
        assert problem.key == "ciphers" and "OpenSSL knows no cipher" in problem.message
        with pytest.raises(ConfigError, match="OpenSSL knows no cipher"):
            tls.server_context(profile)
    assert tls.load_files(listener(pki.server, ciphers="ECDHE+AESGCM")) == []

"""relay/tlscerts.py: what a certificate says, and when it expires."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

from relay import tlscerts
from tests.tlshelpers import LOOPBACK, SERVER, Pki, day


def test_certificate_info(pki: Pki) -> None:
    info = tlscerts.CertificateInfo.from_pem_file(pki.server.cert)
    assert info.source == str(pki.server.cert)
    assert info.subject == "CN=server.example.net" and info.issuer == "CN=Relay Test CA"
    assert info.san_dns == (SERVER, "localhost") and info.san_ips == (LOOPBACK,)
    assert info.not_after == pki.server.not_after.replace(microsecond=0)
    der = ssl.PEM_cert_to_DER_cert(pki.server.cert.read_text())
    assert tlscerts.CertificateInfo.from_der(der, "peer x").sha256 == info.sha256
    assert len(info.sha256) == 95 and info.fingerprint.startswith("sha256:")


def test_expiry_warning_names_file_and_date(pki: Pki) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    soon = pki.ca.issue("soon.example.net", now=now, valid_for=timedelta(days=10))
    gone = pki.ca.issue(
        "gone.example.net", not_before=now - timedelta(days=90), not_after=now - timedelta(days=5)
    )
    infos = [
        tlscerts.CertificateInfo.from_pem_file(p) for p in (soon.cert, pki.server.cert, gone.cert)
    ]
    lines = tlscerts.expiry_warnings(infos, now, 30)
    assert lines == [
        f"certificate {soon.cert} (CN=soon.example.net) expires on {day(soon.not_after)} "
        f"{soon.not_after:%H:%M:%S} UTC, in 10 days",
        f"certificate {gone.cert} (CN=gone.example.net) expired on {day(gone.not_after)} "
        f"{gone.not_after:%H:%M:%S} UTC, 5 days ago",
    ]
    assert tlscerts.expiry_warnings(infos[:1], now, 9) == []
    assert infos[0].seconds_left(now) == 10 * 86400

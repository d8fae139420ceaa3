"""relay/tlscerts.py: what a certificate says, and when it expires."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.tls import certs as tlscerts
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


def test_read_file_reports_every_failure_as_one_line(pki: Pki, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    cases = {
        tmp_path / "missing.pem": "missing.pem: no such file",
        tmp_path / "nul\0.pem": "nul\\x00.pem: cannot read it: embedded null byte",
        tmp_path: f"{tmp_path}: cannot read it: it is a directory, not a file",
        fifo: "fifo.pem: cannot read it: not a regular file",  # opening it must not block
        Path("/dev/zero"): "/dev/zero: cannot read it: not a regular file",
        pki.server.cert / "x": "cannot read it: Not a directory",
        tmp_path / "a\nb.pem": "a\\nb.pem: no such file",
    }
    if os.geteuid() != 0:  # root reads it anyway
        cases[unreadable] = "cannot read it: Permission denied"
    for path, says in cases.items():
        with pytest.raises(ConfigError) as caught:
            tlscerts.read_file(path, "ca")
        assert caught.value.key == "ca"
        assert says in caught.value.message and "\n" not in caught.value.message
    assert tlscerts.read_file(pki.server.cert, "cert") == pki.server.cert.read_bytes()


def test_read_file_refuses_a_huge_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlscerts, "MAX_FILE_BYTES", 1024 * 1024)
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        tlscerts.read_file(big, "ca")
    big.write_bytes(b"x" * (1024 * 1024))
    assert len(tlscerts.read_file(big, "ca")) == 1024 * 1024

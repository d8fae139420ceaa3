"""Certificates minted at test time with ``cryptography``, written as PEM files.

What rsyslog's ossl driver accepted in both roles (docs/TESTING.md): a
CA, and leaf certificates with ``subjectAltName=DNS:<name>,DNS:localhost,
IP:127.0.0.1`` and ``extendedKeyUsage=serverAuth,clientAuth``. Every leaf made
here has that shape unless a variant asks otherwise, so the same files serve
the unit tests (tests/tls/test_context.py) and the rsyslog interop tests.

    ca = CertificateAuthority.create(tmp_path)
    server = ca.issue("server.example.net")   # server.example.net.pem and .key
    expired = ca.issue("old.example.net", not_after=now - timedelta(days=1))
    stranger = CertificateAuthority.create(tmp_path, "Other CA").issue("x.example.net")
    cn_only = ca.issue("legacy.example.net", san=False)

Keys are ECDSA P-256 by default (a few hundred microseconds each, where an RSA
2048 key takes tens of milliseconds); rsyslog 8.2302's ossl driver took them
as server and as client, over TLS 1.2 and 1.3. ``key_type="rsa"`` is there
for a peer that wants RSA. Time is passed in (``now``) where a test cares about dates.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Long enough that no test run meets the end, short enough to look like a real cert.
DEFAULT_VALIDITY = timedelta(days=365)
# Issued a little in the past, as real CAs do, so a few seconds of clock
# difference between minting and checking never makes a cert "not yet valid".
BACKDATE = timedelta(minutes=5)


@dataclasses.dataclass(frozen=True, slots=True)
class CertFiles:
    """One leaf: its PEM certificate and key, and the CA bundle that signed it."""

    name: str
    cert: Path
    key: Path
    ca: Path
    not_before: datetime
    not_after: datetime


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_key(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("._") or "cert"


def _unused_stem(directory: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``...: a second leaf never overwrites the first."""
    candidate, n = stem, 1
    while (directory / f"{candidate}.pem").exists() or (directory / f"{candidate}.key").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


@dataclasses.dataclass(slots=True)
class CertificateAuthority:
    """A self-signed CA that issues leaves into ``directory``."""

    directory: Path
    name: str
    key: PrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path

    @classmethod
    def create(
        cls,
        directory: Path,
        name: str = "Relay Test CA",
        *,
        now: datetime | None = None,
        key_type: KeyType = "ec",
    ) -> CertificateAuthority:
        now = now or datetime.now(UTC)
        key = new_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + 10 * DEFAULT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        stem = _unused_stem(directory, _file_stem(name))
        return cls(
            directory=directory,
            name=name,
            key=key,
            cert=cert,
            cert_path=write_cert(cert, directory / f"{stem}.pem"),
            key_path=write_key(key, directory / f"{stem}.key"),
        )

    def issue(
        self,
        name: str,
        *,
        san: bool | list[str] = True,
        now: datetime | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        valid_for: timedelta | None = None,
        stem: str | None = None,
        key_type: KeyType = "ec",
    ) -> CertFiles:
        """Issue a leaf for ``name`` and write ``<stem>.pem`` and ``<stem>.key``.

        ``stem`` defaults to ``name`` (made file-safe), with ``-2``, ``-3``...
        appended if those files exist already.

        ``san``: True for ``DNS:<name>, DNS:localhost, IP:127.0.0.1`` (what
        rsyslog accepted), False for none (the name is then only the CN), or
        an explicit list of ``DNS:...``/``IP:...`` entries. Validity is
        ``not_before``..``not_after``; ``valid_for`` sets the end relative to
        ``now`` (e.g. ``timedelta(days=10)`` for "expiring in 10 days").
        """
        now = now or datetime.now(UTC)
        start = not_before or now - BACKDATE
        end = not_after or now + (valid_for if valid_for is not None else DEFAULT_VALIDITY)
        key = new_key(key_type)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        entries = [f"DNS:{name}", "DNS:localhost", "IP:127.0.0.1"] if san is True else san or []
        if entries:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(e) for e in entries]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = stem or _unused_stem(self.directory, _file_stem(name))
        return CertFiles(
            name=name,
            cert=write_cert(cert, self.directory / f"{stem}.pem"),
            key=write_key(key, self.directory / f"{stem}.key"),
            ca=self.cert_path,
            not_before=start,
            not_after=end,
        )


def _general_name(entry: str) -> x509.GeneralName:
    kind, _, value = entry.partition(":")
    if kind == "DNS":
        return x509.DNSName(value)
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    raise ValueError(f"SAN entry must be DNS:<name> or IP:<address>, not {entry!r}")

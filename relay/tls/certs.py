"""Certificates as an operator sees them: names, fingerprints, dates, expiry.

:class:`CertificateInfo` describes one certificate: of a file (our own, a CA
bundle: :func:`load_pem_certificates`) or of a peer. :mod:`relay.tls.context` loads
them into its contexts and checks permitted peers against them;
:func:`expiry_warnings` says which expire soon.

``cryptography`` only reads certificates here (names, fingerprints, dates);
the ``ssl`` module does the TLS (:mod:`relay.tls.context`).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from relay.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where a certificate is read, not at the top: it
# adds 9 MiB to the resident memory of every relay, with TLS or without.


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What an operator needs to know about one certificate.

    ``source`` names where it came from: a file path, or e.g. ``peer
    10.0.0.5:41234``. ``sha256`` is the fingerprint of the DER certificate as
    ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` prints).
    """

    source: str
    subject: str
    issuer: str
    common_name: str | None
    san_dns: tuple[str, ...]
    san_ips: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    sha256: str

    @classmethod
    def from_certificate(cls, cert: x509.Certificate, source: str) -> CertificateInfo:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = tuple(san.get_values_for_type(x509.DNSName))
            ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns, ips = (), ()
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = cns[0].value if cns else None
        return cls(
            source=source,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            common_name=common_name if isinstance(common_name, str) else None,
            san_dns=dns,
            san_ips=ips,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        )

    @classmethod
    def from_der(cls, der: bytes, source: str = "peer certificate") -> CertificateInfo:
        """Read a DER certificate (what ``getpeercert(binary_form=True)`` returns)."""
        from cryptography import x509

        return cls.from_certificate(x509.load_der_x509_certificate(der), source)

    @classmethod
    def from_pem_file(cls, path: Path) -> CertificateInfo:
        """The first certificate in a PEM file (the leaf, in a cert+chain file)."""
        return load_pem_certificates(path)[0]

    @property
    def fingerprint(self) -> str:
        """The fingerprint as a ``permitted_peers`` entry: ``sha256:AB:CD:...``."""
        return f"sha256:{self.sha256}"

    @property
    def names(self) -> tuple[str, ...]:
        """The identities it presents: SAN DNS names and addresses, else its CN (RFC 6125)."""
        if self.san_dns:
            return self.san_dns + self.san_ips
        cn = (self.common_name,) if self.common_name else ()
        return cn + self.san_ips

    def describe_names(self) -> str:
        if not self.names:
            return "no names"
        text = ", ".join(printable(n) for n in self.names)
        return text if self.san_dns else f"{text} (CN, no subjectAltName DNS names)"

    def seconds_left(self, now: datetime) -> float:
        """Seconds until it expires (negative once it has): ``tls_cert_expiry_seconds``."""
        return (self.not_after - now).total_seconds()


def load_pem_certificates(path: Path, key: str = "cert") -> list[CertificateInfo]:
    """Every certificate in a PEM file, in order; a ConfigError naming the file if none."""
    data = read_file(path, key)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(
            f"{path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)", key=key
        )
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
        return [CertificateInfo.from_certificate(cert, str(path)) for cert in certs]
    except ValueError as exc:
        raise ConfigError(f"{path}: a certificate in it cannot be read: {exc}", key=key) from None


def read_file(path: Path, key: str) -> bytes:
    """The contents of the file config ``key`` names; a ConfigError naming it if unreadable.

    Every way reading can fail is that one error, with one line why: the OS's
    refusal, a NUL in the path (ValueError), a name the file system cannot
    encode (UnicodeError), a FIFO or device (which would block, or never end),
    a file too large to be a certificate or CA bundle.
    """
    where = printable(str(path))
    try:
        return _read_regular_file(path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file", key=key) from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}", key=key) from None
    except Exception as exc:  # ValueError, UnicodeError: whatever it is, one line
        raise ConfigError(f"{where}: cannot read it: {printable(str(exc))}", key=key) from None


# A CA bundle holds a few hundred certificates (Mozilla's: about 220 KiB); a
# file many times that size is not one, and must not be read into memory whole.
MAX_FILE_BYTES = 16 * 1024 * 1024


def _read_regular_file(path: Path) -> bytes:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on a file).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("it is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        chunks = []
        left = MAX_FILE_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MiB: not a PEM file")
    return b"".join(chunks)


def expiry_warnings(infos: Iterable[CertificateInfo], now: datetime, days: int) -> list[str]:
    """One line per certificate that expires within ``days`` of ``now``, or has expired."""
    lines = []
    for info in infos:
        left = info.not_after - now
        what = f"certificate {info.source} ({printable(info.subject)})"
        if left <= timedelta(0):
            lines.append(
                f"{what} expired on {format_date(info.not_after)}, {format_span(-left)} ago"
            )
        elif left <= timedelta(days=days):
            lines.append(f"{what} expires on {format_date(info.not_after)}, in {format_span(left)}")
    return lines


def format_date(when: datetime) -> str:
    """``when`` as the log lines show it: ``2025-11-22 10:00:00 UTC``."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_span(delta: timedelta) -> str:
    """A time span in words: whole days (rounded), or hours under a day."""
    if delta >= timedelta(days=1):
        days = round(delta / timedelta(days=1))
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"


def printable(text: str) -> str:
    """Certificate names come from peers: never let one break the log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")

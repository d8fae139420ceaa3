"""TLS for the TLS and RELP-over-TLS transports (RFC 5425): contexts, peer checks, clear errors.

One :class:`TlsProfile` describes the TLS settings of any listener or target
(PAIN-POINTS 3.1: one schema everywhere). From it come the SSL contexts
(:func:`server_context`, :func:`client_context`, or a :class:`ReloadableContext`
that can swap in renewed certificates without touching established sessions),
the permitted-peers check after the handshake (:func:`check_peer`, the same
for plain TLS and RELP over TLS), and one actionable line for every failed
handshake (:func:`classify_handshake_error`, PAIN-POINTS 3.2).

A transport does::

    ssl_stream = trio.SSLStream(tcp_stream, reloadable.context, server_side=True)
    failure = await handshake(ssl_stream, profile, peer="10.0.0.5:41234")
    if failure is not None:
        log.warning("%s", failure.line)    # rate-limited per peer by the caller

The ``ssl`` module does the TLS; ``cryptography`` only reads certificates
(names, fingerprints, dates).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from relay.errors import ConfigError, RelayError

log = logging.getLogger("relay.tls")

# RFC 5425 §4.2 requires TLS 1.2 support; older versions are broken (RFC 8996).
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Rotation tooling renews at 30 days left (Let's Encrypt's default), so a warning
# from then on gives the operator time while renewal still has a chance to run.
DEFAULT_EXPIRY_WARNING_DAYS = 30
# A failed handshake leaves a TLS alert to send; a peer that does not read must
# not hold the connection (and its task) open for longer than this.
ALERT_SEND_TIMEOUT = 1.0
# Enough to show an operator what a plaintext sender wrote ("<13>Nov 22 ...").
PEEK_SIZE = 16


class TlsError(RelayError):
    """A TLS failure the relay detected itself (rather than OpenSSL)."""


class PeerNotPermittedError(TlsError):
    """The handshake succeeded but the peer is not in ``permitted_peers``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the profile ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TlsProfile:
    """The TLS settings of a listener or a target.

    ``ca`` is the CA bundle peers' certificates must chain to (None: the
    system's store, for targets). ``permitted_peers`` is an allow-list checked
    after the handshake: each entry is a ``sha256:AB:CD:...`` (or bare hex)
    fingerprint of the peer's certificate, an IP address, or a host name,
    optionally ``*.domain`` for exactly one more label (RFC 6125 §6.4.3),
    matched case-insensitively against the certificate's subjectAltName
    (its CN only when it has no DNS name). On a listener a non-empty list
    implies asking for a client certificate; on a target it replaces the
    host name check (rsyslog's ``x509/name`` semantics, where the target is
    often an address and the certificate names a host).

    ``verify = False`` (targets only) accepts any server certificate; it is
    logged once as a warning. A fingerprint in ``permitted_peers`` still pins
    the peer then (rsyslog's ``x509/fingerprint`` with a self-signed peer).
    ``ciphers`` is an OpenSSL cipher list for TLS 1.2; TLS 1.3 keeps OpenSSL's
    suites (Python's ssl cannot set them).
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    min_version: str = "1.2"
    require_client_cert: bool = False
    permitted_peers: tuple[str, ...] = ()
    verify: bool = True
    ciphers: str | None = None
    expiry_warning_days: int = DEFAULT_EXPIRY_WARNING_DAYS

    def __post_init__(self) -> None:
        if self.min_version not in MIN_VERSIONS:
            raise ConfigError(
                f'must be "1.2" or "1.3", not {self.min_version!r}', key="min_version"
            )
        for entry in self.permitted_peers:
            _parse_permitted(entry)
        if self.key is not None and self.cert is None:
            raise ConfigError("a key needs its cert", key="cert")
        if self.expiry_warning_days < 0:
            raise ConfigError("must be 0 or more", key="expiry_warning_days")
        if self.ciphers is not None and not self.ciphers.strip():
            raise ConfigError(
                "must not be empty (leave it out for OpenSSL's default)", key="ciphers"
            )


# -- certificates -----------------------------------------------------------


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
        text = ", ".join(_printable(n) for n in self.names)
        return text if self.san_dns else f"{text} (CN, no subjectAltName DNS names)"

    def seconds_left(self, now: datetime) -> float:
        """Seconds until it expires (negative once it has): ``tls_cert_expiry_seconds``."""
        return (self.not_after - now).total_seconds()


def load_pem_certificates(path: Path, key: str = "cert") -> list[CertificateInfo]:
    """Every certificate in a PEM file, in order; a ConfigError naming the file if none."""
    data = _read(path, key)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(
            f"{path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)", key=key
        )
    try:
        certs = x509.load_pem_x509_certificates(data)
        return [CertificateInfo.from_certificate(cert, str(path)) for cert in certs]
    except ValueError as exc:
        raise ConfigError(f"{path}: a certificate in it cannot be read: {exc}", key=key) from None


def expiry_warnings(infos: Iterable[CertificateInfo], now: datetime, days: int) -> list[str]:
    """One line per certificate that expires within ``days`` of ``now``, or has expired."""
    lines = []
    for info in infos:
        left = info.not_after - now
        what = f"certificate {info.source} ({_printable(info.subject)})"
        if left <= timedelta(0):
            lines.append(f"{what} expired on {_date(info.not_after)}, {_span(-left)} ago")
        elif left <= timedelta(days=days):
            lines.append(f"{what} expires on {_date(info.not_after)}, in {_span(left)}")
    return lines


def _date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(delta: timedelta) -> str:
    if delta >= timedelta(days=1):
        days = round(delta / timedelta(days=1))
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"


def _printable(text: str) -> str:
    """Certificate names come from peers: never let one break the log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# -- contexts ---------------------------------------------------------------

_warned_unverified: set[TlsProfile] = set()


def server_context(profile: TlsProfile, *, now: datetime | None = None) -> ssl.SSLContext:
    """The context for a TLS listener; ConfigError (one line, naming the file) if unusable."""
    return _build(profile, True, "", now or datetime.now(UTC))[0]


def client_context(
    profile: TlsProfile, server_hostname: str, *, now: datetime | None = None
) -> ssl.SSLContext:
    """The context for a TLS target; pass the same ``server_hostname`` to ``SSLStream``.

    The server's certificate must chain to ``ca`` (or the system store) and
    name ``server_hostname`` in its subjectAltName (CN only when it has none),
    unless ``permitted_peers`` is set: then the allow-list decides, after the
    handshake (:func:`check_peer`).
    """
    return _build(profile, False, server_hostname, now or datetime.now(UTC))[0]


def _build(
    profile: TlsProfile, server_side: bool, server_hostname: str, now: datetime
) -> tuple[ssl.SSLContext, tuple[CertificateInfo, ...]]:
    wants_client_cert = profile.require_client_cert or bool(profile.permitted_peers)
    if server_side:
        if profile.cert is None:
            raise ConfigError("a TLS listener needs a certificate (cert and key)", key="cert")
        if wants_client_cert and not profile.verify:
            raise ConfigError(
                "verify = false cannot be combined with require_client_cert or "
                "permitted_peers on a listener: Python's ssl cannot ask for a client "
                "certificate without verifying it",
                key="verify",
            )
        if wants_client_cert and profile.ca is None:
            raise ConfigError(
                "a listener that asks for client certificates needs ca, the bundle of "
                "the CAs that issue them",
                key="ca",
            )
    elif profile.verify and not profile.permitted_peers and not server_hostname:
        raise ConfigError("no host name to verify the server's certificate against", key="url")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSIONS[profile.min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    if profile.ciphers is not None:
        try:
            ctx.set_ciphers(profile.ciphers)
        except ssl.SSLError:
            raise ConfigError(
                f"{profile.ciphers!r}: OpenSSL knows no cipher in this list", key="ciphers"
            ) from None
    infos: list[CertificateInfo] = []
    if profile.cert is not None:
        infos += _load_own_certificate(ctx, profile.cert, profile.key, now)
    if profile.ca is not None:
        infos += _load_ca(ctx, profile.ca)
    elif not server_side and profile.verify:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if server_side:
        ctx.verify_mode = ssl.CERT_REQUIRED if wants_client_cert else ssl.CERT_NONE
    elif profile.verify:
        ctx.check_hostname = not profile.permitted_peers
        ctx.hostname_checks_common_name = True  # RFC 6125 §6.4.4: CN only without DNS SANs
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if profile not in _warned_unverified:
            _warned_unverified.add(profile)
            log.warning(
                "TLS verification is off (verify = false) for %s: its certificate is not "
                "checked, so anyone on the path can read and change the logs",
                server_hostname or "this target",
            )
    return ctx, tuple(infos)


class _EncryptedKeyError(Exception):
    pass


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a daemon.
    raise _EncryptedKeyError


def _load_own_certificate(
    ctx: ssl.SSLContext, cert: Path, key: Path | None, now: datetime
) -> list[CertificateInfo]:
    infos = load_pem_certificates(cert, "cert")
    for info in infos:
        if info.not_after <= now:
            raise ConfigError(
                f"{cert}: certificate {_printable(info.subject)} expired on "
                f"{_date(info.not_after)}, {_span(now - info.not_after)} ago: renew it",
                key="cert",
            )
        if info.not_before > now:
            raise ConfigError(
                f"{cert}: certificate {_printable(info.subject)} is not valid until "
                f"{_date(info.not_before)}: is the clock right?",
                key="cert",
            )
    key_file = key or cert
    _read(key_file, "key")
    try:
        ctx.load_cert_chain(cert, key, password=_refuse_password)
    except _EncryptedKeyError:
        raise ConfigError(
            f"{key_file}: the private key is encrypted; relay cannot ask for a passphrase "
            "(store it decrypted, readable only by relay)",
            key="key",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            what = f"the private key does not match the certificate in {cert}"
        else:
            what = "no usable PEM private key in it (-----BEGIN PRIVATE KEY-----)"
        raise ConfigError(f"{key_file}: {what}", key="key") from None
    except OSError as exc:
        raise ConfigError(f"{key_file}: cannot read it: {exc.strerror}", key="key") from None
    return infos


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> list[CertificateInfo]:
    if ca.is_dir():  # an OpenSSL hashed directory (c_rehash)
        ctx.load_verify_locations(capath=ca)
        return []
    infos = load_pem_certificates(ca, "ca")
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{ca}: cannot load the CA bundle: {exc}", key="ca") from None
    return infos


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", key=key) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}", key=key) from None


def load_files(profile: TlsProfile, *, now: datetime | None = None) -> list[ConfigError]:
    """Read a profile's files as the relay would (``relay check``): one error per problem.

    The cert (with its key) and the CA bundle are checked separately, so a
    profile with two bad files gets two lines.
    """
    now = now or datetime.now(UTC)
    errors = []
    if profile.cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            _load_own_certificate(ctx, profile.cert, profile.key, now)
        except ConfigError as exc:
            errors.append(exc)
    if profile.ca is not None:
        try:
            _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), profile.ca)
        except ConfigError as exc:
            errors.append(exc)
    return errors


def _file_stamps(profile: TlsProfile) -> tuple[bytes | None, ...]:
    # The contents, not mtime and size: a renewal can rewrite a file within one
    # timestamp tick with a same-size certificate. Three small files per poll.
    stamps: list[bytes | None] = []
    for path in (profile.cert, profile.key, profile.ca):
        try:
            data = path.read_bytes() if path is not None and path.is_file() else None
        except OSError:
            data = None
        stamps.append(None if data is None else hashlib.sha256(data).digest())
    return tuple(stamps)


class ReloadableContext:
    """The current SSLContext of one listener or target, swappable at run time.

    Each new connection takes :attr:`context`; an established one keeps the
    context it started with. :meth:`reload` re-reads the files (on SIGHUP, or
    when :meth:`files_changed` says so): if the new material is unusable (a
    half-written renewal, a key that does not match) the old context stays and
    the reason is returned for the caller to log and alert on (PAIN-POINTS 3.3);
    :attr:`last_error` keeps it until a reload succeeds.
    """

    def __init__(
        self,
        profile: TlsProfile,
        *,
        server_side: bool,
        server_hostname: str = "",
        now: datetime | None = None,
    ) -> None:
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._stamps = _file_stamps(profile)
        self._context, self._certificates = _build(
            profile, server_side, server_hostname, now or datetime.now(UTC)
        )
        self._profile = profile
        self.last_error: str | None = None

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def profile(self) -> TlsProfile:
        return self._profile

    @property
    def certificates(self) -> tuple[CertificateInfo, ...]:
        """Our certificate chain and the CA bundle, as loaded into :attr:`context`."""
        return self._certificates

    def reload(
        self, profile: TlsProfile | None = None, *, now: datetime | None = None
    ) -> str | None:
        """Load ``profile`` (default: the same files again); None, or why the old one stays."""
        profile = profile or self._profile
        # Stamped before reading: a file that changes while we read is seen again.
        stamps = _file_stamps(profile)
        try:
            context, certificates = _build(
                profile, self._server_side, self._server_hostname, now or datetime.now(UTC)
            )
        except ConfigError as exc:
            self._stamps = stamps  # retry when the files change again, not on every poll
            self.last_error = f"{exc}; keeping the previous certificates"
            return self.last_error
        self._context, self._certificates = context, certificates
        self._profile, self._stamps, self.last_error = profile, stamps, None
        return None

    def files_changed(self) -> bool:
        """Whether cert, key or CA file changed since the last :meth:`reload` (or start)."""
        return _file_stamps(self._profile) != self._stamps

    def expiry_warnings(self, now: datetime) -> list[str]:
        return expiry_warnings(self._certificates, now, self._profile.expiry_warning_days)


# -- permitted peers --------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclasses.dataclass(frozen=True, slots=True)
class _Permitted:
    kind: str  # "sha256", "ip", "name" or "wildcard" (value is then the parent domain)
    value: str
    text: str


@functools.lru_cache(maxsize=1024)  # checked on every connection
def _parse_permitted(entry: str) -> _Permitted:
    text = entry.strip().lower().rstrip(".")
    digits = text.removeprefix("sha256:").replace(":", "")
    if text.startswith("sha256:") or (_HEX64.fullmatch(digits) and len(text) in (64, 95)):
        if not _HEX64.fullmatch(digits):
            raise ConfigError(
                f"{entry!r}: a sha256 fingerprint has 64 hex digits", key="permitted_peers"
            )
        return _Permitted("sha256", digits, "sha256:" + bytes.fromhex(digits).hex(":").upper())
    with contextlib.suppress(ValueError):
        return _Permitted("ip", str(ipaddress.ip_address(text)), entry)
    if not _HOST.fullmatch(text):
        raise ConfigError(
            f"{entry!r} is neither a host name (optionally *.domain) nor a sha256:... fingerprint",
            key="permitted_peers",
        )
    if text.startswith("*."):
        return _Permitted("wildcard", text[2:], entry)
    return _Permitted("name", text, entry)


def _name_matches(permitted: _Permitted, presented: str) -> bool:
    name = presented.lower().rstrip(".")
    head, dot, parent = name.partition(".")
    if permitted.kind == "wildcard":  # "*.example.net": exactly one more label
        return bool(head and dot) and parent == permitted.value
    if name == permitted.value:
        return True
    # A presented "*.example.net" (RFC 6125 §6.4.3: only a whole left-most label).
    want_head, _, want_parent = permitted.value.partition(".")
    return head == "*" and bool(want_head and want_parent) and parent == want_parent


def _permits(permitted: _Permitted, info: CertificateInfo) -> bool:
    if permitted.kind == "sha256":
        return info.sha256.replace(":", "").lower() == permitted.value
    if permitted.kind == "ip":
        return permitted.value in info.san_ips
    return any(_name_matches(permitted, name) for name in info.names)


def check_peer(profile: TlsProfile, peer_cert_der: bytes | None) -> str | None:
    """After the handshake: None if ``permitted_peers`` allows this peer, else why not."""
    if not profile.permitted_peers:
        return None
    permitted = [_parse_permitted(entry) for entry in profile.permitted_peers]
    allowed = ", ".join(p.text for p in permitted)
    if peer_cert_der is None:
        return f"peer not permitted: it presented no certificate; permitted {allowed}"
    try:
        info = CertificateInfo.from_der(peer_cert_der)
    except ValueError as exc:
        return f"peer not permitted: its certificate cannot be read ({exc}); permitted {allowed}"
    if any(_permits(p, info) for p in permitted):
        return None
    return (
        f"peer not permitted: presented names {info.describe_names()} "
        f"({info.fingerprint}); permitted {allowed}"
    )


# -- handshake failures -----------------------------------------------------


class HandshakeCategory(enum.StrEnum):
    """Why a handshake failed; the label of ``tls_handshake_failures_total{reason}``."""

    UNKNOWN_CA = "unknown_ca"
    NAME_MISMATCH = "name_mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NO_CLIENT_CERT = "no_client_cert"
    PEER_NOT_PERMITTED = "peer_not_permitted"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    PLAINTEXT_ON_TLS_PORT = "plaintext_on_tls_port"
    OTHER = "other"


_WORDS = {
    HandshakeCategory.UNKNOWN_CA: "unknown CA",
    HandshakeCategory.NAME_MISMATCH: "name mismatch",
    HandshakeCategory.EXPIRED: "certificate expired",
    HandshakeCategory.NOT_YET_VALID: "certificate not yet valid",
    HandshakeCategory.NO_CLIENT_CERT: "no client certificate",
    HandshakeCategory.PEER_NOT_PERMITTED: "peer not permitted",
    HandshakeCategory.PROTOCOL_MISMATCH: "protocol mismatch",
    HandshakeCategory.PLAINTEXT_ON_TLS_PORT: "plaintext on the TLS port",
    HandshakeCategory.OTHER: "",
}


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """One failed handshake: its category and the line to log."""

    category: HandshakeCategory
    line: str
    peer: str
    role: str


# X509_V_ERR_* codes (openssl/x509_vfy.h) as SSLCertVerificationError.verify_code.
_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21, 24, 27}
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH_CODES = {62, 63, 64}
# OpenSSL reasons when the first bytes were not a TLS record.
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL"}
_PROTOCOL = {
    "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW", "VERSION_TOO_HIGH", "NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE",
    "NO_SHARED_SIGNATURE_ALGORITHMS", "NO_SUITABLE_SIGNATURE_ALGORITHM",
    "NO_SUITABLE_KEY_SHARE", "TLSV1_ALERT_INSUFFICIENT_SECURITY",
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK", "SSLV3_ALERT_HANDSHAKE_FAILURE",
}  # fmt: skip


def looks_like_plaintext(first_bytes: bytes) -> bool:
    """Whether a connection's first bytes are plaintext rather than a TLS record.

    Syslog starts with ``<`` (PRI) or a digit (RFC 6587 octet count), HTTP or
    a PROXY header with letters: all printable ASCII. A TLS record starts with
    its content type, 20-24 (0x16 0x03 for a ClientHello), which never is.
    """
    return bool(first_bytes) and 0x20 <= first_bytes[0] <= 0x7E


def classify_handshake_error(
    exc: BaseException,
    *,
    role: str,
    peer: str,
    profile: TlsProfile,
    peer_cert_der: bytes | None = None,
    expected_name: str | None = None,
    first_bytes: bytes | None = None,
    now: datetime | None = None,
) -> HandshakeFailure:
    """Turn whatever a handshake raised into a category and one line to act on.

    ``role`` is ours ("server" or "client"). Optional evidence sharpens the
    line: the peer's (unverified) certificate for its names and dates, the
    name we expected, the first bytes the peer sent (a peek, on a listener).
    """
    if role not in ("server", "client"):
        raise ValueError(f"role must be 'server' or 'client', not {role!r}")
    facts = _Facts(role, profile, peer_cert_der, expected_name, first_bytes, now)
    category, specifics = _diagnose(exc, facts)
    words = f" ({_WORDS[category]})" if _WORDS[category] else ""
    line = f"TLS {role} handshake with {peer} failed{words}: {specifics}"
    return HandshakeFailure(category, line, peer, role)


class _Facts:
    """What classification can draw on, read lazily (a failure flood must stay cheap)."""

    def __init__(
        self,
        role: str,
        profile: TlsProfile,
        peer_cert_der: bytes | None,
        expected_name: str | None,
        first_bytes: bytes | None,
        now: datetime | None,
    ) -> None:
        self.role, self.profile, self.expected_name = role, profile, expected_name
        self.first_bytes, self.now = first_bytes, now or datetime.now(UTC)
        self.them = "client" if role == "server" else "server"
        self.peer_cert: CertificateInfo | None = None
        if peer_cert_der is not None:
            with contextlib.suppress(ValueError):
                self.peer_cert = CertificateInfo.from_der(peer_cert_der)

    def own_cert(self) -> CertificateInfo | None:
        if self.profile.cert is None:
            return None
        try:
            return CertificateInfo.from_pem_file(self.profile.cert)
        except ConfigError:
            return None

    def ca_text(self) -> str:
        return f"our CA bundle {self.profile.ca}" if self.profile.ca else "the system CA store"

    def versions(self) -> str:
        return f"TLS {self.profile.min_version} to 1.3"


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _diagnose(exc: BaseException, f: _Facts) -> tuple[HandshakeCategory, str]:
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, PeerNotPermittedError):
            return HandshakeCategory.PEER_NOT_PERMITTED, cause.reason.removeprefix(
                "peer not permitted: "
            )
    if f.role == "server" and f.first_bytes and looks_like_plaintext(f.first_bytes):
        return HandshakeCategory.PLAINTEXT_ON_TLS_PORT, _plaintext_hint(f.first_bytes)
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _verify_failure(cause, f)
        if isinstance(cause, ssl.SSLEOFError):
            break
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return _ssl_failure(cause.reason, f)
    if any(isinstance(c, trio.TooSlowError) for c in causes):
        return HandshakeCategory.OTHER, "it did not finish in time"
    if any(isinstance(c, ssl.SSLEOFError | trio.BrokenResourceError) for c in causes):
        return HandshakeCategory.OTHER, _silent_close(f)
    return HandshakeCategory.OTHER, _printable(str(exc) or type(exc).__name__)


def _silent_close(f: _Facts) -> str:
    # What rsyslog 8.2302 (ossl) was seen to do: it closes without an alert when
    # the peer is not among its permitted peers, and over TLS 1.3 also when it
    # rejects a client certificate (after the client finished its handshake).
    if f.role == "server":
        return (
            "the client closed the connection without a TLS alert: a port probe, or a "
            "client that refused us silently (rsyslog does when our certificate's names "
            "are not among its permitted peers): its log says why"
        )
    ours = f" or rejects our certificate {f.profile.cert}" if f.profile.cert else ""
    return (
        "the server closed the connection without a TLS alert: it refused us silently "
        f"(rsyslog does when we are not among its permitted peers{ours}): its log says why"
    )


def _shown(first_bytes: bytes) -> str:
    return repr(first_bytes[:PEEK_SIZE])[2:-1] + ("..." if len(first_bytes) >= PEEK_SIZE else "")


def _plaintext_hint(first_bytes: bytes) -> str:
    return (
        f"the peer sent plaintext (starts with '{_shown(first_bytes)}'): is it configured for TLS?"
    )


def _verify_failure(err: ssl.SSLCertVerificationError, f: _Facts) -> tuple[HandshakeCategory, str]:
    code, message = err.verify_code, err.verify_message
    leaf = f.peer_cert
    theirs = f"the {f.them}'s certificate" + (f" {_printable(leaf.subject)}" if leaf else "")
    if code in _UNKNOWN_CA_CODES:
        if leaf and leaf.issuer == leaf.subject:
            how = "is self-signed"
        elif leaf:
            how = f"is issued by {_printable(leaf.issuer)}"
        else:
            how = "is issued by a CA"
        return HandshakeCategory.UNKNOWN_CA, (
            f"{theirs} {how}, which is not in {f.ca_text()} ({message})"
        )
    if code == _EXPIRED:
        if leaf and leaf.not_after <= f.now:
            return HandshakeCategory.EXPIRED, (
                f"{theirs} expired on {_date(leaf.not_after)}, {_span(f.now - leaf.not_after)} "
                f"ago (valid from {_date(leaf.not_before)})"
            )
        if leaf:
            return HandshakeCategory.EXPIRED, (
                f"a CA certificate in the {f.them}'s chain has expired ({theirs} itself is "
                f"valid until {_date(leaf.not_after)})"
            )
        return HandshakeCategory.EXPIRED, (
            f"{theirs} (or a CA certificate in its chain) has expired; OpenSSL does not "
            f"keep a rejected certificate, so see the dates in the {f.them}'s files"
        )
    if code == _NOT_YET_VALID:
        when = f" is not valid until {_date(leaf.not_before)}" if leaf else " is not valid yet"
        return HandshakeCategory.NOT_YET_VALID, f"{theirs}{when}: is its or our clock wrong?"
    if code in _NAME_MISMATCH_CODES:
        quoted = re.search(r"'(.*)'", message)
        expected = f.expected_name or (quoted.group(1) if quoted else "?")
        presented = leaf.describe_names() if leaf else "names not available"
        return HandshakeCategory.NAME_MISMATCH, (
            f"expected {_printable(expected)}, the {f.them} presented {presented}"
        )
    return HandshakeCategory.OTHER, f"{theirs} was rejected: {message} (X509 error {code})"


def _ssl_failure(reason: str, f: _Facts) -> tuple[HandshakeCategory, str]:
    # Alerts the peer sent us: it rejected *our* certificate (RFC 8446 §6.2).
    ours = f"our certificate {f.profile.cert}" if f.profile.cert else "our certificate"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        own = f.own_cert()
        issuer = f" ({_printable(own.issuer)})" if own else ""
        return HandshakeCategory.UNKNOWN_CA, (
            f"the {f.them} does not trust the CA that issued {ours}{issuer}: add it to the "
            f"{f.them}'s CA bundle"
        )
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        own = f.own_cert()
        dates = (
            f": it is valid from {_date(own.not_before)} to {_date(own.not_after)}" if own else ""
        )
        return HandshakeCategory.EXPIRED, f"the {f.them} says {ours} has expired{dates}"
    if reason == "SSLV3_ALERT_BAD_CERTIFICATE":
        return _bad_certificate_alert(f, ours)
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return HandshakeCategory.NO_CLIENT_CERT, (
            "the client sent no certificate and this listener requires one: give the client "
            "a cert and key"
        )
    # TLS 1.2 has no "certificate required" alert: a server missing our certificate
    # sends "handshake failure", as it does for no common cipher. We have its
    # certificate only if the negotiation got that far: then it is ours it wanted.
    late_refusal = f.role == "client" and f.peer_cert is not None and not f.profile.cert
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or (
        reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and late_refusal
    ):
        have = f"sent {ours}" if f.profile.cert else "has none configured (set cert and key)"
        return HandshakeCategory.NO_CLIENT_CERT, (
            f"the server requires a client certificate and this target {have}"
        )
    if reason in _NOT_TLS:
        if f.role == "server" and f.first_bytes:  # not plaintext either: _diagnose saw it
            return HandshakeCategory.OTHER, (
                f"the peer sent bytes that are not TLS (starts with '{_shown(f.first_bytes)}')"
            )
        if f.role == "server":
            return HandshakeCategory.PLAINTEXT_ON_TLS_PORT, (
                f"the peer does not speak TLS ({_reason_words(reason)}): is it configured for TLS?"
            )
        return HandshakeCategory.PROTOCOL_MISMATCH, (
            f"the server did not answer in TLS ({_reason_words(reason)}): is this a TLS port?"
        )
    if reason in _PROTOCOL:
        return HandshakeCategory.PROTOCOL_MISMATCH, _protocol_text(reason, f)
    return HandshakeCategory.OTHER, _reason_words(reason)


def _bad_certificate_alert(f: _Facts, ours: str) -> tuple[HandshakeCategory, str]:
    # OpenSSL sends "bad certificate" for a name mismatch and for not-yet-valid.
    own = f.own_cert()
    if own and own.not_before > f.now:
        return HandshakeCategory.NOT_YET_VALID, (
            f"the {f.them} rejected {ours}, which is not valid until {_date(own.not_before)}"
        )
    if f.role == "server" and own:
        return HandshakeCategory.NAME_MISMATCH, (
            f"the client rejected {ours} (bad certificate), most likely because the name "
            f"it connects to is not among ours: {own.describe_names()}"
        )
    return HandshakeCategory.OTHER, f"the {f.them} rejected {ours} (bad certificate)"


def _protocol_text(reason: str, f: _Facts) -> str:
    if reason in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE"):
        return f"the {f.them} offered no TLS version we accept ({f.versions()})"
    if reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "VERSION_TOO_HIGH"):
        return f"the {f.them} accepts none of the TLS versions we offer ({f.versions()})"
    if reason in ("NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE"):
        ours = repr(f.profile.ciphers) if f.profile.ciphers else "OpenSSL's default"
        return f"no cipher in common with the {f.them} (our list: {ours})"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return (
            f"the {f.them} refused the handshake (handshake failure alert): usually no cipher "
            f"or TLS version in common ({f.versions()})"
        )
    return f"{_reason_words(reason)} ({f.versions()})"


def _reason_words(reason: str) -> str:
    return reason.lower().replace("_", " ")


# -- the handshake, for transports ------------------------------------------


async def peek_first_bytes(stream: trio.SocketStream, size: int = PEEK_SIZE) -> bytes:
    """The first bytes a peer sent, left in the socket for the TLS handshake to read."""
    try:
        return await stream.socket.recv(size, socket.MSG_PEEK)
    except OSError:
        return b""


def unverified_peer_certificate(stream: trio.SSLStream[Any]) -> bytes | None:
    """The peer's certificate (DER) even when verification rejected it, if OpenSSL kept it.

    After a failed handshake neither trio nor Python 3.11 hand it out; the
    private ``get_unverified_chain`` (public on ``SSLObject`` from 3.13) does.
    A client keeps the server's chain; a server keeps no rejected client one.
    """
    ssl_object = getattr(stream, "_ssl_object", None)
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if getter is None:
        return None
    try:
        chain = getter()
    except (ValueError, ssl.SSLError):
        return None
    if not chain:
        return None
    leaf = chain[0]
    if isinstance(leaf, bytes):
        return leaf
    return ssl.PEM_cert_to_DER_cert(leaf.public_bytes())


async def _send_pending_alert(stream: trio.SSLStream[Any]) -> None:
    # trio drops the alert OpenSSL wrote when the handshake failed, so the peer
    # would see a bare EOF ("unexpected eof") instead of "unknown ca",
    # "certificate expired", ...: send it, best effort.
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO):
        return
    data = outgoing.read()
    if data:
        with (
            trio.move_on_after(ALERT_SEND_TIMEOUT),
            contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError
            ),
        ):
            await stream.transport_stream.send_all(data)


async def handshake_failure(
    stream: trio.SSLStream[Any],
    exc: BaseException,
    profile: TlsProfile,
    *,
    peer: str,
    first_bytes: bytes | None = None,
    now: datetime | None = None,
) -> HandshakeFailure:
    """Classify a failure of ``stream`` (and send the peer our TLS alert, if one is due).

    Also for an error on the first receive after a TLS 1.3 client handshake:
    the server checks our certificate only after we finished ours.
    """
    peer_der = unverified_peer_certificate(stream)
    if not (first_bytes and looks_like_plaintext(first_bytes)):  # never into a plaintext log
        await _send_pending_alert(stream)
    return classify_handshake_error(
        exc,
        role="server" if stream.server_side else "client",
        peer=peer,
        profile=profile,
        peer_cert_der=peer_der,
        expected_name=None if stream.server_side else stream.server_hostname,
        first_bytes=first_bytes,
        now=now,
    )


async def handshake(
    stream: trio.SSLStream[Any],
    profile: TlsProfile,
    *,
    peer: str,
    now: datetime | None = None,
) -> HandshakeFailure | None:
    """Do the handshake and the permitted-peers check; None if the peer may talk.

    On a listener over a socket it peeks at the first bytes first, so a
    plaintext sender is named as such. The caller bounds the time
    (``trio.move_on_after``) and closes the stream on failure.
    """
    first_bytes = None
    if stream.server_side and isinstance(stream.transport_stream, trio.SocketStream):
        first_bytes = await peek_first_bytes(stream.transport_stream)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        return await handshake_failure(
            stream, exc, profile, peer=peer, first_bytes=first_bytes, now=now
        )
    der = stream.getpeercert(binary_form=True)
    reason = check_peer(profile, der)
    if reason is None:
        return None
    return classify_handshake_error(
        PeerNotPermittedError(reason),
        role="server" if stream.server_side else "client",
        peer=peer,
        profile=profile,
        peer_cert_der=der,
        now=now,
    )

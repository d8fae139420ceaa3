"""TLS for the TLS and RELP-over-TLS transports (RFC 5425): profile, contexts, permitted peers.

One :class:`TlsProfile` describes the TLS settings of any listener or target
(one schema for inputs and outputs alike). From it come the SSL contexts
(:func:`server_context`, :func:`client_context`, or a :class:`ReloadableContext`
that can swap in renewed certificates without touching established sessions)
and the permitted-peers check after the handshake (:func:`check_peer`, the same
for plain TLS and RELP over TLS).

The certificates themselves are read by :mod:`relay.tls.certs`; the handshake,
and one actionable line for every failed one, are in :mod:`relay.tls.failures`.
The ``ssl`` module does the TLS.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from relay.errors import ConfigError, RelayError
from relay.tls.certs import (
    CertificateInfo,
    expiry_warnings,
    format_date,
    format_span,
    load_pem_certificates,
    printable,
    read_file,
)
from relay.tls.profile import TlsProfile, _parse_permitted, _Permitted

__all__ = ["CertificateInfo", "TlsProfile"]  # also importable from here

log = logging.getLogger("relay.tls")

# What a profile's min_version means to the ssl module.
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(RelayError):
    """A TLS failure the relay detected itself (rather than OpenSSL)."""


class PeerNotPermittedError(TlsError):
    """The handshake succeeded but the peer is not in ``permitted_peers``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        _set_ciphers(ctx, profile.ciphers)
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


def _set_ciphers(ctx: ssl.SSLContext, ciphers: str) -> None:
    try:
        ctx.set_ciphers(ciphers)
    except (ssl.SSLError, ValueError):  # ValueError: a NUL in it
        raise ConfigError(
            f"{ciphers!r}: OpenSSL knows no cipher in this list", key="ciphers"
        ) from None


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
                f"{cert}: certificate {printable(info.subject)} expired on "
                f"{format_date(info.not_after)}, {format_span(now - info.not_after)} ago: renew it",
                key="cert",
            )
        if info.not_before > now:
            raise ConfigError(
                f"{cert}: certificate {printable(info.subject)} is not valid until "
                f"{format_date(info.not_before)}: is the clock right?",
                key="cert",
            )
    key_file = key or cert
    read_file(key_file, "key")
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


def load_files(profile: TlsProfile, *, now: datetime | None = None) -> list[ConfigError]:
    """Read a profile's files as the relay would (``relay check``): one error per problem.

    The cert (with its key) and the CA bundle are checked separately, so a
    profile with two bad files gets two lines.
    """
    now = now or datetime.now(UTC)
    errors = []
    if profile.ciphers is not None:
        try:
            _set_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), profile.ciphers)
        except ConfigError as exc:
            errors.append(exc)
    if profile.cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            _load_own_certificate(ctx, profile.cert, profile.key, now)
        except ConfigError as exc:
            errors.append(exc)
            if exc.key == "cert" and profile.key is not None:
                # A key cannot be matched to a cert that did not load, but one
                # that cannot be read either is worth saying in the same run.
                try:
                    read_file(profile.key, "key")
                except ConfigError as key_error:
                    errors.append(key_error)
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
    the reason is returned for the caller to log and alert on, so a bad renewal
    never takes the relay down;
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

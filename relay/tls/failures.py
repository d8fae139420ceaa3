"""Failed TLS handshakes, each explained in one line to act on; the handshake for transports.

:func:`classify_handshake_error` turns whatever a handshake raised into a
:class:`HandshakeCategory` and one line an operator can act on, drawing
on the peer's certificate, the name we expected and the first bytes the peer
sent. :func:`handshake` does the handshake and the permitted-peers check
(:func:`relay.tls.context.check_peer`) and returns the :class:`HandshakeFailure`, if any.

A transport does::

    ssl_stream = trio.SSLStream(tcp_stream, reloadable.context, server_side=True)
    failure = await handshake(ssl_stream, profile, peer="10.0.0.5:41234")
    if failure is not None:
        log.warning("%s", failure.line)    # rate-limited per peer by the caller
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
import socket
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import trio

from relay.errors import ConfigError
from relay.tls.certs import CertificateInfo, format_date, format_span, printable
from relay.tls.context import PeerNotPermittedError, TlsProfile, check_peer

# A failed handshake leaves a TLS alert to send; a peer that does not read must
# not hold the connection (and its task) open for longer than this.
ALERT_SEND_TIMEOUT = 1.0
# Enough to show an operator what a plaintext sender wrote ("<13>Nov 22 ...").
PEEK_SIZE = 16


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
    HANDSHAKE_TIMEOUT = "handshake_timeout"
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
    HandshakeCategory.HANDSHAKE_TIMEOUT: "handshake timeout",
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
        return HandshakeCategory.HANDSHAKE_TIMEOUT, (
            f"the {f.them} did not finish it in time (a stalled or very slow peer, or a port "
            "scanner that says nothing)"
        )
    if any(isinstance(c, ssl.SSLEOFError | trio.BrokenResourceError) for c in causes):
        return HandshakeCategory.OTHER, _silent_close(f)
    return HandshakeCategory.OTHER, printable(str(exc) or type(exc).__name__)


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
    theirs = f"the {f.them}'s certificate" + (f" {printable(leaf.subject)}" if leaf else "")
    if code in _UNKNOWN_CA_CODES:
        if leaf and leaf.issuer == leaf.subject:
            how = "is self-signed"
        elif leaf:
            how = f"is issued by {printable(leaf.issuer)}"
        else:
            how = "is issued by a CA"
        return HandshakeCategory.UNKNOWN_CA, (
            f"{theirs} {how}, which is not in {f.ca_text()} ({message})"
        )
    if code == _EXPIRED:
        if leaf and leaf.not_after <= f.now:
            return HandshakeCategory.EXPIRED, (
                f"{theirs} expired on {format_date(leaf.not_after)}, "
                f"{format_span(f.now - leaf.not_after)} ago "
                f"(valid from {format_date(leaf.not_before)})"
            )
        if leaf:
            return HandshakeCategory.EXPIRED, (
                f"a CA certificate in the {f.them}'s chain has expired ({theirs} itself is "
                f"valid until {format_date(leaf.not_after)})"
            )
        return HandshakeCategory.EXPIRED, (
            f"{theirs} (or a CA certificate in its chain) has expired; OpenSSL does not "
            f"keep a rejected certificate, so see the dates in the {f.them}'s files"
        )
    if code == _NOT_YET_VALID:
        when = (
            f" is not valid until {format_date(leaf.not_before)}" if leaf else " is not valid yet"
        )
        return HandshakeCategory.NOT_YET_VALID, f"{theirs}{when}: is its or our clock wrong?"
    if code in _NAME_MISMATCH_CODES:
        quoted = re.search(r"'(.*)'", message)
        expected = f.expected_name or (quoted.group(1) if quoted else "?")
        presented = leaf.describe_names() if leaf else "names not available"
        return HandshakeCategory.NAME_MISMATCH, (
            f"expected {printable(expected)}, the {f.them} presented {presented}"
        )
    return HandshakeCategory.OTHER, f"{theirs} was rejected: {message} (X509 error {code})"


def _ssl_failure(reason: str, f: _Facts) -> tuple[HandshakeCategory, str]:
    # Alerts the peer sent us: it rejected *our* certificate (RFC 8446 §6.2).
    ours = f"our certificate {f.profile.cert}" if f.profile.cert else "our certificate"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        own = f.own_cert()
        issuer = f" ({printable(own.issuer)})" if own else ""
        return HandshakeCategory.UNKNOWN_CA, (
            f"the {f.them} does not trust the CA that issued {ours}{issuer}: add it to the "
            f"{f.them}'s CA bundle"
        )
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        own = f.own_cert()
        dates = (
            f": it is valid from {format_date(own.not_before)} to {format_date(own.not_after)}"
            if own
            else ""
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
            f"the {f.them} rejected {ours}, which is not valid until {format_date(own.not_before)}"
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

"""TLS on the wire: what the inputs and outputs do around :mod:`relay.tls.context`.

:mod:`relay.tls.context` builds contexts, :mod:`relay.tls.certs` reads certificates and
:mod:`relay.tls.failures` explains failed handshakes; this module runs the
handshakes for the transports: :class:`TlsAcceptor` for a listener (timeout,
permitted peers, one rate-limited line per refused peer, counters) and
:func:`connect` for a target (a failure becomes a :class:`HandshakeError`,
which the output's retry loop handles like any lost connection). Both warn
once per peer certificate that expires soon. What the transports then read
and write is a :class:`TlsStream`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import ssl
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import trio

from relay.errors import ConfigError, StartupError
from relay.stats import Counters, LogLimit
from relay.tls.certs import CertificateInfo, expiry_warnings
from relay.tls.context import ReloadableContext, TlsProfile
from relay.tls.failures import (
    HandshakeCategory,
    HandshakeFailure,
    classify_handshake_error,
    handshake,
    handshake_failure,
)
from relay.tls.profile import DEFAULT_EXPIRY_WARNING_DAYS

log = logging.getLogger("relay.tls")

# A handshake takes a few round trips; on a loaded relay node with thousands of
# reconnecting senders it can take seconds, but a peer that says nothing for
# this long (a port scanner, a plaintext client waiting for a banner) must not
# hold a connection slot. rsyslog's ossl driver has no handshake timeout at
# all; nginx's ssl_handshake_timeout defaults to 60 s; 10 s is generous.
HANDSHAKE_TIMEOUT = 10.0
# A peer that fails every few milliseconds (a misconfigured fleet) must not
# flood the log: one line per peer address and failure category per this many
# seconds (a new kind of failure from the same host is news); the rest are
# counted and the number is given with the next line.
FAILURE_LOG_INTERVAL = 60.0
# Remembered peer certificate fingerprints (warned about once); past this
# many the memory starts afresh.
MAX_REMEMBERED = 10_000
# Over TLS 1.3 a client finishes its handshake before the server has checked
# the client's certificate (RFC 8446 §4.4.4): a refusal (an alert, or
# rsyslog's silent close) comes after it. A syslog collector never writes to
# us, so on a plain-syslog target we wait this long for that verdict before
# writing anything; otherwise the first batch goes into a refused session and
# each reconnect looks like a success (no back-off, no reason). One round trip
# on a WAN is well under this; it costs each new connection this much.
VERDICT_WAIT = 0.5
# Sending close_notify must not hang a stop on a peer that stopped reading.
CLOSE_TIMEOUT = 1.0
# What TlsStream.receive_some returns at most when not told (trio's own
# default starts at 16 KiB, one record).
RECEIVE_SIZE = 64 * 1024

COUNTERS = ("tls_failures", *(f"tls_{c.value}" for c in HandshakeCategory))


class ByteStream(Protocol):
    """What the transports use of a socket stream or a TLS stream.

    trio types ``SSLStream.receive_some`` as ``bytes | bytearray``; it returns
    the ``bytes`` of ``SSLObject.read``. One cast where a TLS stream is handed
    on (:func:`as_byte_stream`) keeps the decoders typed for ``bytes``.
    """

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


def as_byte_stream(stream: trio.SocketStream | trio.SSLStream[Any]) -> ByteStream:
    """What the transports read and write: a TLS stream becomes a :class:`TlsStream`."""
    if isinstance(stream, trio.SSLStream):
        return TlsStream(stream)
    return cast(ByteStream, stream)


class TlsStream:
    """A handshaken ``trio.SSLStream`` whose reads take every TLS record at hand.

    ``SSLStream.receive_some`` returns one TLS record (OpenSSL's ``SSL_read``
    returns at most one), and rsyslog writes one record per message (omrelp,
    omfwd) or per answer (imrelp). One read per record meant one batch and one
    trip through the pipeline per message: RELP over TLS moved 8,700 msg/s at
    108 us of relay CPU a message, against 60,000 msg/s in plain RELP. So after
    each read the records already received are read too, synchronously, up to
    ``max_bytes``; only when none is whole does the next read wait.

    That uses trio's ``SSLStream._ssl_object`` (the ``ssl.SSLObject`` it reads
    from; trio has no public way). Without it the reads are one record each:
    slower, still correct (tests/tls/test_stream.py notices).
    """

    def __init__(self, stream: trio.SSLStream[Any]) -> None:
        self.ssl = stream
        self._object: ssl.SSLObject | None = getattr(stream, "_ssl_object", None)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.ssl.receive_some(max_bytes))
        if not data or self._object is None:
            return data
        return _read_records(self._object, data, max_bytes or RECEIVE_SIZE)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl.send_all(data)

    async def aclose(self) -> None:
        await self.ssl.aclose()


def _read_records(tls: ssl.SSLObject, data: bytes, max_bytes: int) -> bytes:
    """``data`` and what the whole records ``tls`` already holds decrypt to."""
    chunks = [data]
    size = len(data)
    try:
        while size < max_bytes:
            chunk = tls.read(max_bytes - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except ssl.SSLError:
        # SSLWantReadError: no whole record left. Anything else (close_notify,
        # a bad record) is for the next receive_some to report, as trio does.
        pass
    return data if len(chunks) == 1 else b"".join(chunks)


def _ssl_stream(stream: object) -> trio.SSLStream[Any] | None:
    if isinstance(stream, TlsStream):
        return stream.ssl
    return stream if isinstance(stream, trio.SSLStream) else None


def count_failure(counters: Counters, failure: HandshakeFailure) -> None:
    """``tls_failures`` and ``tls_<category>``, for inputs and outputs alike."""
    counters.add("tls_failures")
    counters.add(f"tls_{failure.category.value}")


class HandshakeError(ConnectionError):
    """A target's handshake failed; ``str()`` is the classified one-line reason."""

    def __init__(self, failure: HandshakeFailure) -> None:
        super().__init__(failure.line)
        self.failure = failure


def context_for(
    profile: TlsProfile, *, server_side: bool, server_hostname: str = "", what: str
) -> ReloadableContext:
    """A :class:`ReloadableContext`, or StartupError naming ``what`` and the key."""
    try:
        return ReloadableContext(profile, server_side=server_side, server_hostname=server_hostname)
    except ConfigError as exc:
        raise StartupError(
            f"{what}: {exc.key}: {exc.message}" if exc.key else f"{what}: {exc}"
        ) from None


class PeerCertificates:
    """Warns once per peer certificate (by fingerprint) that expires soon."""

    def __init__(self, days: int = DEFAULT_EXPIRY_WARNING_DAYS) -> None:
        self.days = days
        self._seen: set[bytes] = set()

    def saw(self, der: bytes | None, peer: str, now: datetime | None = None) -> None:
        if der is None:
            return
        digest = hashlib.sha256(der).digest()  # cheap; parsing only for new ones
        if digest in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add(digest)
        try:
            info = CertificateInfo.from_der(der, f"of peer {peer}")
        except ValueError:
            return
        for line in expiry_warnings([info], now or datetime.now(UTC), self.days):
            log.warning("tls: %s", line)


class TlsAcceptor:
    """The TLS side of one listener."""

    def __init__(self, name: str, profile: TlsProfile, counters: Counters) -> None:
        self.name = name
        self.profile = profile
        self.counters = counters
        self.context = context_for(profile, server_side=True, what=f"input {name}")
        self.failures = LogLimit(FAILURE_LOG_INTERVAL, "failures from this address")
        self.peers = PeerCertificates(profile.expiry_warning_days)

    async def accept(self, stream: trio.SocketStream, peer: str) -> trio.SSLStream[Any] | None:
        """The TLS stream of an accepted connection, or None (logged, counted, closed)."""
        ssl_stream = trio.SSLStream(stream, self.context.context, server_side=True)
        profile = self.context.profile
        failure: HandshakeFailure | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
            failure = await handshake(ssl_stream, profile, peer=peer)
        if scope.cancelled_caught:
            failure = classify_handshake_error(
                trio.TooSlowError(), role="server", peer=peer, profile=profile
            )
        if failure is None:
            self.peers.saw(ssl_stream.getpeercert(binary_form=True), peer)
            return ssl_stream
        count_failure(self.counters, failure)
        address = peer.rpartition(":")[0] or peer
        key = f"{address} {failure.category.value}"
        self.failures.log(
            log,
            logging.WARNING,
            key,
            f"input {self.name}: {failure.line} [{failure.category.value}]",
            trio.current_time(),
        )
        await aclose(ssl_stream)
        return None


async def connect(
    stream: trio.SocketStream,
    context: ReloadableContext,
    host: str,
    peer: str,
    *,
    verdict_wait: float = 0.0,
) -> trio.SSLStream[Any]:
    """The TLS stream to a target; HandshakeError (classified) if it refuses or is refused.

    ``verdict_wait`` (for targets that never write to us): over TLS 1.3, wait
    that long for the server's refusal before the stream is used.
    """
    profile = context.profile
    ssl_stream = trio.SSLStream(stream, context.context, server_hostname=host)
    failure: HandshakeFailure | None = None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            failure = await handshake(ssl_stream, profile, peer=peer)
    except trio.TooSlowError as exc:
        failure = classify_handshake_error(exc, role="client", peer=peer, profile=profile)
    except BaseException:
        await aclose(ssl_stream)
        raise
    if failure is None and verdict_wait and ssl_stream.version() == "TLSv1.3":
        failure = await _verdict(ssl_stream, profile, peer, verdict_wait)
    if failure is not None:
        await aclose(ssl_stream)
        raise HandshakeError(failure)
    return ssl_stream


async def _verdict(
    ssl_stream: trio.SSLStream[Any], profile: TlsProfile, peer: str, wait: float
) -> HandshakeFailure | None:
    # Cancelling receive_some after the handshake leaves the stream usable.
    with trio.move_on_after(wait):
        try:
            data = await ssl_stream.receive_some(1)
        except trio.BrokenResourceError as exc:
            return await handshake_failure(ssl_stream, exc, profile, peer=peer)
        if not data:
            return classify_handshake_error(
                trio.BrokenResourceError(), role="client", peer=peer, profile=profile
            )
    return None


async def late_failure(
    stream: ByteStream | trio.SocketStream, exc: BaseException, profile: TlsProfile, peer: str
) -> HandshakeError | None:
    """A TLS 1.3 client learns that the server refused its certificate only on
    its first read after the handshake: that error, classified (or None if
    ``stream`` is not TLS or ``exc`` is not a TLS failure)."""
    ssl_stream = _ssl_stream(stream)
    if ssl_stream is None:
        return None
    if isinstance(exc, ConnectionResetError):  # a clean close before the first answer
        exc = trio.BrokenResourceError(str(exc))
    if not isinstance(exc, trio.BrokenResourceError):
        return None
    failure = await handshake_failure(ssl_stream, exc, profile, peer=peer)
    return HandshakeError(failure)


def silent_refusal(profile: TlsProfile, peer: str) -> HandshakeError:
    """A server that closed a TLS connection before it carried anything: what
    rsyslog does when it does not permit us (over TLS 1.3, after our handshake)."""
    return HandshakeError(
        classify_handshake_error(
            trio.BrokenResourceError(), role="client", peer=peer, profile=profile
        )
    )


async def aclose(stream: ByteStream | trio.abc.Stream) -> None:
    """Close, sending close_notify if the peer takes it within CLOSE_TIMEOUT."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(ssl.SSLError, OSError):
            await stream.aclose()
        ssl_stream = _ssl_stream(stream)
        if ssl_stream is not None:
            await trio.aclose_forcefully(ssl_stream.transport_stream)

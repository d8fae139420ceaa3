"""The PROXY protocol on a stream input: the trio part around ``protocol/proxy``.

With ``proxy_protocol = true`` a tcp://, tls://, relp:// or relp+tls:// input
sits behind a load balancer (HAProxy ``send-proxy``/``send-proxy-v2``). Every
connection must come from one of ``proxy_trusted`` and start with a PROXY
header (v1 or v2, before any TLS handshake, as HAProxy sends it); the
client address the header carries becomes the connection's peer, so the
batches' source (rate limits, filters, file paths and formats, stats) is the
client's, not the balancer's.

:class:`ProxyGate` checks the address, then reads the header by peeking at
the socket and taking exactly the header's bytes from it: what follows (a
TLS ClientHello, the first frames) stays in the kernel for the session, so
the session's reads are the same as without a balancer. A connection from an
untrusted address, or without a valid header within HEADER_TIMEOUT, is
closed, counted (``proxy_untrusted``, ``proxy_bad_header``) and logged, one
line per kind per REFUSAL_LOG_INTERVAL with the number not logged (a flood
of them must not flood the log). A LOCAL header (the balancer's health
check) is counted (``proxy_local``) and the connection closed quietly; so
is a connection that closes having sent nothing, or before its address could
be read (a plain TCP check, a port probe): there is nothing to refuse.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import trio

from relay.config import host_port
from relay.errors import RemoteProtocolError
from relay.policy.filter import peer_address
from relay.protocol.proxy import (
    DEFAULT_MAX_V2_LENGTH,
    NEED_DATA,
    V1_MAX,
    V2_HEADER,
    Command,
    ProxyHeader,
    ProxyHeaderReader,
)
from relay.stats import Counters, LogLimit

log = logging.getLogger("relay.input")

COUNTERS = (
    "proxy_untrusted",  # from an address not in proxy_trusted: closed at once
    "proxy_bad_header",  # no valid PROXY header (or none within HEADER_TIMEOUT): closed
    "proxy_local",  # a LOCAL header (health check): closed quietly
)

# A balancer writes the header as it connects, before the client's first
# byte; a trusted peer silent this long is not a balancer speaking PROXY.
# HAProxy's own accept-proxy waits up to "timeout client"; nginx's
# proxy_protocol_timeout is 30 s; 10 s, as for a TLS handshake here, is generous.
HEADER_TIMEOUT = 10.0
# One refusal line per kind per this many seconds, with the number not logged.
REFUSAL_LOG_INTERVAL = 60.0
# One peek takes whatever a header can be; what follows it is only looked at.
PEEK_SIZE = max(V1_MAX, V2_HEADER + DEFAULT_MAX_V2_LENGTH)

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class ProxyGate:
    """The PROXY protocol checks of one listener."""

    def __init__(self, name: str, trusted: Networks, counters: Counters) -> None:
        self.name = name
        self.trusted = trusted
        self.counters = counters
        self._refusals = LogLimit(REFUSAL_LOG_INTERVAL, "refusals of this kind")

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (``host:port``) is one of the trusted balancers."""
        address = peer_address(peer)
        return address is not None and any(address in n for n in self.trusted)

    async def admit(self, stream: trio.SocketStream, peer: str) -> ProxyHeader | None:
        """The header of a connection from ``peer``, None if it is not to be
        served (refused, a health check, or nothing sent: counted and logged as
        the module doc says). The caller closes it then. Cancelled (the stop),
        it raises trio.Cancelled, having taken no byte after the header."""
        if peer == "?":  # gone before we could ask who it was (a port probe)
            return None
        if not self.trusts(peer):
            self._refuse("proxy_untrusted", f"from {peer}, which is not in proxy_trusted")
            return None
        reader = ProxyHeaderReader()
        try:
            with trio.fail_after(HEADER_TIMEOUT):
                header = await _read_header(stream.socket, reader)
        except trio.TooSlowError:
            why = f"from {peer}: no PROXY header in {HEADER_TIMEOUT:g} s"
            self._refuse("proxy_bad_header", why)
            return None
        except RemoteProtocolError as exc:
            if reader.received == 0:  # closed having sent nothing: a plain TCP check
                return None
            self._refuse("proxy_bad_header", f"from {peer}: {exc}")
            return None
        except OSError as exc:  # reset by the peer: nothing to refuse
            log.debug("input %s: connection from %s: %s", self.name, peer, exc)
            return None
        if header.command is Command.LOCAL:
            self.counters.add("proxy_local")
            log.debug("input %s: PROXY LOCAL (health check) from %s", self.name, peer)
            return None
        return header

    def _refuse(self, counter: str, why: str) -> None:
        self.counters.add(counter)
        self._refusals.log(
            log,
            logging.WARNING,
            counter,
            f"input {self.name}: refused a connection {why}",
            trio.current_time(),
        )


def client_peer(source: tuple[str, int]) -> str:
    """The ``peer`` of a connection whose header names ``source``: ``host:port``,
    an IPv4-mapped IPv6 address as the IPv4 one it is (one rate-limit key and
    one ``{source}`` per client, as for a dual-stack listener's peers)."""
    host, port = source
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        host = str(address.ipv4_mapped)
    return host_port(host, port)


async def _read_header(sock: trio.socket.SocketType, reader: ProxyHeaderReader) -> ProxyHeader:
    """Feed ``reader`` what the socket holds (peeked), taking from the socket
    exactly the bytes of the header; RemoteProtocolError if it is none."""
    while True:
        taken = reader.received
        data = await sock.recv(PEEK_SIZE, socket.MSG_PEEK)
        reader.receive_data(data)
        event = reader.next_event()
        if event is NEED_DATA:
            # All of it is (the start of) the header: take it, wait for more.
            await _take(sock, len(data))
            continue
        assert isinstance(event, ProxyHeader)
        await _take(sock, event.length - taken)
        return event


async def _take(sock: trio.socket.SocketType, size: int) -> None:
    """Read and drop ``size`` bytes the socket already holds (peeked)."""
    while size > 0:
        data = await sock.recv(size)
        if not data:
            return
        size -= len(data)

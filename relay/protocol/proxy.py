"""The PROXY protocol header (HAProxy's, versions 1 and 2), sans-IO.

A load balancer in TCP mode (HAProxy ``send-proxy``/``send-proxy-v2``, IPVS
with a helper, cloud NLBs) opens its own connection to the relay; the header
it writes first says which client the connection carries. The specification
is HAProxy's ``doc/proxy-protocol.txt`` (sections cited as "spec §").

:class:`ProxyHeaderReader` is fed bytes (``b""`` at EOF) and asked for the
header with :meth:`~ProxyHeaderReader.next_event`: :data:`NEED_DATA` until it
is complete, then one :class:`ProxyHeader` whose ``length`` says how many of
the bytes fed were the header (the rest, ``trailing_data``, is the payload).
Anything that cannot be the start of a header raises
:class:`~relay.errors.RemoteProtocolError` as soon as it is seen; the reader
never waits for more than the header can hold (107 bytes for v1, spec §2.1;
16 + ``max_v2_length`` for v2), so a garbage peer is refused at once.

:func:`encode_v1` and :func:`encode_v2` write a header (``relay send
--proxy-from``, the tests).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from typing import Final, TypedDict

from relay.errors import RemoteProtocolError

# spec §2.1: "a receiver may read up to 107 bytes": the longest v1 line,
# "PROXY TCP6 " + two full IPv6 addresses + two ports + spaces + CRLF.
V1_MAX = 107
V1_PREFIX = b"PROXY "
# spec §2.2: the v2 signature, then ver_cmd, fam, and a 16-bit length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
# The v2 address block and TLVs a header may carry. The format allows 65,535
# bytes; what HAProxy sends (addresses, ALPN, authority, a unique id of at most
# 128 bytes, the SSL TLV with a client certificate's CN) stays well under 1 KiB.
# HAProxy itself reads a received header only within one buffer. 4 KiB bounds
# what a peer can make us hold and refuses nothing real.
DEFAULT_MAX_V2_LENGTH = 4096

# spec §2.2, the address block lengths by family (after the 16 header bytes).
_INET_LENGTH = 12  # 2 x 4 bytes of address, 2 x 2 bytes of port
_INET6_LENGTH = 36
_UNIX_LENGTH = 216

# spec §2.2.1-2.2.7: TLV types (the rest are skipped).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
# spec §2.2.5: the SSL TLV starts with client (1 byte) and verify (4 bytes).
_SSL_FIXED = 5
# spec §2.2.5: PP2_CLIENT_SSL, the client connected over TLS.
PP2_CLIENT_SSL = 0x01


class Command(enum.Enum):
    PROXY = "proxy"  # a relayed connection: the addresses are the client's
    LOCAL = "local"  # the balancer's own (a health check): no client


class NeedData(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header.

    ``source`` and ``destination`` are (address, port) of the client and of
    the address it connected to, or None when the header carries none (v1
    ``UNKNOWN``, v2 ``LOCAL`` or family UNSPEC/UNIX): then the connection's
    own addresses stand (spec §2.1, §2.2). ``length``: bytes the header took.
    The TLV fields (v2 only) are those worth keeping: ALPN, authority (the
    server name the client asked for), HAProxy's unique id, and whether the
    client spoke TLS to the balancer (with its version and certificate CN).
    """

    version: int
    command: Command
    length: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    alpn: bytes = b""
    authority: str = ""
    unique_id: bytes = b""
    ssl: bool = False
    ssl_version: str = ""
    ssl_cn: str = ""


class ProxyHeaderReader:
    """Reads one PROXY header (v1 or v2) from the start of a connection."""

    def __init__(self, *, max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> None:
        self.max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._eof = False
        self._header: ProxyHeader | None = None

    @property
    def received(self) -> int:
        """Bytes fed so far (0: the peer sent nothing)."""
        return len(self._buffer)

    @property
    def trailing_data(self) -> bytes:
        """What followed the header in the bytes fed (empty before it is complete)."""
        if self._header is None:
            return b""
        return bytes(self._buffer[self._header.length :])

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` means the connection ended."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> ProxyHeader | NeedData:
        """The header, or NEED_DATA; RemoteProtocolError if it cannot be one."""
        if self._header is None:
            header = self._parse()
            if header is NEED_DATA:
                if self._eof:
                    raise RemoteProtocolError(
                        f"connection closed after {len(self._buffer)} bytes of a PROXY header"
                    )
                return NEED_DATA
            self._header = header
        return self._header

    def _parse(self) -> ProxyHeader | NeedData:
        buffer = bytes(self._buffer[: max(V1_MAX, V2_HEADER + self.max_v2_length)])
        if buffer[:1] == b"P":
            _check_prefix(buffer, V1_PREFIX, "v1")
            return _parse_v1(buffer)
        if buffer[:1] == b"\r":
            _check_prefix(buffer, V2_SIGNATURE, "v2")
            return _parse_v2(buffer, self.max_v2_length)
        if not buffer:
            return NEED_DATA
        raise RemoteProtocolError(f"no PROXY header: the connection starts with {buffer[:8]!r}")


def _check_prefix(buffer: bytes, prefix: bytes, version: str) -> None:
    have = buffer[: len(prefix)]
    if have != prefix[: len(have)]:
        raise RemoteProtocolError(f"bad PROXY {version} signature: {have!r}")


# -- version 1 (spec §2.1) -------------------------------------------------------


def _parse_v1(buffer: bytes) -> ProxyHeader | NeedData:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX or b"\n" in buffer:
            raise RemoteProtocolError(f"PROXY v1 line without CRLF in its first {V1_MAX} bytes")
        return NEED_DATA
    try:
        line = buffer[:end].decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # spec §2.1: the rest of the line up to CRLF is to be ignored.
        return ProxyHeader(1, Command.PROXY, length)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise RemoteProtocolError(f"bad PROXY v1 line: {_shorten(line)}")
    family = 4 if parts[1] == "TCP4" else 6
    source = (_v1_address(parts[2], family), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], family), _v1_port(parts[5]))
    return ProxyHeader(1, Command.PROXY, length, source=source, destination=destination)


def _v1_address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise RemoteProtocolError(f"bad address in PROXY v1 line: {text[:45]!r}") from None
    if address.version != family:
        raise RemoteProtocolError(f"PROXY v1 TCP{family} line with address {text!r}")
    return str(address)


def _v1_port(text: str) -> int:
    # spec §2.1: decimal, 0 to 65535, no leading zero
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise RemoteProtocolError(f"bad port in PROXY v1 line: {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise RemoteProtocolError(f"bad port in PROXY v1 line: {text!r}")
    return port


def _shorten(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


# -- version 2 (spec §2.2) -------------------------------------------------------


def _parse_v2(buffer: bytes, max_length: int) -> ProxyHeader | NeedData:
    if len(buffer) < V2_HEADER:
        return NEED_DATA
    ver_cmd, family, length = struct.unpack_from("!BBH", buffer, 12)
    if ver_cmd >> 4 != 2:
        raise RemoteProtocolError(f"PROXY v2 header of version {ver_cmd >> 4}")
    if ver_cmd & 0xF > 1:
        raise RemoteProtocolError(f"PROXY v2 header with unknown command {ver_cmd & 0xF}")
    if length > max_length:
        raise RemoteProtocolError(
            f"PROXY v2 header of {length} bytes (at most {max_length} are taken)"
        )
    if len(buffer) < V2_HEADER + length:
        return NEED_DATA
    body = buffer[V2_HEADER : V2_HEADER + length]
    total = V2_HEADER + length
    command = Command.LOCAL if ver_cmd & 0xF == 0 else Command.PROXY
    addresses, tlvs = _v2_addresses(family, body)
    fields = _tlvs(tlvs)
    if command is Command.LOCAL:
        # spec §2.2: a LOCAL connection's address block is to be ignored.
        return ProxyHeader(2, command, total, **fields)
    source, destination = addresses if addresses is not None else (None, None)
    return ProxyHeader(2, command, total, source=source, destination=destination, **fields)


Addresses = tuple[tuple[str, int], tuple[str, int]]


def _v2_addresses(family: int, body: bytes) -> tuple[Addresses | None, bytes]:
    """The (source, destination) of the address block, and the TLV bytes after it."""
    af, transport = family >> 4, family & 0xF
    if af > 3 or transport > 2:
        raise RemoteProtocolError(f"PROXY v2 header with unknown family 0x{family:02x}")
    if af == 0:  # AF_UNSPEC: no addresses; the whole body is ignored (spec §2.2)
        return None, b""
    size = {1: _INET_LENGTH, 2: _INET6_LENGTH, 3: _UNIX_LENGTH}[af]
    if len(body) < size:
        raise RemoteProtocolError(
            f"PROXY v2 header too short for its addresses ({len(body)} < {size} bytes)"
        )
    block, tlvs = body[:size], body[size:]
    if af == 3:  # AF_UNIX: socket paths, nothing a syslog source can use
        return None, tlvs
    width = 4 if af == 1 else 16
    kind = ipaddress.IPv4Address if af == 1 else ipaddress.IPv6Address
    src, dst = kind(block[:width]), kind(block[width : 2 * width])
    sport, dport = struct.unpack_from("!HH", block, 2 * width)
    return ((str(src), sport), (str(dst), dport)), tlvs


def _walk(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """The (type, value) of each TLV in ``data`` (spec §2.2: 1 byte type, 2 bytes length)."""
    out = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise RemoteProtocolError(f"PROXY v2 {what} cut short")
        kind, size = data[at], int.from_bytes(data[at + 1 : at + 3], "big")
        at += 3
        if at + size > len(data):
            raise RemoteProtocolError(f"PROXY v2 {what} 0x{kind:02x} longer than the header")
        out.append((kind, data[at : at + size]))
        at += size
    return out


class TlvFields(TypedDict, total=False):
    """What :class:`ProxyHeader` keeps of the TLVs."""

    alpn: bytes
    authority: str
    unique_id: bytes
    ssl: bool
    ssl_version: str
    ssl_cn: str


def _tlvs(data: bytes) -> TlvFields:
    """The fields of the TLVs worth keeping; the others (CRC32C, NOOP, NETNS,
    custom 0xE0-0xEF, unknown) are checked for length and skipped."""
    fields = TlvFields()
    for kind, value in _walk(data, "TLV"):
        if kind == PP2_TYPE_ALPN:
            fields["alpn"] = value
        elif kind == PP2_TYPE_AUTHORITY:
            fields["authority"] = _text(value, "authority")
        elif kind == PP2_TYPE_UNIQUE_ID:
            fields["unique_id"] = value
        elif kind == PP2_TYPE_SSL:
            fields.update(_ssl(value))
    return fields


def _ssl(value: bytes) -> TlvFields:
    if len(value) < _SSL_FIXED:
        raise RemoteProtocolError("PROXY v2 SSL TLV cut short")
    fields = TlvFields(ssl=bool(value[0] & PP2_CLIENT_SSL))
    for kind, sub in _walk(value[_SSL_FIXED:], "SSL sub-TLV"):
        if kind == PP2_SUBTYPE_SSL_VERSION:
            fields["ssl_version"] = _text(sub, "SSL version")
        elif kind == PP2_SUBTYPE_SSL_CN:
            fields["ssl_cn"] = _text(sub, "SSL CN")
    return fields


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"PROXY v2 {what} is not UTF-8") from None


# -- writing ---------------------------------------------------------------------


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 line for a TCP connection from ``source`` to ``destination``."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are not of the same family")
    proto = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None = None,
    *,
    tlvs: list[tuple[int, bytes]] | None = None,
) -> bytes:
    """A v2 header: PROXY for a TCP connection from ``source`` to
    ``destination``, or LOCAL (a health check) when ``source`` is None."""
    extra = b"".join(
        bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in tlvs or []
    )
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(extra)) + extra
    if destination is None:
        raise ValueError("a PROXY header needs a destination")
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are not of the same family")
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = block + extra
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body

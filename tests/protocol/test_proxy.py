"""The PROXY protocol header: relay/protocol/proxy.py (HAProxy's doc/proxy-protocol.txt)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RemoteProtocolError
from relay.protocol.proxy import (
    NEED_DATA,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX,
    V2_SIGNATURE,
    Command,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)

PAYLOAD = b"<13>1 2026-12-01T00:00:00Z host app - - - hello\n"
SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # spec §2.2, byte by byte
# The longest v1 line (spec §2.1: "PROXY UNKNOWN" + two full IPv6 + two ports = 107).
LONGEST_V1 = (
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)
# What HAProxy 2.x sends with send-proxy-v2 for 127.0.0.2:40000 -> 127.0.0.1:5514,
# written out by hand from spec §2.2: PROXY command, TCP over IPv4, 12 address
# bytes, then a NOOP TLV (HAProxy's alignment padding) and a unique id.
V2_TCP4 = (
    SIG
    + b"\x21\x11\x00\x19"  # 12 + 5 + 8 bytes follow
    + b"\x7f\x00\x00\x02\x7f\x00\x00\x01\x9c\x40\x15\x8a"
    + b"\x04\x00\x02\x00\x00"
    + b"\x05\x00\x05abcde"
)


def read(data: bytes, chunk: int | None = None, eof: bool = True) -> ProxyHeader:
    """Feed ``data`` whole or ``chunk`` bytes at a time; the header."""
    reader = ProxyHeaderReader()
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        reader.receive_data(data[i : i + step])
        event = reader.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, ProxyHeader)
            assert reader.trailing_data == data[event.length : i + step]
            return event
    if eof:
        reader.receive_data(b"")
    event = reader.next_event()
    assert isinstance(event, ProxyHeader)
    return event


@pytest.mark.parametrize(
    ("wire", "source", "destination"),
    [
        pytest.param(
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            ("192.168.0.1", 56324),
            ("192.168.0.11", 443),
            id="spec-2.1-tcp4",
        ),
        pytest.param(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
            ("2001:db8::1", 1),
            ("2001:db8::2", 65535),
            id="tcp6",
        ),
        pytest.param(b"PROXY UNKNOWN\r\n", None, None, id="spec-2.1-unknown"),
        pytest.param(LONGEST_V1, None, None, id="spec-2.1-longest-107"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_v1(
    wire: bytes,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    chunk: int | None,
) -> None:
    header = read(wire + PAYLOAD, chunk)
    assert (header.version, header.command, header.length) == (1, Command.PROXY, len(wire))
    assert (header.source, header.destination) == (source, destination)


def test_longest_v1_is_the_limit() -> None:
    assert len(LONGEST_V1) == V1_MAX


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_v2_as_haproxy_sends_it(chunk: int | None) -> None:
    header = read(V2_TCP4 + PAYLOAD, chunk)
    assert header.version == 2
    assert header.command is Command.PROXY
    assert header.length == len(V2_TCP4)
    assert header.source == ("127.0.0.2", 40000)
    assert header.destination == ("127.0.0.1", 5514)
    assert header.unique_id == b"abcde"


def test_v2_tlvs_kept_and_skipped() -> None:
    ssl = b"\x01" + b"\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3" + b"\x22\x00\x04host"
    tlvs = [
        (PP2_TYPE_ALPN, b"syslog"),
        (PP2_TYPE_AUTHORITY, b"relay.example"),
        (PP2_TYPE_CRC32C, b"\x00\x00\x00\x00"),
        (PP2_TYPE_NOOP, b""),
        (0x30, b"netns"),
        (0xE0, b"custom"),
        (PP2_TYPE_SSL, ssl),
        (PP2_TYPE_UNIQUE_ID, b"id-1"),
    ]
    header = read(encode_v2(("2001:db8::7", 7), ("2001:db8::1", 514), tlvs=tlvs) + PAYLOAD)
    assert header.source == ("2001:db8::7", 7)
    assert header.alpn == b"syslog"
    assert header.authority == "relay.example"
    assert header.unique_id == b"id-1"
    assert (header.ssl, header.ssl_version, header.ssl_cn) == (True, "TLSv1.3", "host")


def test_v2_local_is_a_health_check() -> None:
    # spec §2.2: LOCAL, family UNSPEC, no address block (what HAProxy's
    # check-send-proxy sends with send-proxy-v2)
    wire = SIG + b"\x20\x00\x00\x00"
    header = read(wire)
    assert (header.command, header.source, header.length) == (Command.LOCAL, None, 16)
    assert encode_v2(None) == wire


def test_v2_unspec_and_unix_carry_no_source() -> None:
    unspec = SIG + b"\x21\x00\x00\x03abc"
    assert read(unspec).source is None
    unix = SIG + b"\x21\x31\x00\xd8" + b"\x00" * 216
    assert read(unix).source is None


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n", "no PROXY header", id="http"),
        pytest.param(b"<13>hello\n", "no PROXY header", id="syslog"),
        pytest.param(b"PROXZ TCP4", "signature", id="v1-bad-signature"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF", id="v1-lf-only"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad PROXY v1 line", id="v1-fields"),
        pytest.param(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "TCP4 line", id="v1-family"),
        pytest.param(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad address", id="v1-address"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port", id="v1-port-zero"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port", id="v1-port-big"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xb2\r\n", "ASCII", id="v1-not-ascii"),
        pytest.param(b"PROXY " + b"x" * 200, "CRLF", id="v1-too-long"),
        pytest.param(SIG[:5] + b"x", "signature", id="v2-bad-signature"),
        pytest.param(SIG + b"\x11\x11\x00\x0c", "version 1", id="v2-version"),
        pytest.param(SIG + b"\x22\x11\x00\x0c", "command 2", id="v2-command"),
        pytest.param(SIG + b"\x21\x41\x00\x00", "family", id="v2-family"),
        pytest.param(SIG + b"\x21\x11\x00\x04abcd", "too short", id="v2-short-address"),
        pytest.param(SIG + b"\x21\x11\xff\xff", "65535 bytes", id="v2-too-long"),
        pytest.param(
            SIG + b"\x21\x11\x00\x0e" + b"\x00" * 12 + b"\x05\x00", "cut short", id="v2-tlv-cut"
        ),
        pytest.param(
            SIG + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x05\x00\x09a", "longer", id="v2-tlv-long"
        ),
        pytest.param(
            SIG + b"\x21\x11\x00\x11" + b"\x00" * 12 + b"\x20\x00\x02\x01\x00", "SSL", id="v2-ssl"
        ),
    ],
)
def test_refused(wire: bytes, words: str) -> None:
    with pytest.raises(RemoteProtocolError, match=words):
        read(wire + PAYLOAD)


@pytest.mark.parametrize(
    "wire", [b"PROXY TCP4 1.2.3.4", SIG[:7], SIG + b"\x21\x11\x00\x0c\x01"], ids=str
)
def test_cut_by_eof(wire: bytes) -> None:
    reader = ProxyHeaderReader()
    reader.receive_data(wire)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="connection closed"):
        reader.next_event()


def test_v1_refused_at_its_limit_without_eof() -> None:
    reader = ProxyHeaderReader()
    reader.receive_data(LONGEST_V1[:-2])
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"  ")  # 107 bytes, no CRLF
    with pytest.raises(RemoteProtocolError, match="CRLF in its first 107 bytes"):
        reader.next_event()


def test_nothing_sent() -> None:
    reader = ProxyHeaderReader()
    reader.receive_data(b"")
    assert reader.received == 0
    with pytest.raises(RemoteProtocolError, match="after 0 bytes"):
        reader.next_event()


addresses4 = st.ip_addresses(v=4).map(str)
addresses6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@given(
    st.one_of(
        st.tuples(addresses4, ports, addresses4, ports),
        st.tuples(addresses6, ports, addresses6, ports),
    ),
    st.booleans(),
    st.binary(max_size=40),
    st.lists(st.integers(1, 200), max_size=10),
)
def test_round_trip_at_any_split(
    addrs: tuple[str, int, str, int], v2: bool, payload: bytes, cuts: list[int]
) -> None:
    source, destination = (addrs[0], addrs[1]), (addrs[2], addrs[3])
    wire = encode_v2(source, destination) if v2 else encode_v1(source, destination)
    data = wire + payload
    reader = ProxyHeaderReader()
    at = 0
    event = reader.next_event()
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        if cut <= at or event is not NEED_DATA:
            continue
        reader.receive_data(data[at:cut])
        at = cut
        event = reader.next_event()
    assert isinstance(event, ProxyHeader)
    assert (event.source, event.destination, event.length) == (source, destination, len(wire))
    assert reader.trailing_data == data[len(wire) : at]


@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=120).map(lambda b: b"PROXY " + b),
        st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b),
        st.binary(max_size=40).map(lambda b: b"PROXY TCP4 1.2.3.4 5.6.7.8 " + b),
        st.text("0123456789abcdef.: ", max_size=150).map(lambda t: b"PROXY TCP6 " + t.encode()),
    ),
    st.lists(st.integers(1, 300), max_size=8),
)
def test_any_bytes_parse_or_fail_cleanly(data: bytes, cuts: list[int]) -> None:
    """Any bytes at any split points: a header, a clean error, or NEED_DATA
    only while what was fed could still be the start of a header (never past
    the header's largest size), and an error at EOF."""
    reader = ProxyHeaderReader(max_v2_length=64)
    at = 0
    try:
        for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
            if cut <= at:
                continue
            reader.receive_data(data[at:cut])
            at = cut
            if reader.next_event() is not NEED_DATA:
                return
            assert at < max(V1_MAX, 16 + 64)
        reader.receive_data(b"")
        reader.next_event()
    except RemoteProtocolError as exc:
        assert str(exc)
        return
    raise AssertionError("EOF with an incomplete header must raise")  # pragma: no cover

"""What the input fuzzer sends: one :class:`Case` per connection (or burst of
datagrams), drawn by hypothesis from valid-shaped traffic and then mutated.

Nothing here touches a socket: :mod:`tests.interop.fuzzrig` plays a case
against a running relay. A case is plain data, so a fault's input is saved
as JSON (:func:`case_to_json`) and played again (``scripts/fuzz --replay``).

Every case starts valid-shaped: syslog messages (RFC 5424, RFC 3164, bytes
of any kind, oversize ones) framed as the input expects (LF or octet-counted
for TCP and TLS, a RELP session of ``open``, ``syslog`` frames and ``close``
built with :mod:`relay.protocol.relpframe`, one datagram per message for
UDP and unix). Then none or a few mutations: bytes flipped, inserted or
deleted, numbers made bad (negative, huge, empty, leading zeros), RELP
frames that break the session (an unknown command, a second ``open``, a
txnr out of sequence, ``rsp`` from a client, a missing trailer, a DATALEN
that lies). The bytes are then cut into writes at random points, and the
connection ends in one of several ways (close, half-close and wait, reset
with SO_LINGER 0). TLS inputs also get plaintext, garbage before or after a
real ClientHello, a handshake cut short, and clients without a permitted
certificate. The PROXY protocol input gets a header first (v1, v2 with or
without TLVs, LOCAL, UNKNOWN, none, garbage, or one cut short), mutated
with the rest. :func:`hypothesis.event` marks which branches a run reached.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import event
from hypothesis import strategies as st

from relay.protocol.proxy import encode_v1, encode_v2
from relay.protocol.relpframe import encode_offers, encode_parts, our_offers

# The inputs of the fuzzed relay (fuzzrig.relay_config names them so).
STREAM_TARGETS = ("tcp", "tcp-octet", "tcp-lf", "tls", "relp", "relp-tls", "tcp-proxy")
DATAGRAM_TARGETS = ("udp", "unix")
TARGETS = STREAM_TARGETS + DATAGRAM_TARGETS
TLS_TARGETS = ("tls", "relp-tls")
RELP_TARGETS = ("relp", "relp-tls")
# A tcp input with proxy_protocol, trusting the fuzzer's address (127.0.0.1).
PROXY_TARGETS = ("tcp-proxy",)

# How a stream connection ends.
ENDS = (
    "close",  # close(): FIN after the last write
    "half-close",  # shutdown(SHUT_WR), then read until the relay closes (or 2 s)
    "reset",  # SO_LINGER 0 then close(): RST, unread data and all
    "wait",  # read until the relay closes (or 0.3 s), then close()
    "keep",  # leave it open (the rig keeps the last few open, through the final stop)
)

# How a connection to a TLS input starts (fuzzrig plays these).
TLS_MODES = (
    "session",  # a permitted client certificate; the chunks inside TLS
    "session+raw",  # the same, then the last chunk raw on the socket (not a TLS record)
    "raw",  # the chunks straight on the socket: plaintext on a TLS port
    "hello",  # chunk 0 raw, a real ClientHello (cut at hello_cut), the rest raw
    "no-cert",  # TLS without a client certificate (refused), then the chunks
    "stranger",  # a certificate from another CA (refused), then the chunks
)

# The fuzzed relay's max_message_size: small, so oversize is cheap to reach.
MAX_MESSAGE = 4096


@dataclass(frozen=True)
class Case:
    """One connection (or one burst of datagrams) to one input of the relay."""

    target: str
    chunks: tuple[bytes, ...]  # the writes (datagrams for udp/unix), in order
    end: str = "close"
    tls_mode: str = "session"  # TLS targets only
    hello_cut: int | None = None  # "hello": send only this many bytes of the ClientHello
    shape: tuple[str, ...] = field(default=(), compare=False)  # how it was made, for the log

    def describe(self) -> str:
        size = sum(map(len, self.chunks))
        tls = f" tls={self.tls_mode}" if self.target in TLS_TARGETS else ""
        cut = f" hello_cut={self.hello_cut}" if self.tls_mode == "hello" else ""
        made = ",".join(self.shape) or "?"
        return (
            f"{self.target}{tls}{cut} end={self.end} {len(self.chunks)} writes, {size} bytes"
            f" [{made}]"
        )


def case_to_json(case: Case) -> dict[str, Any]:
    """A case as JSON-able data; bytes as base64 and, for reading, as escaped text."""
    return {
        "target": case.target,
        "end": case.end,
        "tls_mode": case.tls_mode,
        "hello_cut": case.hello_cut,
        "shape": list(case.shape),
        "chunks": [base64.b64encode(c).decode("ascii") for c in case.chunks],
        "chunks_repr": [repr(c) if len(c) <= 2000 else repr(c[:2000]) + "..." for c in case.chunks],
    }


def case_from_json(data: dict[str, Any]) -> Case:
    return Case(
        target=data["target"],
        chunks=tuple(base64.b64decode(c) for c in data["chunks"]),
        end=data["end"],
        tls_mode=data.get("tls_mode", "session"),
        hello_cut=data.get("hello_cut"),
        shape=tuple(data.get("shape", ())),
    )


def dump_cases(cases: list[Case]) -> str:
    return json.dumps([case_to_json(c) for c in cases], indent=1)


# How often each hypothesis.event was noted in this process (scripts/fuzz reports it).
EVENTS: collections.Counter[str] = collections.Counter()


def note(what: str) -> None:
    """hypothesis.event, and counted in EVENTS."""
    event(what)
    EVENTS[what] += 1


# -- messages ------------------------------------------------------------------

_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12).map(
    lambda s: s.encode()
)
_TEXT = st.binary(max_size=120) | st.text(max_size=60).map(lambda s: s.encode("utf-8"))


@st.composite
def syslog_message(draw: st.DrawFn) -> bytes:
    """One message body, without framing: mostly well-formed, sometimes not."""
    kind = draw(
        st.sampled_from(["5424", "5424", "3164", "3164", "bytes", "empty", "oversize", "nul"])
    )
    pri = draw(st.integers(0, 191) | st.sampled_from([192, 999, -1, 2**40]))
    if kind == "5424":
        sd = draw(st.sampled_from([b"-", b'[x@1 a="b"]', b'[x@1 a="\\"]"]', b"[", b"[]"]))
        fields = [draw(_WORD | st.just(b"-")) for _ in range(4)]
        stamp = draw(
            st.sampled_from(
                [b"2026-01-01T00:00:00Z", b"2026-13-45T99:99:99.9999999+25:00", b"-", b"x"]
            )
        )
        msg = b"<%d>1 %s %s %s %s" % (pri, stamp, b" ".join(fields), sd, draw(_TEXT))
    elif kind == "3164":
        msg = b"<%d>Jan %2d 00:00:00 %s %s: %s" % (
            pri,
            draw(st.integers(0, 40)),
            draw(_WORD),
            draw(_WORD),
            draw(_TEXT),
        )
    elif kind == "bytes":
        msg = draw(st.binary(min_size=1, max_size=300))
    elif kind == "empty":
        msg = b""
    elif kind == "nul":
        msg = b"<13>1 - - - - - - \x00" + draw(st.binary(max_size=20)) + b"\x00"
    else:  # longer than max_message_size: truncated or dropped, never a crash
        msg = b"<13>" + b"A" * draw(st.integers(MAX_MESSAGE - 8, 3 * MAX_MESSAGE))
    return msg


# -- valid-shaped streams ------------------------------------------------------


def lf_frame(message: bytes) -> bytes:
    return message.replace(b"\n", b" ") + b"\n"


def octet_frame(message: bytes) -> bytes:
    return b"%d %s" % (len(message), message)


@st.composite
def syslog_stream(draw: st.DrawFn, framing: str) -> bytes:
    """LF-framed or octet-counted frames (``mixed``: either, per frame)."""
    messages = draw(st.lists(syslog_message(), min_size=1, max_size=8))
    frames = []
    for message in messages:
        how = framing if framing != "mixed" else draw(st.sampled_from(["lf", "octet"]))
        frames.append(lf_frame(message) if how == "lf" else octet_frame(message))
    return b"".join(frames)


def relp_open(offers: bytes | None = None) -> bytes:
    data = encode_offers(our_offers(("fuzz", "1"))) if offers is None else offers
    return encode_parts(1, b"open", data)


@st.composite
def relp_session(draw: st.DrawFn) -> list[bytes]:
    """A valid-shaped RELP session, one frame per item: open, syslog..., maybe close."""
    offers = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                b"relp_version=0\nrelp_software=x\ncommands=syslog\n",
                b"relp_version=1\ncommands=syslog",
                b"relp_version=99\ncommands=syslog",
                b"relp_version=x\ncommands=syslog",
                b"commands=syslog",
                b"relp_version=0\ncommands=",
                b"relp_version=0",
                b"\n\n=\n,,,",
            ]
        )
    )
    frames = [relp_open(offers)]
    messages = draw(st.lists(syslog_message(), max_size=6))
    txnr = 2
    for message in messages:
        frames.append(encode_parts(txnr, b"syslog", message[:131072]))
        txnr += 1
    if draw(st.booleans()):
        frames.append(encode_parts(txnr, b"close", b""))
    return frames


# -- mutations -----------------------------------------------------------------

BAD_NUMBERS = [
    b"-1",
    b"-46",
    b"0",
    b"00000000001",
    b"999999999",
    b"1000000000",
    b"99999999999999999999",
    b"",
    b" ",
    b"+5",
    b"0x10",
    b"1e3",
    "\uff14".encode(),  # a fullwidth digit: str.isdigit() says yes
    b"131073",
    b"4097",
]
_INSERTS = [b"\x00", b"\n", b"\r\n", b" ", b"\xff\xfe", b"<", b"\x16\x03\x01", b"-", b"9" * 12]


@st.composite
def mutate_bytes(draw: st.DrawFn, data: bytes) -> tuple[bytes, str]:
    """One byte-level mutation of ``data``: (result, its name)."""
    kind = draw(st.sampled_from(["flip", "insert", "delete", "number", "duplicate", "truncate"]))
    pos = draw(st.integers(0, len(data)))
    if kind == "flip" and data:
        pos = min(pos, len(data) - 1)
        mask = draw(st.integers(1, 255))
        data = data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]
    elif kind == "insert":
        extra = draw(st.sampled_from(_INSERTS) | st.binary(min_size=1, max_size=16))
        data = data[:pos] + extra + data[pos:]
    elif kind == "delete":
        data = data[:pos] + data[pos + draw(st.integers(1, 16)) :]
    elif kind == "number":
        data = _bad_number(data, pos, draw(st.sampled_from(BAD_NUMBERS)))
    elif kind == "duplicate":
        span = data[pos : pos + draw(st.integers(1, 64))]
        data = data[:pos] + span + data[pos:]
    else:
        kind = "truncate"
        data = data[:pos]
    return data, kind


def _bad_number(data: bytes, pos: int, bad: bytes) -> bytes:
    """Replace the run of digits at or after ``pos`` (or the first one) with ``bad``."""
    start = next((i for i in range(pos, len(data)) if data[i : i + 1].isdigit()), None)
    if start is None:
        start = next((i for i in range(len(data)) if data[i : i + 1].isdigit()), None)
    if start is None:
        return data[:pos] + bad + data[pos:]
    end = start
    while end < len(data) and data[end : end + 1].isdigit():
        end += 1
    return data[:start] + bad + data[end:]


RELP_BREAKS = (
    "unknown-command",
    "second-open",
    "txnr-skip",
    "txnr-repeat",
    "txnr-zero",
    "rsp-from-client",
    "serverclose-from-client",
    "missing-trailer",
    "negative-datalen",
    "datalen-too-long",
    "datalen-too-short",
    "huge-datalen",
    "after-close",
)


def relp_break(frames: list[bytes], kind: str, at: int) -> list[bytes]:
    """Break a RELP session at frame ``at`` in one of the ways of RELP_BREAKS."""
    at = max(1, min(at, len(frames)))  # after the open
    nxt = at + 1  # the txnr the frame at ``at`` would have had
    bad: bytes
    if kind == "unknown-command":
        bad = b"%d frobnicate 1 x\n" % nxt
    elif kind == "second-open":
        bad = relp_open().replace(b"1 open", b"%d open" % nxt, 1)
    elif kind == "txnr-skip":
        bad = b"%d syslog 5 hello\n" % (nxt + 7)
    elif kind == "txnr-repeat":
        bad = b"%d syslog 5 hello\n" % max(1, nxt - 1)
    elif kind == "txnr-zero":
        bad = b"0 syslog 5 hello\n"
    elif kind == "rsp-from-client":
        bad = b"%d rsp 6 200 OK\n" % nxt
    elif kind == "serverclose-from-client":
        bad = b"0 serverclose 0\n"
    elif kind == "missing-trailer":
        bad = b"%d syslog 5 helloX" % nxt
    elif kind == "negative-datalen":
        bad = b"%d syslog -5 hello\n" % nxt
    elif kind == "datalen-too-long":
        bad = b"%d syslog 50 hello\n" % nxt
    elif kind == "datalen-too-short":
        bad = b"%d syslog 2 hello\n" % nxt
    elif kind == "huge-datalen":
        bad = b"%d syslog 999999999 hello\n" % nxt
    else:  # after-close
        bad = b"%d close 0\n%d syslog 5 hello\n" % (nxt, nxt + 1)
    return [*frames[:at], bad, *frames[at:]]


# -- cases ---------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> tuple[bytes, ...]:
    """``data`` cut into writes at random points (whole, a few cuts, or byte by byte)."""
    how = draw(st.sampled_from(["whole", "whole", "cuts", "bytes"]))
    if how == "whole" or len(data) < 2:
        return (data,)
    if how == "bytes" and len(data) <= 200:
        note("split: byte by byte")
        return tuple(data[i : i + 1] for i in range(len(data)))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), min_size=1, max_size=6))))
    note("split: at random points")
    edges = [0, *cuts, len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(edges))


@st.composite
def stream_bytes(draw: st.DrawFn, target: str) -> tuple[bytes, list[str]]:
    """The valid-shaped bytes for a stream ``target``, then mutated: (bytes, shape)."""
    shape: list[str] = []
    if target in RELP_TARGETS:
        frames = draw(relp_session())
        if draw(st.integers(0, 2)) == 0:
            kind = draw(st.sampled_from(RELP_BREAKS))
            frames = relp_break(frames, kind, draw(st.integers(1, len(frames))))
            shape.append(f"relp:{kind}")
        data = b"".join(frames)
    else:
        framing = {"tcp-octet": "octet", "tcp-lf": "lf"}.get(target, "mixed")
        data = draw(syslog_stream(framing))
    if target in PROXY_TARGETS:
        header, kind = draw(proxy_header())
        data = header + data if kind != "cut" else header
        note(f"proxy: {kind}")
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        data, kind = draw(mutate_bytes(data))
        shape.append(kind)
    return data, shape


_ADDRESS = st.sampled_from(["192.0.2.7", "198.51.100.1", "0.0.0.0", "255.255.255.255"])
_ADDRESS6 = st.sampled_from(["2001:db8::7", "::", "::ffff:192.0.2.7", "fe80::1"])
_PORT = st.integers(0, 65535)


@st.composite
def proxy_header(draw: st.DrawFn) -> tuple[bytes, str]:
    """A PROXY header of some kind for the PROXY input: (bytes, kind)."""
    kind = draw(
        st.sampled_from(["v1", "v1", "v2", "v2", "v2-tlvs", "local", "unknown", "none", "cut"])
    )
    family = draw(st.sampled_from([_ADDRESS, _ADDRESS6]))
    source = (draw(family), draw(_PORT))
    destination = (draw(family), draw(_PORT))
    if kind == "v1":
        return encode_v1(source, destination), kind
    if kind in ("v2", "cut"):
        header = encode_v2(source, destination)
        if kind == "cut":
            header = header[: draw(st.integers(0, len(header) - 1))]
        return header, kind
    if kind == "v2-tlvs":
        tlvs = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5))
        return encode_v2(source, destination, tlvs=tlvs), kind
    if kind == "local":
        return encode_v2(None), kind
    if kind == "unknown":
        return b"PROXY UNKNOWN\r\n", kind
    return b"", kind


@st.composite
def fuzz_case(draw: st.DrawFn, targets: tuple[str, ...] = TARGETS) -> Case:
    """One case for one of ``targets``; records its branches with hypothesis.event."""
    # TLS inputs have the most ways in (TLS_MODES): twice the share.
    target = draw(st.sampled_from([*targets, *(t for t in targets if t in TLS_TARGETS)]))
    note(f"target: {target}")
    if target in DATAGRAM_TARGETS:
        shape: list[str] = []
        grams = []
        for message in draw(st.lists(syslog_message(), min_size=1, max_size=6)):
            if draw(st.integers(0, 2)) == 0:
                message, kind = draw(mutate_bytes(message))
                shape.append(kind)
            grams.append(message[:65507])
        case = Case(target, tuple(grams), end="close", shape=tuple(shape) or ("valid",))
    else:
        data, shape = draw(stream_bytes(target))
        chunks = draw(splits(data))
        end = draw(st.sampled_from(ENDS))
        note(f"end: {end}")
        case = Case(target, chunks, end=end, shape=tuple(shape) or ("valid",))
        if target in TLS_TARGETS:
            case = draw(tls_variant(case))
    if case.shape == ("valid",):
        note("valid-shaped, not mutated")
    else:
        note("mutated")
        for kind in case.shape:
            note(f"mutation: {kind.split(':')[0]}")
    return case


@st.composite
def tls_variant(draw: st.DrawFn, case: Case) -> Case:
    mode = draw(st.sampled_from(["session", "session", "session", *TLS_MODES[1:]]))
    note(f"tls: {mode}")
    cut = None
    chunks = case.chunks
    if mode == "hello":
        # garbage (maybe none) before the ClientHello, the rest after it
        before = draw(st.sampled_from([b"", b"", b"\x00", b"GET / HTTP/1.0\r\n\r\n"]) | _TEXT)
        chunks = (before, *chunks)
        cut = draw(st.none() | st.integers(0, 300))
    elif mode == "session+raw":
        chunks = (*chunks, draw(st.binary(min_size=1, max_size=64)))
    return replace(case, chunks=chunks, tls_mode=mode, hello_cut=cut)


# The known way one client stopped the whole relay (the RELP server's state
# after a violation); each must leave it running. Played before the drawn cases.
_OPEN = b"1 open 46 relp_version=0\nrelp_software=x\ncommands=syslog\n"
KNOWN_CASES = tuple(
    Case("relp", (_OPEN + bad,), end="wait", shape=(f"relp:{name}",))
    for name, bad in [
        ("unknown-command", b"2 frobnicate 1 x\n"),
        ("txnr-skip", b"5 syslog 5 hello\n"),
        ("missing-trailer", b"2 syslog 5 helloX"),
        ("rsp-from-client", b"2 rsp 6 200 OK\n"),
        ("negative-datalen", b"2 syslog -5 hello\n"),
        ("second-open", b"2 open 46 relp_version=0\nrelp_software=x\ncommands=syslog\n"),
    ]
)

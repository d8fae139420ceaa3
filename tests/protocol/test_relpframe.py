"""RELP frames and offers: relay/protocol/relpframe.py.

Spec quotes are from rsyslog/librelp ``doc/relp.md``; frames marked "librelp"
were captured from rsyslog 8.2302 / librelp 1.11.0 on loopback.
"""

from __future__ import annotations

import itertools
import random
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import LocalProtocolError, RemoteProtocolError
from relay.protocol.relpframe import (
    DEFAULT_MAX_DATA,
    MAX_TXNR,
    Frame,
    Offers,
    RelpDecoder,
    RelpProtocolError,
    encode_frame,
    encode_offers,
    next_txnr,
    our_offers,
    parse_offers,
)
from tests.branches import Branches
from tests.protocol.relpwire import LIBRELP_OPEN, decode

# -- frames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "frame"),
    [
        # "RELP FRAME": HEADER = TXNR SP COMMAND SP DATALEN; DATA = [SP 1*OCTET]
        pytest.param(
            LIBRELP_OPEN,
            Frame(1, "open", LIBRELP_OPEN[10:-1]),
            id="librelp-open-offers",
        ),
        pytest.param(b"2 syslog 7 <13>msg\n", Frame(2, "syslog", b"<13>msg"), id="syslog"),
        # "RSP-HEADER = TXNR SP RSP-CODE [SP HUMANMSG] LF [CMDDATA]"
        pytest.param(b"2 rsp 6 200 OK\n", Frame(2, "rsp", b"200 OK"), id="rsp-200"),
        # "DATA = [SP 1*OCTET] ; ... if DATALEN is 0, no data is present"
        pytest.param(b"3 close 0\n", Frame(3, "close"), id="close-datalen-0"),
        # librelp answers close with an empty rsp (cclose.c), then the hint
        pytest.param(b"1002 rsp 0\n", Frame(1002, "rsp"), id="librelp-close-rsp"),
        # "Hints ... are always transmitted with a txnr of zero"
        pytest.param(b"0 serverclose 0\n", Frame(0, "serverclose"), id="serverclose-hint"),
        # "TRAILER = LF ; to detect framing errors": LF and NUL inside DATA are data
        pytest.param(b"5 syslog 5 a\n\x00b\n\n", Frame(5, "syslog", b"a\n\x00b\n"), id="binary"),
        # "NUMBER = 1*9DIGIT": leading zeros, and the largest txnr
        pytest.param(b"007 syslog 1 x\n", Frame(7, "syslog", b"x"), id="leading-zeros"),
        pytest.param(b"999999999 syslog 1 x\n", Frame(MAX_TXNR, "syslog", b"x"), id="max-txnr"),
        # "COMMAND = 1*32ALPHA": unknown commands parse; the session rejects them
        pytest.param(b"4 " + b"X" * 32 + b" 0\n", Frame(4, "X" * 32), id="32-letter-command"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_decode_spec_frames(wire: bytes, frame: Frame, chunk: int | None) -> None:
    assert decode(wire, chunk) == ([frame], None)
    assert encode_frame(frame) == wire.replace(b"007", b"7")


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        pytest.param(b"x syslog 1 a\n", "invalid txnr", id="txnr-not-digit"),
        pytest.param(b" syslog 1 a\n", "empty txnr", id="txnr-empty"),
        pytest.param(b"1234567890 syslog 1 a\n", "txnr longer than 9", id="txnr-10-digits"),
        pytest.param(b"0 syslog 1 a\n", "txnr 0 not allowed", id="txnr-0-command"),
        pytest.param(b"7 serverclose 0\n", "txnr 7 not allowed", id="hint-nonzero-txnr"),
        pytest.param(b"1 sys1og 1 a\n", "invalid command", id="command-not-alpha"),
        pytest.param(b"1 " + b"x" * 33 + b" 0\n", "command longer than 32", id="command-33"),
        pytest.param(b"1  1 a\n", "empty command", id="command-empty"),
        pytest.param(b"1 syslog x a\n", "invalid datalen", id="datalen-not-digit"),
        pytest.param(b"1 syslog 1234567890 a\n", "datalen longer than 9", id="datalen-10"),
        pytest.param(b"1 syslog  a\n", "empty datalen", id="datalen-empty"),
        pytest.param(b"1 syslog 3 abcX\n", "missing trailer after 3", id="no-trailer"),
        pytest.param(b"1 close 0 \n", "missing trailer after DATALEN 0", id="datalen-0-sp"),
        pytest.param(b"1 syslog 3\nabc\n", "ends before its 3 octets", id="datalen-then-lf"),
        pytest.param(b"1 syslog 5 abc", "connection closed inside a frame", id="short-at-eof"),
        pytest.param(b"1 sysl", "connection closed inside a frame", id="header-at-eof"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_decode_malformed(wire: bytes, error: str, chunk: int | None) -> None:
    frames, message = decode(wire, chunk)
    assert frames == []
    assert message is not None and error in message


def test_decode_oversize_uses_max_data() -> None:
    assert decode(b"1 syslog 10 0123456789\n", max_data=10)[1] is None
    _, error = decode(b"1 syslog 11 0123456789x\n", max_data=10)
    assert error == "frame of 11 octets exceeds 10"
    # found from the header alone: nothing of the data is buffered
    assert decode(b"1 syslog 999999999 ", max_data=10)[1] == "frame of 999999999 octets exceeds 10"
    assert RelpDecoder().max_data == DEFAULT_MAX_DATA == 128 * 1024


def test_decoder_error_carries_rsp_code() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        RelpDecoder().receive_data(b"x")
    assert isinstance(info.value, RelpProtocolError)
    assert (info.value.rsp_code, info.value.txnr) == (500, None)


@pytest.mark.parametrize("chunk", [None, 1, 2, 5])
def test_garbage_after_valid_frames(chunk: int | None) -> None:
    """Good frames come out first; the error follows, however the bytes arrive."""
    wire = b"1 syslog 1 a\n2 syslog 1 b\nGARBAGE"
    frames, error = decode(wire, chunk)
    assert frames == [Frame(1, "syslog", b"a"), Frame(2, "syslog", b"b")]
    assert error == "invalid txnr: unexpected b'G'"


def test_error_is_kept_and_raised_again() -> None:
    decoder = RelpDecoder()
    assert decoder.receive_data(b"1 syslog 1 a\n!") == [Frame(1, "syslog", b"a")]
    assert decoder.error is not None
    for _ in range(2):
        with pytest.raises(RelpProtocolError):
            decoder.receive_data(b"")


def test_receive_after_eof() -> None:
    decoder = RelpDecoder()
    assert decoder.receive_data(b"") == []
    assert decoder.receive_data(b"") == []
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"1")


@pytest.mark.parametrize(
    "frame",
    [Frame(-1, "rsp"), Frame(MAX_TXNR + 1, "rsp"), Frame(1, ""), Frame(1, "x" * 33), Frame(1, "ö")],
)
def test_encode_refuses_unsendable(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(frame)


txnrs = st.integers(1, MAX_TXNR) | st.integers(MAX_TXNR - 3, MAX_TXNR)
commands = st.text(string.ascii_letters, min_size=1, max_size=32).filter(
    lambda c: c != "serverclose"
)
frames = st.builds(Frame, txnrs, commands, st.binary(max_size=300)) | st.just(
    Frame(0, "serverclose")
)


@given(st.lists(frames, max_size=8), st.randoms(use_true_random=False))
def test_round_trip_any_split(sent: list[Frame], rnd: random.Random) -> None:
    wire = b"".join(map(encode_frame, sent))
    cuts = sorted(rnd.randint(0, len(wire)) for _ in range(rnd.randint(0, 6)))
    decoder = RelpDecoder()
    got: list[Frame] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if a < b:  # b"" would mean EOF
            got += decoder.receive_data(wire[a:b])
    got += decoder.receive_data(b"")
    assert got == sent
    assert decode(wire, 1) == (sent, None)


small_frames = st.builds(Frame, txnrs, commands, st.binary(max_size=20)) | st.just(
    Frame(0, "serverclose")
)


@st.composite
def damaged_wires(draw: st.DrawFn) -> tuple[bytes, str, list[Frame], list[int]]:
    """Encoded frames, whole, cut anywhere, with one octet changed, or garbage;
    with which, the frames, and where each frame ends on the wire."""
    sent = draw(st.lists(small_frames, max_size=4))
    encoded = [encode_frame(f) for f in sent]
    ends = list(itertools.accumulate(map(len, encoded)))
    wire = b"".join(encoded)
    shape = draw(st.sampled_from(["whole", "cut", "changed", "garbage"]))
    if shape == "cut":
        wire = wire[: draw(st.integers(0, len(wire)))]
    elif shape == "changed" and wire:
        at = draw(st.integers(0, len(wire) - 1))
        wire = wire[:at] + bytes([draw(st.integers(0, 255))]) + wire[at + 1 :]
    elif shape == "garbage":
        wire = draw(st.binary(max_size=60))
    return wire, shape, sent, ends


def test_arbitrary_bytes_never_crash() -> None:
    branches = Branches("frames", "nothing", "frames, then an error", "an error")

    @given(damaged_wires())
    def check(case: tuple[bytes, str, list[Frame], list[int]]) -> None:
        wire, shape, sent, ends = case
        whole = decode(wire)
        assert decode(wire, 1) == whole
        if shape == "whole":
            assert whole == (sent, None)
        elif shape == "cut":  # the frames before the cut, an error if it split one
            complete = [end for end in ends if end <= len(wire)]
            assert whole[0] == sent[: len(complete)]
            assert (whole[1] is None) == (len(wire) in [0, *complete])
        frames, error = whole
        if error is None:
            branches.reach("frames" if frames else "nothing")
        else:
            branches.reach("frames, then an error" if frames else "an error")

    check()
    branches.assert_all_reached()


@given(st.integers(1, MAX_TXNR))
def test_next_txnr_wraps_to_1(txnr: int) -> None:
    after = next_txnr(txnr)
    assert after == (1 if txnr == MAX_TXNR else txnr + 1)
    assert 1 <= after <= MAX_TXNR


# -- offers --------------------------------------------------------------------


def test_offers_as_librelp_sends_them() -> None:
    offers = parse_offers(LIBRELP_OPEN[10:-1])
    assert offers.get("relp_version") == ("0",)
    assert offers.get("relp_software") == ("librelp", "1.11.0", "http://librelp.adiscon.com")
    assert offers.get("commands") == ("syslog",)
    assert offers.get("absent") is None
    assert parse_offers(b"a=\n\nb=1,,2\nflag") == Offers(
        (("a", ()), ("b", ("1", "2")), ("flag", ()))
    )


def test_our_offers_round_trip() -> None:
    wire = encode_offers(our_offers(("relay", "9.9", "https://example.org/relay")))
    assert wire == (
        b"relp_version=0\ncommands=syslog\nrelp_software=relay,9.9,https://example.org/relay"
    )
    assert encode_offers(parse_offers(wire)) == wire
    with pytest.raises(LocalProtocolError):
        encode_offers(Offers((("x", ("a,b",)),)))

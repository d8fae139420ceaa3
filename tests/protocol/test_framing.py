"""RFC 6587 framing: relay/protocol/framing.py."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.framing import (
    FrameDecoder,
    Framing,
    OversizePolicy,
    encode_lines,
    encode_octet_counted,
    limit_frames,
    split_octet_counted,
    utf8_cut,
)

GOOD = b"<13>1 2026-11-22T00:00:00Z host app - - - the next good message"


def decode(
    data: bytes, chunk: int | None = None, **kwargs: object
) -> tuple[list[bytes], FrameDecoder]:
    """Feed ``data`` whole (or ``chunk`` bytes at a time), then EOF."""
    decoder = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    frames: list[bytes] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        frames += decoder.receive_data(data[i : i + step])
    frames += decoder.receive_data(b"")
    return frames, decoder


# RFC 6587 §3.4.1: "MSG-LEN SP SYSLOG-MSG"; §3.4.2: the trailer is LF.
@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(b"11 <13>1 - - -", [b"<13>1 - - -"], id="rfc6587-3.4.1-one-frame"),
        pytest.param(b"3 abc3 def", [b"abc", b"def"], id="octet-back-to-back"),
        pytest.param(b"<13>a\n<14>b\n", [b"<13>a", b"<14>b"], id="rfc6587-3.4.2-lf"),
        pytest.param(b"<13>no trailer", [b"<13>no trailer"], id="lf-final-frame-at-eof"),
        pytest.param(b"<13>a\n\n\n<14>b\n", [b"<13>a", b"<14>b"], id="lf-empty-lines"),
        pytest.param(b"<13>a\r\n\r\n<14>b\r\n", [b"<13>a", b"<14>b"], id="lf-crlf-trailer"),
        pytest.param(b"<13>a\rb\n", [b"<13>a\rb"], id="lf-inner-cr-kept"),
        pytest.param(b"5 a\nb\nc", [b"a\nb\nc"], id="octet-embedded-lf"),
        pytest.param(b"3 \x00\xff\n", [b"\x00\xff\n"], id="octet-binary"),
        pytest.param(b"3 abc\n3 def\n", [b"abc", b"def"], id="octet-with-lf-trailers"),
        pytest.param(b"0 3 abc0 ", [b"abc"], id="octet-empty-frames"),
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 2, 7])
def test_decode(wire: bytes, expected: list[bytes], chunk: int | None) -> None:
    frames, _ = decode(wire, chunk)
    assert frames == expected


def test_framing_chosen_by_first_octet() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"12 ")
    assert decoder.framing is Framing.OCTET_COUNTING
    decoder = FrameDecoder()
    decoder.receive_data(b"<13>")
    assert decoder.framing is Framing.NON_TRANSPARENT


def test_forced_lf_framing_keeps_leading_digits() -> None:
    frames, _ = decode(b"2026 is a year\n", framing=Framing.NON_TRANSPARENT)
    assert frames == [b"2026 is a year"]


def test_wire_is_the_received_bytes_for_clean_octet_frames() -> None:
    decoder = FrameDecoder()
    wire = b"3 abc4 defg"
    assert decoder.receive_data(wire + b"5 hi") == [b"abc", b"defg"]
    assert decoder.clean_octet_counted == wire
    assert decoder.receive_data(b"jkl") == [b"hijkl"]
    assert decoder.clean_octet_counted == b"5 hijkl"


def test_wire_is_none_when_frames_were_repaired() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"3 abc\n3 def")
    assert decoder.clean_octet_counted is None


# -- malformed input: never crash, never lose the next good message ----------


def _framed(*messages: bytes) -> bytes:
    return encode_octet_counted(list(messages))


# Each malformed frame, and what it is forwarded as: byte for byte, with the
# framing errors counted. A bad count is read as a non-transparent frame up to
# the next LF or the next plausible header (DIGITS SP <): so "-5 <13>negative"
# is "-", then a 5-octet frame "<13>n", then "egative".
MALFORMED_OCTET = [
    pytest.param(b"12x <13>bad count\n", [b"12x <13>bad count"], 1, id="letters-in-count"),
    pytest.param(b"99999999999999999 x\n", [b"99999999999999999 x"], 1, id="absurd-count"),
    pytest.param(b"-5 <13>negative\n", [b"-", b"<13>n", b"egative"], 2, id="negative-count"),
    pytest.param(b"5x", [b"5x"], 1, id="count-without-space"),
    pytest.param(b" 5 hello", [b" 5 hello"], 1, id="leading-space"),
    pytest.param(
        b"<13>bad PRI is still forwarded\n",
        [b"<13>bad PRI is still forwarded"],
        1,
        id="lf-frame-in-octet-stream",
    ),
    pytest.param(b"\x00\x00\x00\n", [b"\x00\x00\x00"], 1, id="nul-bytes"),
    pytest.param(b"\xff\xfe invalid utf-8\n", [b"\xff\xfe invalid utf-8"], 1, id="invalid-utf8"),
]


@pytest.mark.parametrize(("garbage", "forwarded", "errors"), MALFORMED_OCTET)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_garbage_in_octet_stream_keeps_next_good_message(
    garbage: bytes, forwarded: list[bytes], errors: int, chunk: int | None
) -> None:
    wire = _framed(b"<13>first") + garbage + _framed(GOOD)
    frames, decoder = decode(wire, chunk)
    # The garbage is forwarded raw (never silently dropped), between the two.
    assert frames == [b"<13>first", *forwarded, GOOD]
    assert decoder.statistics() == (0, 0, errors)


@pytest.mark.parametrize(
    ("garbage", "forwarded"),
    [
        pytest.param(b"<999>bad PRI\n", [b"<999>bad PRI"], id="bad-pri"),
        pytest.param(b"no PRI at all\n", [b"no PRI at all"], id="no-pri"),
        pytest.param(b"\x00\x01\x02\n", [b"\x00\x01\x02"], id="nul-bytes"),
        pytest.param(b"\xc3\x28 invalid utf-8\n", [b"\xc3\x28 invalid utf-8"], id="invalid-utf8"),
        pytest.param(b"\r\n", [], id="bare-crlf"),  # an empty line carries no message
    ],
)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_garbage_in_lf_stream_keeps_next_good_message(
    garbage: bytes, forwarded: list[bytes], chunk: int | None
) -> None:
    frames, decoder = decode(b"<13>first\n" + garbage + GOOD + b"\n", chunk)
    assert frames == [b"<13>first", *forwarded, GOOD]  # forwarded raw, byte-exact
    assert decoder.statistics() == (0, 0, 0)


@pytest.mark.parametrize("policy", list(OversizePolicy))
@pytest.mark.parametrize("chunk", [None, 1, 10, 100])
def test_oversize_octet_frame(policy: OversizePolicy, chunk: int | None) -> None:
    big = b"<13>" + b"x" * 300
    frames, decoder = decode(_framed(big, GOOD), chunk, max_frame=100, oversize=policy)
    assert frames[-1] == GOOD
    if policy is OversizePolicy.TRUNCATE:
        assert frames == [big[:100], GOOD]
        assert (decoder.truncated, decoder.dropped) == (1, 0)
    else:
        assert frames == [GOOD]
        assert (decoder.truncated, decoder.dropped) == (0, 1)


@pytest.mark.parametrize("policy", list(OversizePolicy))
@pytest.mark.parametrize("chunk", [None, 1, 10, 100])
def test_oversize_lf_frame(policy: OversizePolicy, chunk: int | None) -> None:
    big = b"<13>" + b"y" * 300
    frames, decoder = decode(big + b"\n" + GOOD + b"\n", chunk, max_frame=100, oversize=policy)
    assert frames[-1] == GOOD
    assert len(frames) == (2 if policy is OversizePolicy.TRUNCATE else 1)
    if policy is OversizePolicy.TRUNCATE:
        assert frames[0] == big[:100]
    assert decoder.truncated + decoder.dropped == 1


def test_oversize_never_splits_into_several_messages() -> None:
    frames, _ = decode(b"<13>" + b"z" * 1000 + b"\n", 7, max_frame=64)
    assert len(frames) == 1


def test_truncated_octet_frame_at_eof_is_kept_and_counted() -> None:
    frames, decoder = decode(b"100 <13>cut short")
    assert frames == [b"<13>cut short"]
    assert decoder.truncated == 1


def test_buffer_stays_bounded_without_trailer() -> None:
    decoder = FrameDecoder(max_frame=1000)
    for _ in range(100):
        decoder.receive_data(b"a" * 999)
    assert len(decoder._buf) <= 1000


def test_receive_after_eof_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"x")


# -- UTF-8 aware truncation --------------------------------------------------


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"abcdef", 3, b"abc"),
        ("aé".encode(), 2, b"a"),  # é is 2 bytes: do not cut inside it
        ("a€".encode(), 3, b"a"),
        ("a😀".encode(), 4, b"a"),
        (b"a\xff\xfe\xfd", 2, b"a\xff"),  # invalid UTF-8: cut exactly
        (b"abc", 10, b"abc"),
    ],
)
def test_utf8_cut(data: bytes, limit: int, expected: bytes) -> None:
    assert utf8_cut(data, limit) == expected


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_utf8_cut_yields_valid_utf8(text: str, limit: int) -> None:
    cut = utf8_cut(text.encode(), limit)
    assert len(cut) <= limit
    cut.decode("utf-8")  # does not raise


# -- round trips --------------------------------------------------------------

messages = st.lists(st.binary(min_size=1, max_size=300), max_size=30)


@settings(max_examples=300, deadline=None)
@given(messages, st.integers(min_value=1, max_value=64))
def test_octet_counting_round_trip(msgs: list[bytes], chunk: int) -> None:
    """Any bytes, any read boundaries: octet-counted frames come back exact."""
    frames, decoder = decode(encode_octet_counted(msgs), chunk, framing=Framing.OCTET_COUNTING)
    assert frames == msgs
    assert decoder.framing_errors == decoder.truncated == 0


@settings(max_examples=300, deadline=None)
@given(
    # LF framing cannot carry LF, and a CR before the LF is read as trailer.
    st.lists(
        st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b and b[-1:] != b"\r"),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_lf_round_trip(msgs: list[bytes], chunk: int) -> None:
    frames, _ = decode(encode_lines(msgs), chunk, framing=Framing.NON_TRANSPARENT)
    assert frames == msgs


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=400),
    st.integers(min_value=1, max_value=64),
    st.sampled_from(list(OversizePolicy)),
)
def test_arbitrary_bytes_never_crash_and_stay_bounded(
    data: bytes, chunk: int, policy: OversizePolicy
) -> None:
    frames, _ = decode(data, chunk, max_frame=50, oversize=policy)
    assert all(0 < len(f) <= 50 for f in frames)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100).filter(lambda b: b" " not in b), st.integers(1, 32))
def test_good_message_survives_any_garbage_before_a_newline(garbage: bytes, chunk: int) -> None:
    """Junk that holds no plausible ``MSG-LEN SP`` header is resynchronised on the
    next LF, and the frame after it comes out exact. (Junk that does look like a
    header is indistinguishable from a frame, for us as for rsyslog.)"""
    wire = _framed(b"<13>first") + garbage + b"\n" + _framed(GOOD)
    frames, _ = decode(wire, chunk)
    assert frames[-1] == GOOD


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (OversizePolicy.TRUNCATE, [b"ok", b"ab", "é".encode()]),  # not half of an é
        (OversizePolicy.DROP, [b"ok"]),
    ],
)
def test_limit_frames(policy: OversizePolicy, kept: list[bytes]) -> None:
    frames = [b"ok", b"abc", "éé".encode()]
    assert limit_frames(frames, 2, policy) == (kept, 2)


# -- receive_batch: the relay's lazy path --------------------------------------

# Pieces of an octet-counted stream: good frames (some over max_frame=50), empty
# frames, trailers, garbage, headers with no frame after them.
stream_pieces = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=80).map(lambda m: encode_octet_counted([m])),
        st.integers(45, 56).map(lambda n: encode_octet_counted([b"o" * n])),  # about max_frame
        st.sampled_from([b"0 ", b"\n", b"\r\n", b"12x ", b"-3 abc", b"00005 hello", b"7"]),
        st.binary(max_size=20),
    ),
    max_size=20,
)


@settings(max_examples=500, deadline=None)
@given(
    stream_pieces,
    st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    st.sampled_from([Framing.OCTET_COUNTING, Framing.NON_TRANSPARENT]),
)
def test_receive_batch_equals_receive_data_for_any_split(
    pieces: list[bytes], cuts: list[int], framing: Framing
) -> None:
    """Whatever the bytes and the read boundaries, the messages receive_batch
    stands for (sliced out of ``wire`` when it returns none) are those
    receive_data returns, with the same counts, wire form and statistics."""
    data = b"".join(pieces)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    reads = [data[a:b] for a, b in itertools.pairwise(bounds)] + [b""]
    eager = FrameDecoder(framing=framing, max_frame=50)
    lazy = FrameDecoder(framing=framing, max_frame=50)
    for read in reads:
        expected = eager.receive_data(read)
        messages, wire, count, nbytes = lazy.receive_batch(read)
        if messages is None:
            assert wire is not None and count > 0
            messages = split_octet_counted(wire)
        assert messages == expected
        assert (count, nbytes) == (len(expected), sum(map(len, expected)))
        assert wire == eager.clean_octet_counted
        assert lazy.statistics() == eager.statistics()


def test_receive_batch_leaves_clean_frames_in_one_buffer() -> None:
    """The hot path: clean frames come back as the received bytes, unsliced, and
    a frame cut by the read boundary comes whole in the next one."""
    wire = encode_octet_counted([b"<13>one", b"<13>two", b"<13>three"])
    decoder = FrameDecoder()
    cut = len(wire) - 3
    assert decoder.receive_batch(wire[:cut]) == (None, wire[:18], 2, 14)
    assert decoder.receive_batch(wire[cut:]) == (None, wire[18:], 1, 9)
    assert decoder.receive_batch(b"") == ([], None, 0, 0)


def test_receive_batch_reads_a_malformed_frame_as_receive_data_does() -> None:
    wire = _framed(b"<13>first") + b"12x junk\n" + _framed(GOOD)
    messages, clean, count, _ = FrameDecoder().receive_batch(wire)
    assert messages == [b"<13>first", b"12x junk", GOOD] and count == 3
    assert clean is None

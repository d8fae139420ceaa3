"""What a local socket's message becomes: relay/protocol/local.py.

The expected bytes are what a real rsyslogd 8.2302 forwards (imuxsock with
its defaults, omfile with RSYSLOG_TraditionalForwardFormat) for the same
datagram received at 13:22:36 on host "vm"; tests/interop/test_local.py
checks the same against a running rsyslogd.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.protocol import local
from relay.protocol.framing import OversizePolicy

HEAD = local.prefix(local.bsd_timestamp(12, 1, 13, 22, 36), b"vm")


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        pytest.param(
            b"<13>Dec  1 13:20:39 tag[123]: bsd ts",
            b"<13>Dec  1 13:22:36 vm tag[123]: bsd ts",
            id="bsd-timestamp-replaced",
        ),
        pytest.param(
            b"<13>Dec 11 03:20:39 tag[123]: x",
            b"<13>Dec  1 13:22:36 vm tag[123]: x",
            id="two-digit-day",
        ),
        pytest.param(
            b"<13>dec  1 13:20:39 tag: lower month",
            b"<13>Dec  1 13:22:36 vm tag: lower month",
            id="month-in-any-case",
        ),
        pytest.param(
            b"<13>tag[123]: no timestamp",
            b"<13>Dec  1 13:22:36 vm tag[123]: no timestamp",
            id="no-timestamp",
        ),
        pytest.param(
            b"<13>1 2020-01-01T00:00:00Z host app 12 ID - rfc5424 msg",
            b"<13>Dec  1 13:22:36 vm 1 2020-01-01T00:00:00Z host app 12 ID - rfc5424 msg",
            id="rfc5424-kept-as-text",
        ),
        pytest.param(
            b"<13>  leading spaces after pri",
            b"<13>Dec  1 13:22:36 vm   leading spaces after pri",
            id="leading-spaces",
        ),
        pytest.param(
            b"<13>Dec  1 13:20:39   three spaces after ts",
            b"<13>Dec  1 13:22:36 vm   three spaces after ts",
            id="spaces-after-timestamp",
        ),
        pytest.param(b"<13>", b"<13>Dec  1 13:22:36 vm  ", id="empty-message"),
        pytest.param(b"<13>Dec  1 13:20:39 ", b"<13>Dec  1 13:22:36 vm  ", id="timestamp-only"),
        pytest.param(b"<13>Dec  1 13:20:39", b"<13>Dec  1 13:22:36 vm  ", id="timestamp-no-sp"),
        pytest.param(b"<13>hello", b"<13>Dec  1 13:22:36 vm hello ", id="tag-only"),
        pytest.param(
            b"<13>Dec  1 13:20:39 somehost tag: x",
            b"<13>Dec  1 13:22:36 vm somehost tag: x",
            id="no-word-read-as-hostname",
        ),
        pytest.param(
            b"<13> Dec  1 13:20:39 tag: x",
            b"<13>Dec  1 13:22:36 vm  Dec  1 13:20:39 tag: x",
            id="space-before-timestamp",
        ),
        pytest.param(b"<191>Dec  1 13:20:39 x: y", b"<191>Dec  1 13:22:36 vm x: y", id="pri-191"),
        # Where relay keeps what rsyslog mangles (module docstring):
        pytest.param(b"no pri at all", b"<13>Dec  1 13:22:36 vm no pri at all", id="no-pri"),
        pytest.param(b"<192>x y", b"<13>Dec  1 13:22:36 vm <192>x y", id="pri-out-of-range"),
        pytest.param(
            b"<13>2020-01-01T00:00:00Z tag: x",
            b"<13>Dec  1 13:22:36 vm 2020-01-01T00:00:00Z tag: x",
            id="rfc3339-kept",
        ),
    ],
)
def test_fill_in_as_rsyslog_forwards(sent: bytes, forwarded: bytes) -> None:
    assert local.fill_in([sent], HEAD) == [forwarded]


def test_fill_in_keeps_order_and_count() -> None:
    sent = [b"<13>Dec  1 13:20:39 a[%d]: seq=%d" % (i, i) for i in range(100)]
    out = local.fill_in(sent, HEAD)
    assert out == [b"<13>Dec  1 13:22:36 vm a[%d]: seq=%d" % (i, i) for i in range(100)]


@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=300)
def test_fill_in_never_raises_and_always_gives_a_header(messages: list[bytes]) -> None:
    out = local.fill_in(messages, HEAD)
    assert len(out) == len(messages)
    for message, filled in zip(messages, out, strict=True):
        pri_end = filled.index(b">") + 1
        assert filled[pri_end:].startswith(HEAD)
        if len(message) > 5 + 16 + 8:  # at most PRI and a timestamp go from its start
            assert filled.endswith((message[-8:], message[-8:] + b" "))


# Pieces of what arrives on /dev/log, valid and not, for fill_in's two paths.
_PRIS = [b"<0>", b"<9>", b"<13>", b"<99>", b"<191>", b"<192>", b"<013>", b"<1", b"<>", b""]
_STAMPS = [
    b"Dec  1 13:20:39",
    b"Jan 31 00:00:00",
    b"dec 11 03:20:39",
    b"MAY  5 23:59:59",
    b"dEc  1 13:20:39",  # mixed case: not a month for rsyslog
    b"Abc  1 13:20:39",
    b"Dec 1 13:20:39",
    b"Dec  1 13:20:3x",
    b"",
]
_BODIES = st.binary(max_size=24) | st.lists(
    st.sampled_from([b" ", b"tag[1]:", b">", b"<13>", b"\0", b"\n", b"x", b"Dec  1 13:20:39 "]),
    max_size=6,
).map(b"".join)
_LOCAL_MESSAGES = st.builds(
    lambda pri, stamp, space, body: pri + stamp + space + body,
    st.sampled_from(_PRIS),
    st.sampled_from(_STAMPS),
    st.sampled_from([b" ", b"", b"  "]),
    _BODIES,
)


@given(st.lists(_LOCAL_MESSAGES, max_size=12))
@example([b"<13>Dec  1 13:20:39 t: a\0<13>Dec  1 13:20:39 t: b", b"<13>no stamp"])  # 2 + 0 matches
@settings(max_examples=500)
def test_fill_in_a_batch_at_once_gives_what_the_loop_gives(messages: list[bytes]) -> None:
    assert local.fill_in(messages, HEAD) == local._fill_in_each(messages, HEAD)


def test_fill_in_does_what_syslog3_writes_without_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-pass path is taken for every shape syslog(3), logger and journald
    write (the loop costs 2.5 times as much: relay/protocol/local.py)."""

    def loop(messages: list[bytes], head: bytes) -> list[bytes]:
        raise AssertionError(f"the loop was taken for {messages!r}")

    sent = [
        b"<%d>%s %2d 13:20:39 tag[%d]: text > %d" % (pri, month, day, i, i)
        for i, (pri, month, day) in enumerate(
            (p, m, d) for p in (0, 13, 30, 191) for m in (b"Jan", b"sep", b"DEC") for d in (1, 31)
        )
    ]
    expected = local._fill_in_each(sent, HEAD)
    monkeypatch.setattr(local, "_fill_in_each", loop)
    assert local.fill_in(sent, HEAD) == expected


def test_bsd_timestamp_pads_the_day_with_a_space() -> None:
    assert local.bsd_timestamp(1, 5, 3, 4, 5) == b"Jan  5 03:04:05"
    assert local.bsd_timestamp(12, 31, 23, 59, 59) == b"Dec 31 23:59:59"


def test_annotation_is_imuxsocks_trusted_properties() -> None:
    assert local.annotation(1234, 0, 4, "logger") == b" @[_PID=1234 _UID=0 _GID=4 _COMM=logger]"
    assert local.annotation(1, 2, 3, None) == b" @[_PID=1 _UID=2 _GID=3]"


def decode(data: bytes, chunk: int, max_frame: int = 100) -> list[bytes]:
    decoder = local.StreamDecoder(max_frame, OversizePolicy.TRUNCATE)
    frames: list[bytes] = []
    for i in range(0, len(data), chunk):
        frames += decoder.receive_data(data[i : i + chunk])
    return frames + decoder.receive_data(b"")


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize(
    ("wire", "frames"),
    [
        pytest.param(b"<13>a: one\n<13>a: two\n", [b"<13>a: one", b"<13>a: two"], id="lf"),
        pytest.param(b"<13>a: one\0<13>a: two\0", [b"<13>a: one", b"<13>a: two"], id="nul"),
        pytest.param(b"<13>a: one\n\0<13>a: two", [b"<13>a: one", b"<13>a: two"], id="mixed"),
        pytest.param(b"9 <13>a: 1\n9 <13>a: 2\n", [b"<13>a: 1\n", b"<13>a: 2\n"], id="octet"),
        pytest.param(b"\0\n<13>x\0", [b"<13>x"], id="leading-trailers"),
        pytest.param(b"\0\0\0", [], id="only-nul"),
    ],
)
def test_stream_frames(wire: bytes, frames: list[bytes], chunk: int) -> None:
    assert decode(wire, chunk) == frames


@given(st.binary(max_size=300), st.integers(1, 50))
@settings(max_examples=300)
def test_stream_decoder_takes_any_bytes(data: bytes, chunk: int) -> None:
    frames = decode(data, chunk, max_frame=40)
    assert all(len(f) <= 40 for f in frames)

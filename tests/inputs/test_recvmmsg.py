"""recvmmsg through ctypes (relay/inputs/recvmmsg.py), over real sockets: what
it reads is what the socket module's one-a-call reads would give."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.inputs import reader, recvmmsg
from relay.inputs.reader import RECV, RECVFROM, DatagramReader, Handed
from relay.inputs.recvmmsg import COUNT, Receiver, sender
from tests.waiting import await_until


def test_it_is_there() -> None:
    """Linux with glibc: the reader uses it (where not, it reads one a call)."""
    assert recvmmsg.available()


def read_all(receiver: Receiver) -> list[int]:
    sizes: list[int] = []
    while True:
        try:
            got = receiver.receive(COUNT, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return sizes
        sizes += receiver.sizes(got)
        if got < COUNT:
            return sizes


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_datagrams_and_senders_as_recvfrom_gives_them(family: int, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as server:
        server.bind((host, 0))
        receiver = Receiver(server, 2048, names=True, creds=False)
        senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            for client in senders:
                client.bind((host, 0))
            sent = []
            for seq in range(150):  # more than COUNT: three calls
                client = senders[seq % 2]
                client.sendto(b"<13>seq=%d" % seq, server.getsockname())
                sent.append((b"<13>seq=%d" % seq, client.getsockname()))
            got: list[tuple[bytes, object]] = []
            while len(got) < len(sent):
                count = receiver.receive(COUNT, socket.MSG_DONTWAIT)
                names = receiver.names_of(count)
                for i, size in enumerate(receiver.sizes(count)):
                    start = i * receiver.slot
                    data = receiver.view[start : start + size].tobytes()
                    got.append((data, sender(names[i])))
            assert got == sent
            with pytest.raises(BlockingIOError):
                receiver.receive(COUNT, socket.MSG_DONTWAIT)
        finally:
            for client in senders:
                client.close()


def test_a_datagram_longer_than_a_slot_is_cut_to_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        receiver = Receiver(server, 100, names=False, creds=False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for size in (99, 100, 101, 5000):
                client.sendto(b"x" * size, server.getsockname())
        assert read_all(receiver) == [99, 100, 100, 100]


def test_credentials_are_the_kernels(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        receiver = Receiver(server, 2048, names=False, creds=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for seq in range(3):
                client.sendto(b"<13>app: seq=%d" % seq, path)
        count = receiver.receive(COUNT, socket.MSG_DONTWAIT)
        assert count == 3
        ours = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
        assert [receiver.creds(i) for i in range(count)] == [ours] * 3


def test_without_credentials_asked_there_are_none(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)  # no SO_PASSCRED: the kernel sends no SCM_CREDENTIALS
        receiver = Receiver(server, 2048, names=False, creds=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"<13>app: hello", path)
        assert receiver.receive(COUNT, socket.MSG_DONTWAIT) == 1
        assert receiver.creds(0) == b""


# What a look may find: kept whole (an LF inside too), a trailer LF (dropped), empty (skipped),
# over the limit (dropped or cut), at the limit. An example holds datagrams
# taken whole and one kind of the others (or none, or all), so that looks
# that are whole but for one kind are common.
_LIMIT = 64
_WHOLE = [b"<13>seq", b"x" * _LIMIT, b"<13>multi\nline"]
_OTHERS = [b"<13>lf\n", b"<13>lf2\n\n", b"", b"\n", b"z" * (_LIMIT + 1), b"y" * 80]
_SENDERS = st.sampled_from([0, 0, 0, 1])  # which sender: mostly one, as on a busy host
_DATAGRAMS = st.sampled_from([[], *([other] for other in _OTHERS), _OTHERS]).flatmap(
    lambda others: st.lists(
        st.tuples(_SENDERS, st.sampled_from(_WHOLE + others)), min_size=1, max_size=150
    )
)


@contextlib.contextmanager
def _reading(
    how: str, *, truncate: bool = False, drain_limit: int, drain_bytes: int
) -> Iterator[tuple[socket.socket, DatagramReader]]:
    """A UDP socket on loopback with room for what a test sends, and a reader
    of it that naps (its queue taken as long) and looks with recvmmsg."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        yield (
            server,
            DatagramReader(
                "test",
                server,
                how,
                max_message_size=_LIMIT,
                truncate=truncate,
                drain_limit=drain_limit,
                drain_bytes=drain_bytes,
                buffer_size=_LIMIT + 2,
                kernel_queue=1024,
            ),
        )


def _looks(
    how: str, datagrams: list[tuple[int, bytes]], truncate: bool, drain_bytes: int
) -> list[list[Handed]]:
    """What a reader's pulls make of ``datagrams``, a hand-over each time one is
    full: recvmmsg's, then one a call's (the same datagrams sent again, from
    the same senders)."""
    with _reading(how, truncate=truncate, drain_limit=10_000, drain_bytes=drain_bytes) as (
        server,
        reading,
    ):
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        looks: list[list[Handed]] = []
        try:
            for client in senders:
                client.bind(("127.0.0.1", 0))
            for pull in (reading._pull_many, reading._pull_one):
                for which, data in datagrams:
                    senders[which].sendto(data, server.getsockname())
                handed = [Handed()]
                while True:
                    if handed[-1].nbytes >= drain_bytes:
                        handed.append(Handed())
                    try:
                        pull(handed[-1], socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                looks.append(handed)
        finally:
            for client in senders:
                client.close()
        return looks


def _merged(looks: list[Handed]) -> tuple[dict[object, list[bytes]], tuple[int, ...]]:
    groups: dict[object, list[bytes]] = {}
    for handed in looks:
        for key, messages in handed.groups.items():
            groups.setdefault(key, []).extend(messages)
    return groups, tuple(
        sum(getattr(h, name) for h in looks)
        for name in ("count", "nbytes", "truncated", "dropped_oversize")
    )


@given(
    _DATAGRAMS, st.booleans(), st.sampled_from([RECV, RECVFROM]), st.sampled_from([1 << 30, 300])
)
@example([(0, b"<13>seq"), (1, b"<13>seq")], False, RECVFROM, 1 << 30)  # two senders in one look
@example([(0, b"<13>seq"), (0, b"")], False, RECV, 1 << 30)  # an empty one in a whole look
@example([(0, b"<13>seq"), (0, b"z" * (_LIMIT + 1))], True, RECV, 1 << 30)  # one over the limit
@example([(0, b"x" * _LIMIT)] * 20, False, RECV, 300)  # full after five: the rest wait
@settings(max_examples=200, deadline=None)
def test_a_look_with_recvmmsg_takes_what_one_a_call_takes(
    datagrams: list[tuple[int, bytes]], truncate: bool, how: str, drain_bytes: int
) -> None:
    """The reader's fast look (one sender, none cut, none with a trailer, in one
    step), its datagram-by-datagram loop, and what a call read past a full
    hand-over (taken by the next) agree with recvfrom, call for call; no
    hand-over holds more than one datagram past DRAIN_BYTES."""
    many, one = _looks(how, datagrams, truncate, drain_bytes)
    assert _merged(many) == _merged(one)
    assert max(h.nbytes for h in many) < drain_bytes + _LIMIT + 2


@pytest.mark.parametrize("flood", [True, False], ids=["read-by-trio", "read-by-the-thread"])
@pytest.mark.parametrize("stop", [True, False], ids=["stop-at-the-first", "all-read"])
async def test_what_a_call_read_past_a_full_hand_over_comes_next_and_at_the_stop(
    monkeypatch: pytest.MonkeyPatch, flood: bool, stop: bool
) -> None:
    """A recvmmsg call takes up to 64 datagrams whatever a hand-over still has
    room for; what does not fit waits in the reader and comes first in the
    next, also when the socket then holds nothing more (trio reading a flood
    must not wait on it), and at a stop (here at the first hand-over, when 57
    wait). Every datagram once, in order."""
    monkeypatch.setattr(reader, "HANDOVER", 3600.0)  # hand-overs only when full
    if not flood:
        monkeypatch.setattr(reader, "FLOOD_SHARE", 0.0)
    sent = [b"<13>app: seq=%03d" % i for i in range(60)]
    handed: list[Handed] = []
    # Full after three (17 bytes each): a call reads more.
    with _reading(RECV, drain_limit=1024, drain_bytes=50) as (server, reading):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in sent:
                client.sendto(data, server.getsockname())
        async with trio.open_nursery() as nursery:

            def deliver(one: Handed) -> None:
                handed.append(one)
                if stop:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(reading.run, deliver)
            await await_until(lambda: sum(h.count for h in handed) == len(sent), 10)
            nursery.cancel_scope.cancel()
    assert [m for h in handed for m in h.groups.get(b"", [])] == sent
    if not stop:
        assert max(h.nbytes for h in handed) < 50 + _LIMIT

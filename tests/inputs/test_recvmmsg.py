"""recvmmsg through ctypes (relay/inputs/recvmmsg.py), over real sockets: what
it reads is what the socket module's one-a-call reads would give."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.inputs import recvmmsg
from relay.inputs.reader import RECV, RECVFROM, DatagramReader, Handed
from relay.inputs.recvmmsg import COUNT, Receiver, sender


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


# What a look may find: kept whole, a trailer LF (dropped), empty (skipped),
# over the limit (dropped or cut), at the limit. An example holds datagrams
# taken whole and one kind of the others (or none, or all), so that looks
# that are whole but for one kind are common.
_LIMIT = 64
_WHOLE = [b"<13>seq", b"x" * _LIMIT]
_OTHERS = [b"<13>lf\n", b"<13>lf2\n\n", b"", b"\n", b"z" * (_LIMIT + 1), b"y" * 80]
_SENDERS = st.sampled_from([0, 0, 0, 1])  # which sender: mostly one, as on a busy host
_DATAGRAMS = st.sampled_from([[], *([other] for other in _OTHERS), _OTHERS]).flatmap(
    lambda others: st.lists(
        st.tuples(_SENDERS, st.sampled_from(_WHOLE + others)), min_size=1, max_size=150
    )
)


def _looks(how: str, datagrams: list[tuple[int, bytes]], truncate: bool) -> list[Handed]:
    """What a reader's pulls make of ``datagrams``: recvmmsg's, then one a call's
    (the same datagrams sent again, from the same senders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        reader = DatagramReader(
            "test",
            server,
            how,
            max_message_size=_LIMIT,
            truncate=truncate,
            drain_limit=10_000,
            drain_bytes=1 << 30,
            buffer_size=_LIMIT + 2,
            kernel_queue=1024,
        )
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        looks: list[Handed] = []
        try:
            for client in senders:
                client.bind(("127.0.0.1", 0))
            for pull in (reader._pull_many, reader._pull_one):
                for which, data in datagrams:
                    senders[which].sendto(data, server.getsockname())
                handed = Handed()
                while True:
                    try:
                        pull(handed, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                looks.append(handed)
        finally:
            for client in senders:
                client.close()
        return looks


@given(_DATAGRAMS, st.booleans(), st.sampled_from([RECV, RECVFROM]))
@example([(0, b"<13>seq"), (1, b"<13>seq")], False, RECVFROM)  # two senders in one look
@example([(0, b"<13>seq"), (0, b"")], False, RECV)  # an empty one in a whole look
@example([(0, b"<13>seq"), (0, b"z" * (_LIMIT + 1))], True, RECV)  # one over the limit
@settings(max_examples=200, deadline=None)
def test_a_look_with_recvmmsg_takes_what_one_a_call_takes(
    datagrams: list[tuple[int, bytes]], truncate: bool, how: str
) -> None:
    """The reader's fast look (one sender, none cut, none with a trailer, in one
    step) and its datagram-by-datagram loop agree with recvfrom, call for call."""
    many, one = _looks(how, datagrams, truncate)
    assert many.groups == one.groups
    assert (many.count, many.nbytes, many.truncated, many.dropped_oversize) == (
        one.count,
        one.nbytes,
        one.truncated,
        one.dropped_oversize,
    )

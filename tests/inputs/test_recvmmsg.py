"""recvmmsg through ctypes (relay/inputs/recvmmsg.py), over real sockets: what
it reads is what the socket module's one-a-call reads would give."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from relay.inputs import recvmmsg
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

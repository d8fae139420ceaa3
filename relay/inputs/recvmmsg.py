"""recvmmsg(2) from Python: many datagrams in one call, with their senders or credentials.

The socket module reads one datagram a call. Each call is a system call, a
release and a retake of the GIL, and a few Python steps: about 3.1 us a
datagram (300-byte UDP, 256 waiting, a 2-core VM), 1.3 us through recvmmsg
here. The GIL counts twice: while trio is busy, a reading thread waits for
it after every call, so a thread reading one datagram a call fell behind a
flood (relay/inputs/reader.py).

:class:`Receiver` calls libc's recvmmsg through ctypes (the standard
library; the GIL is released during the call). Each of COUNT slots has its
own part of one buffer, an address and a control area; the headers are
copied from a pristine image before each call (the kernel writes lengths
into them), and read back through a memoryview of 32-bit words, never
through ctypes attributes (each of those builds an object).

Linux only (x86-64 and arm64 share the layout below); :func:`available`
says whether it can be used, and the reader falls back to one call a
datagram where it cannot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import struct
import sys

# Datagrams one call takes at most.
COUNT = 64
# Room for a sender's address (struct sockaddr_in6: 28 bytes) ...
_NAME = 32
# ... and for one SCM_CREDENTIALS message (struct ucred: pid, uid, gid).
_CONTROL = socket.CMSG_SPACE(12)
_CMSG_HEADER = socket.CMSG_LEN(0)  # the cmsghdr before the data: 16 bytes
_CREDS_END = _CMSG_HEADER + 12
_SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
# struct mmsghdr as 32-bit words: msg_namelen is word 2, msg_controllen's
# low word is 10 (it is a size_t), msg_len is 14; 16 words an entry.
_WORDS = 16
_NAMELEN = 2
_CONTROLLEN = 10
_LEN = 14
_CMSG = struct.Struct("=Qii")  # cmsg_len, cmsg_level, cmsg_type


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc_recvmmsg() -> object | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(_MMsgHdr) != _WORDS * 4:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    call.restype = ctypes.c_int
    return call


_RECVMMSG = _libc_recvmmsg()


def available() -> bool:
    """Whether :class:`Receiver` works here."""
    return _RECVMMSG is not None


def sender(name: bytes) -> object:
    """A struct sockaddr's bytes as the socket module gives an address:
    (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""
    family = int.from_bytes(name[:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, name[4:8]), port)
    if family == socket.AF_INET6:
        return (
            socket.inet_ntop(socket.AF_INET6, name[8:24]),
            port,
            int.from_bytes(name[4:8], "big"),
            int.from_bytes(name[24:28], sys.byteorder),
        )
    return name  # not seen: an input's socket is AF_INET or AF_INET6


class Receiver:
    """Reads up to COUNT datagrams of ``slot`` bytes at most (longer ones are
    cut to it) from ``sock`` per :meth:`receive`; ``names`` keeps senders'
    addresses, ``creds`` SCM_CREDENTIALS."""

    def __init__(self, sock: socket.socket, slot: int, *, names: bool, creds: bool) -> None:
        assert _RECVMMSG is not None
        self.sock = sock
        self.slot = slot
        # Anonymous memory: a page becomes resident when a datagram is
        # written to it, so COUNT slots of 64 KiB cost what small datagrams use.
        # Sliced (bytes at once) where a datagram is taken whole, viewed for the rest.
        self.data = mmap.mmap(-1, COUNT * slot)
        self.view = memoryview(self.data)
        self._names = ctypes.create_string_buffer(COUNT * _NAME) if names else None
        self._control = ctypes.create_string_buffer(COUNT * _CONTROL) if creds else None
        self.names = memoryview(self._names).cast("B") if self._names is not None else None
        self.control = memoryview(self._control).cast("B") if self._control is not None else None
        self._iovecs = (_IoVec * COUNT)()
        self._headers = (_MMsgHdr * COUNT)()
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.data))
        for i in range(COUNT):
            self._iovecs[i].base = base + i * slot
            self._iovecs[i].len = slot
            header = self._headers[i].hdr
            header.iov = ctypes.addressof(self._iovecs[i])
            header.iovlen = 1
            if self._names is not None:
                header.name = ctypes.addressof(self._names) + i * _NAME
                header.namelen = _NAME
            if self._control is not None:
                header.control = ctypes.addressof(self._control) + i * _CONTROL
                header.controllen = _CONTROL
        # What the kernel changes besides the lengths it reports: the address
        # and control lengths, reset before each call (nothing without them).
        self._pristine = bytes(self._headers) if names or creds else b""
        self._headers_at = ctypes.addressof(self._headers)
        self.words = memoryview(self._headers).cast("B").cast("I")

    def receive(self, count: int, flags: int) -> int:
        """Read up to ``count`` (at most COUNT) datagrams; how many came.
        Raises as the socket module does: BlockingIOError when none waits
        (MSG_DONTWAIT, or SO_RCVTIMEO ran out), OSError for the rest."""
        if self._pristine:
            ctypes.memmove(self._headers_at, self._pristine, len(self._pristine))
        while True:
            got: int = _RECVMMSG(  # type: ignore[operator]
                self.sock.fileno(), self._headers_at, min(count, COUNT), flags, None
            )
            if got >= 0:
                return got
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))  # EAGAIN: BlockingIOError

    def sizes(self, got: int) -> list[int]:
        """The lengths of the first ``got`` datagrams (as cut to ``slot``)."""
        return self.words[_LEN : got * _WORDS : _WORDS].tolist()

    def one_sender(self, got: int) -> bytes | None:
        """The struct sockaddr of the first ``got`` datagrams' sender when it
        is one for all (a look from one busy sender: one compare, no step a
        datagram), else None. Each slot is compared whole: a socket's
        senders' addresses are all as long (its family's), so the kernel
        never writes a slot's tail, which stays as made (zeros)."""
        assert self.names is not None
        names = self.names[: got * _NAME].tobytes()
        first = names[:_NAME]
        if names != first * got:
            return None
        return first[: self.words[_NAMELEN]]

    def names_of(self, got: int) -> list[bytes]:
        """The first ``got`` senders' struct sockaddr."""
        assert self.names is not None
        names = self.names[: got * _NAME].tobytes()  # one copy; its slices are bytes
        lengths = self.words[_NAMELEN : got * _WORDS : _WORDS].tolist()
        if min(lengths) == max(lengths):  # one family: every sender's is as long
            n = lengths[0]
            return [names[i : i + n] for i in range(0, got * _NAME, _NAME)]
        return [names[i * _NAME : i * _NAME + n] for i, n in enumerate(lengths)]

    def creds(self, i: int) -> bytes:
        """The ``i``-th datagram's struct ucred bytes (b"" without them)."""
        assert self.control is not None
        if self.words[i * _WORDS + _CONTROLLEN] < _CREDS_END:
            return b""
        start = i * _CONTROL
        _, level, kind = _CMSG.unpack_from(self.control, start)
        if level != socket.SOL_SOCKET or kind != _SCM_CREDENTIALS:
            return b""
        return self.control[start + _CMSG_HEADER : start + _CREDS_END].tobytes()

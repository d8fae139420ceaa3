"""A thread that reads a datagram socket and hands the datagrams to trio in batches.

Why a thread. A local aggregator sees a trickle: a host's ``/dev/log`` at a
few thousand messages a second, one datagram every few hundred
microseconds. Read from trio, each datagram is a wake-up of its own: epoll,
a run-loop round, the task, a ``Batch``, a spool put, the output's wake-up and
one small write. That cost about 51 us of CPU per message at 5,000/s for a
bare trio task that only waited and read, more than rsyslog's whole pipeline
(imuxsock to omfwd, about 40 us; ``scripts/bench --cases unix-tcp``). Letting
datagrams gather in the kernel first is not an answer for a unix socket: it
queues only ``net.unix.max_dgram_qlen`` datagrams (10 by kernel default)
before the sender blocks in syslog(3), and local programs must not wait.

So a thread does what rsyslog's imuxsock thread does: it blocks in the
receive call (the GIL released), takes each datagram as it comes (the
kernel's queue stays short: nobody waits), and gathers them for up to
HANDOVER before it hands the lot to trio in one wake-up (a
:class:`collections.deque` and an eventfd). A datagram costs one receive
call and a few Python operations in the thread; the trio side and
everything after it run once per HANDOVER instead of once per datagram.
A flood is handed over every DRAIN_LIMIT datagrams or DRAIN_BYTES, as the
trio reader drained it, and the thread never runs more than AHEAD
hand-overs ahead of trio.

The wait: when the thread holds datagrams it sets the socket's
``SO_RCVTIMEO`` to HANDOVER, so a receive that finds nothing returns within it
and the datagrams go; with none held it blocks without a timeout (no
wake-ups while nothing is logged). A batch therefore waits at most about
twice HANDOVER.

The thread never touches the relay's state: it reads, cuts, groups and
counts into what it hands over; the owner's ``deliver`` runs in trio's
thread. At the stop the thread is woken (``shutdown(SHUT_RD)``), joined, and
what it held is delivered, so that nothing read from the kernel is lost.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from relay.protocol.framing import utf8_cut
from relay.stats import Counters

log = logging.getLogger("relay.input")

# How long the thread lets datagrams gather before it hands them to trio:
# at 5,000 msg/s a hand-over carries about fifty. A message waits at most
# about twice this (see the docstring), as long as a disk write: nothing a
# reader of logs notices. (2 ms cost twice the CPU a message at 5,000/s.)
HANDOVER = 0.010
# Hand-overs trio has not taken yet, at most: past them the thread waits,
# and what comes waits in the kernel's buffer (bounded; a UDP socket drops
# and counts, a unix sender blocks), not in relay's memory. Reading ahead
# of trio without a bound held a million datagrams of a flood in memory.
AHEAD = 4
# A flood (DRAIN_LIMIT datagrams within HANDOVER) is read from trio, as
# before the thread, until this many looks in a row found fewer than
# QUIET_COUNT: a thread that waits for the GIL at every datagram while
# trio is busy read a flood five times slower.
QUIET_LOOKS = 64
QUIET_COUNT = 64
# struct ucred (pid, uid, gid) in one SCM_CREDENTIALS message.
_ANCILLARY = socket.CMSG_SPACE(12)
# struct timeval, for SO_RCVTIMEO (0: no timeout).
_TIMEVAL = struct.Struct("ll")
_BLOCK = _TIMEVAL.pack(0, 0)


@dataclass(slots=True)
class Handed:
    """What the thread read since its last hand-over, grouped by ``key``
    (the sender's address, or its credentials' bytes)."""

    groups: dict[object, list[bytes]] = field(default_factory=dict)
    count: int = 0
    nbytes: int = 0
    truncated: int = 0
    dropped_oversize: int = 0
    received: float = 0.0  # time.time() at the hand-over
    flood: bool = False  # the thread hands trio the socket too

    def count_into(self, counters: Counters) -> None:
        """Add what this hand-over read to an input's counters."""
        for name, amount in (
            ("received", self.count),
            ("bytes", self.nbytes),
            ("truncated", self.truncated),
            ("dropped_oversize", self.dropped_oversize),
        ):
            if amount:
                counters.add(name, amount)


# How the thread receives, and what it groups the datagrams by.
RECV = "recv"  # recv_into: one group, keyed b""
RECVFROM = "recvfrom"  # recvfrom_into: by the sender's address
RECVMSG_CREDS = "recvmsg_creds"  # recvmsg_into with SCM_CREDENTIALS: by their bytes


class DatagramReader:
    """Reads ``sock`` (a bound datagram socket) on its own thread; ``deliver``
    gets each hand-over in trio's thread. :meth:`run` until cancelled."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        how: str,
        *,
        max_message_size: int,
        truncate: bool,
        drain_limit: int,
        drain_bytes: int,
        buffer_size: int,
    ) -> None:
        self.name = name
        self.sock = sock
        self.how = how
        self.limit = max_message_size
        self.truncate = truncate
        self.drain_limit = drain_limit
        self.drain_bytes = drain_bytes
        self._buffer = bytearray(buffer_size)
        self._buffers = [self._buffer]
        self._view = memoryview(self._buffer)
        self.handover = HANDOVER  # tests change it
        self._handed: collections.deque[Handed] = collections.deque()
        self._room = threading.Semaphore(AHEAD)
        self.floods = 0  # how often trio took the socket over (for tests and curiosity)
        self._resume = threading.Event()  # trio gives the socket back after a flood
        self._stopping = False
        self._failure: BaseException | None = None
        self._wakeup = -1

    async def run(self, deliver: Callable[[Handed], None]) -> None:
        """Start the thread and deliver what it hands over, until cancelled;
        then stop the thread and deliver what it still held."""
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        thread = threading.Thread(target=self._thread, name=f"relay-input-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                await trio.lowlevel.wait_readable(self._wakeup)
                try:
                    os.eventfd_read(self._wakeup)
                except BlockingIOError:
                    continue
                if self._deliver_all(deliver):
                    await self._read_flood(deliver)
        finally:
            self._stop(thread)
            self._deliver_all(deliver)
            trio.lowlevel.notify_closing(self._wakeup)
            os.close(self._wakeup)

    def _deliver_all(self, deliver: Callable[[Handed], None]) -> bool:
        """Deliver what was handed over; True if the thread handed over the
        socket too (a flood: trio reads it now)."""
        handed = self._handed
        flood = False
        while handed:
            item = handed.popleft()
            flood = flood or item.flood
            deliver(item)
            self._room.release()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return flood

    async def _read_flood(self, deliver: Callable[[Handed], None]) -> None:
        """A flood: read the socket from trio, DRAIN_LIMIT datagrams a wake-up,
        until QUIET_LOOKS looks in a row found fewer than QUIET_COUNT; then
        give it back to the thread."""
        sock = self.sock
        sock.setblocking(False)
        self.floods += 1
        quiet = 0
        while quiet < QUIET_LOOKS:
            await trio.lowlevel.wait_readable(sock)
            handed = Handed()
            while handed.count < self.drain_limit and handed.nbytes < self.drain_bytes:
                try:
                    self._take(handed, *self._receive())
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. ICMP errors surfaced on a UDP socket
                    log.debug("input %s: %s", self.name, exc)
            handed.received = time.time()
            deliver(handed)
            quiet = quiet + 1 if handed.count < QUIET_COUNT else 0
        sock.setblocking(True)
        self._resume.set()

    def _stop(self, thread: threading.Thread) -> None:
        self._stopping = True
        self._room.release()  # a thread waiting for room hands over and ends
        self._resume.set()  # ... and one waiting for the socket back
        try:
            # Wakes a receive blocked on the socket (it returns 0 bytes); an
            # unconnected UDP socket says ENOTCONN but is woken all the same.
            self.sock.shutdown(socket.SHUT_RD)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                log.debug("input %s: shutdown: %s", self.name, exc)
        thread.join(timeout=5.0)
        if thread.is_alive():  # not seen; the socket is closed under it then
            log.warning("input %s: the reading thread did not stop", self.name)

    def _hand_over(self, handed: Handed, wait: bool = True) -> None:
        if wait:
            self._room.acquire()
        handed.received = time.time()
        self._handed.append(handed)
        os.eventfd_write(self._wakeup, 1)

    def _thread(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # handed to trio, which raises it: a bug, not silence
            self._failure = exc
            os.eventfd_write(self._wakeup, 1)

    def _receive(self) -> tuple[int, object]:
        """One datagram into the buffer: its size and its group's key."""
        how = self.how
        if how is RECV:
            return self.sock.recv_into(self._buffer), b""
        if how is RECVFROM:
            return self.sock.recvfrom_into(self._buffer)
        size, ancillary, _, _ = self.sock.recvmsg_into(self._buffers, _ANCILLARY)
        # The one SCM_CREDENTIALS message's bytes: the group's key.
        return size, ancillary[0][2] if ancillary else b""

    def _take(self, handed: Handed, size: int, key: object) -> None:
        """Add the datagram of ``size`` bytes in the buffer to ``handed``."""
        buffer = self._buffer
        if size and buffer[size - 1] == 10:  # a trailer, not content
            size -= 1  # (rsyslog drops it too)
        if size > self.limit:
            if not self.truncate:
                handed.dropped_oversize += 1
                return
            handed.truncated += 1
            data = utf8_cut(self._view[:size].tobytes(), self.limit)
            size = len(data)
        elif size:
            data = self._view[:size].tobytes()  # at its size: see inputs/datagram.py
        else:
            return
        group = handed.groups.get(key)
        if group is None:
            handed.groups[key] = [data]
        else:
            group.append(data)
        handed.nbytes += size
        handed.count += 1

    def _handover(self) -> tuple[float, bytes]:
        """HANDOVER as the thread reads it (at start and after a flood), and
        as SO_RCVTIMEO takes it."""
        handover = self.handover
        seconds = int(handover)
        return handover, _TIMEVAL.pack(seconds, max(1, int((handover - seconds) * 1_000_000)))

    def _read(self) -> None:
        sock = self.sock
        sock.setblocking(True)
        setsockopt = sock.setsockopt
        receive = self._receive
        take = self._take
        drain_limit = self.drain_limit
        drain_bytes = self.drain_bytes
        monotonic = time.monotonic
        handover, gather = self._handover()
        handed = Handed()
        deadline = 0.0
        gathering = False  # SO_RCVTIMEO is set
        while not self._stopping:
            try:
                size, key = receive()
            except BlockingIOError:  # SO_RCVTIMEO: nothing came within HANDOVER
                if handed.count:
                    self._hand_over(handed)
                    handed = Handed()
                setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _BLOCK)
                gathering = False
                continue
            except OSError as exc:  # e.g. ICMP errors surfaced on a UDP socket
                if not self._stopping:
                    log.debug("input %s: %s", self.name, exc)
                continue
            take(handed, size, key)
            count = handed.count
            if count == 1:
                deadline = monotonic() + handover
                if not gathering:
                    setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, gather)
                    gathering = True
            elif count >= drain_limit or handed.nbytes >= drain_bytes:
                # A flood: trio reads the socket until it calms down (the
                # thread would wait for the GIL at every datagram).
                handed.flood = True
                self._resume.clear()
                self._hand_over(handed)
                handed = Handed()
                self._resume.wait()
                handover, gather = self._handover()
                setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _BLOCK)
                gathering = False
            elif count and monotonic() >= deadline:
                self._hand_over(handed)
                handed = Handed()
        if handed.count or handed.truncated or handed.dropped_oversize:
            self._hand_over(handed, wait=False)  # stopping: trio takes it after the join

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

So a thread reads the socket (the GIL released while it waits) and
gathers the datagrams for up to HANDOVER before it hands the lot to trio in
one wake-up (a :class:`collections.deque` and an eventfd): the trio side
and everything after it run once per HANDOVER instead of once per
datagram. With nothing held the thread blocks in the receive call without
a timeout (no wake-ups while nothing is logged). Once datagrams come, and
the kernel's queue is long enough (NAP_QUEUE: a unix socket under
systemd's 512, a UDP socket's receive buffer), it naps and then takes
what came meanwhile with recvmmsg (relay/inputs/recvmmsg.py), each nap as
long as lets a quarter of the queue fill at the rate it saw, so that it
wakes once for many datagrams and no sender waits for room. Under a short
queue (the kernel's default of 10), or when even a short nap would fill
it, it takes them one receive call at a time, as they come. A look that
finds nothing sends it back to the receive call, with SO_RCVTIMEO set to
a quarter of HANDOVER. A message therefore waits in the reader for about
HANDOVER, a quarter more at most. A hand-over is full at DRAIN_LIMIT
datagrams or DRAIN_BYTES (what a recvmmsg call read past that waits in
the reader and comes first in the next); a full one gathered quickly is
a flood, read from trio until it calms down, and the thread never runs
more than AHEAD hand-overs ahead of trio.

The thread never touches the relay's state: it reads, cuts, groups and
counts into what it hands over; the owner's ``deliver`` runs in trio's
thread. At the stop the thread is woken (``shutdown(SHUT_RD)``), joined, and
what it held (with what waited past a full hand-over) is delivered, so that
nothing read from the kernel is lost.
"""

from __future__ import annotations

import bisect
import collections
import errno
import itertools
import logging
import mmap
import operator
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from relay.inputs import recvmmsg
from relay.protocol.framing import utf8_cut
from relay.service.timer import Timer
from relay.stats import Counters

log = logging.getLogger("relay.input")

# How long the thread lets datagrams gather before it hands them to trio:
# at 5,000 msg/s a hand-over carries about 250. Each hand-over costs trio
# about 0.7 ms of CPU at a trickle, whatever it carries (a wake-up, the
# stage, the spool, the output's wake-up and write, all run cold: measured
# on a 2-core VM at 200 msg/s), so at 10 ms relay took 7% of a core at
# 200 msg/s and 17% at 5,000. A message waits at most about this long in
# the reader: nothing a reader of logs notices.
HANDOVER = 0.050
# While datagrams come, the thread naps between looks instead of waking for
# each (a wake-up and a receive call cost about 12 us of CPU a datagram at
# 5,000/s; under a queue of 512 the reader took 10 against 17 us a message
# napping). A nap lets FILL of the kernel's queue (``kernel_queue``:
# net.unix.max_dgram_qlen datagrams for a unix socket, before its senders
# block) fill at the rate the last look saw: at a half, senders blocked for
# 3 s in 8 at 50,000/s (the thread is late when trio holds the GIL), at a
# quarter for 0.1 s. A nap is at most NAP_SHARE of HANDOVER, and none is
# taken below MIN_NAP, nor on a queue shorter than NAP_QUEUE (a burst of a
# dozen would block a sender): then the thread waits in the receive call,
# a datagram at a time, and looks at the rate again after RELEARN of them.
FILL = 0.25
NAP_QUEUE = 64
NAP_SHARE = 0.5
MIN_NAP = 0.0005
RELEARN = 256
_NO_KEY = object()  # no group yet (see _pull_many)
# Senders' addresses kept made (recvmmsg gives struct sockaddr bytes): past
# this many the table starts again (a flood from spoofed sources).
SENDERS_KEPT = 256
# A full hand-over (DRAIN_LIMIT datagrams or DRAIN_BYTES) gathered within
# this share of HANDOVER is a flood, read from trio (see QUIET_LOOKS).
FLOOD_SHARE = 0.2
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

    @property
    def holds(self) -> bool:
        """Whether there is anything to hand over: messages, or drops to count."""
        return bool(self.count or self.dropped_oversize)

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
        kernel_queue: int,
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
        # Many datagrams a call where recvmmsg is there (inputs/recvmmsg.py),
        # else one; both ``pull`` into a Handed and say how many came.
        self._many: recvmmsg.Receiver | None = None
        self.pull: Callable[[Handed, int], int] = self._pull_one
        self._short = False  # the last pull took fewer than it could: none left
        # Datagrams a recvmmsg call read past a full hand-over (its bytes), with
        # their senders: the next pull takes them first, so that the order
        # holds (see _pull_many).
        self._carried: collections.deque[tuple[bytes, object]] = collections.deque()
        if recvmmsg.available():
            self._many = recvmmsg.Receiver(
                sock, buffer_size, names=how is RECVFROM, creds=how is RECVMSG_CREDS
            )
            self.pull = self._pull_many
        self._senders: dict[bytes, object] = {}  # struct sockaddr -> address (recvmmsg)
        self.handover = HANDOVER  # tests change it
        self.kernel_queue = kernel_queue  # datagrams the kernel keeps for us, at most
        self._nap = MIN_NAP
        self._handed: collections.deque[Handed] = collections.deque()
        self._room = threading.Semaphore(AHEAD)
        self.floods = 0  # how often trio took the socket over (for tests and curiosity)
        self.looks = 0  # looks after a nap (likewise)
        self.flood_naps = 0  # naps of trio's reading a flood (likewise)
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
        """A flood: read the socket from trio, DRAIN_LIMIT datagrams a look at
        most, until QUIET_LOOKS looks in a row found fewer than QUIET_COUNT;
        then give it back to the thread.

        On a UDP socket trio naps between looks as the thread does, each nap
        letting FILL of the receive buffer fill at the rate the last look
        saw: a sender that never waits fed a trio that kept up with it a few
        datagrams a look, and each look (a wake-up, a recvmmsg call, a
        batch) cost as much as a few hundred datagrams (scripts/bench
        udp-tcp at the most: 4 datagrams a call, 5.9 against 3.7-4.1 us a
        message with naps). Not on a unix socket: its senders wait for room;
        with naps they waited longer at the most, and relay took 5.7 against
        5.2 us a message and moved 141,000 against 188,000 a second."""
        sock = self.sock
        sock.setblocking(False)
        self.floods += 1
        long_queue = self.kernel_queue >= NAP_QUEUE
        naps = self.how is RECVFROM and long_queue
        fill = self.kernel_queue * FILL
        nap = 0.0
        timer = Timer()
        quiet = 0
        looked = time.monotonic()
        try:
            while quiet < QUIET_LOOKS:
                if self._carried:  # read already: the socket may hold nothing more
                    await trio.lowlevel.checkpoint()
                elif nap:
                    await timer.sleep(nap)
                    self.flood_naps += 1
                else:
                    await trio.lowlevel.wait_readable(sock)
                handed = Handed()
                while handed.count < self.drain_limit and handed.nbytes < self.drain_bytes:
                    try:
                        self.pull(handed, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # e.g. ICMP errors surfaced on a UDP socket
                        log.debug("input %s: %s", self.name, exc)
                    if self._short and long_queue:
                        # None left: a nap (UDP) or the next wake-up lets more
                        # gather. Under a unix queue of 10 the look goes on:
                        # its senders, blocked on the full queue, fill it
                        # again at once (stopping here took 9.3 against 5.5 us
                        # a message at the most; under 512, 3.9 against 5.0).
                        break
                now = time.monotonic()
                if naps:
                    if handed.count >= self.drain_limit or handed.nbytes >= self.drain_bytes:
                        nap /= 2  # more may be waiting
                    elif handed.count:
                        longest = self.handover * NAP_SHARE  # (tests change HANDOVER)
                        rate_nap = (now - looked) * fill / handed.count
                        nap = min(longest, max(nap, MIN_NAP) * 1.5, rate_nap)
                    else:
                        nap = 0.0
                    if nap < MIN_NAP:
                        nap = 0.0
                looked = now
                handed.received = time.time()
                deliver(handed)
                quiet = quiet + 1 if handed.count < QUIET_COUNT else 0
        finally:
            timer.close()
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

    def _pull_one(self, handed: Handed, flags: int) -> int:
        """Read one datagram into ``handed``; 1 (it may have been empty).
        Raises as the socket module does (BlockingIOError: none waits)."""
        how = self.how
        sock = self.sock
        if how is RECV:
            size, key = sock.recv_into(self._buffer, 0, flags), b""
        elif how is RECVFROM:
            size, key = sock.recvfrom_into(self._buffer, 0, flags)
        else:
            size, ancillary, _, _ = sock.recvmsg_into(self._buffers, _ANCILLARY, flags)
            # The one SCM_CREDENTIALS message's bytes: the group's key.
            key = ancillary[0][2] if ancillary else b""
        self._take(handed, self._view, 0, size, key)
        return 1

    def _pull_many(self, handed: Handed, flags: int) -> int:
        """Read the datagrams waiting (up to COUNT, and to what ``handed`` has
        room for in datagrams) into it; how many came from the kernel
        (``flags``: MSG_DONTWAIT, as a blocking recvmmsg would wait for them
        all). Raises as the socket module does (BlockingIOError: none
        waits). Those past the one that fills ``handed`` to DRAIN_BYTES are
        carried, and the next pull takes them before it reads again (a bound
        in bytes before the call, counting each datagram as a slot, read 16
        a call of a UDP socket's 64 KiB slots). The common look (one sender,
        each datagram whole) is taken in a few steps for all; any other by
        :meth:`_take`, a datagram at a time."""
        many = self._many
        assert many is not None
        if self._carried:
            self._take_carried(handed)
            self._short = False  # more may wait in the kernel
            return 0  # none came: they came with the last call
        slot = many.slot
        asked = max(1, min(recvmmsg.COUNT, self.drain_limit - handed.count))
        got = many.receive(asked, flags)
        self._short = got < asked
        if not got:
            return 0
        came = got
        how = self.how
        # The datagrams' senders: one for all (``sender``), or each its own.
        sender: object = b""
        keys: list[object] | None = None
        if how is RECVFROM:
            name = many.one_sender(got)
            if name is None:
                keys = self._addresses(many, got)
            else:
                sender = self._address(name)
        elif how is RECVMSG_CREDS:
            keys = [many.creds(i) for i in range(got)]
            if keys.count(keys[0]) == got:
                sender, keys = keys[0], None
        sizes = many.sizes(got)
        room = self.drain_bytes - handed.nbytes
        if sum(sizes) >= room and got > 1:
            # Full before the last: the hand-over takes those up to the one
            # that fills it, as one a call would, and the rest wait (their
            # bytes copied out: the next call reads into the same slots).
            got = min(got, bisect.bisect_left(list(itertools.accumulate(sizes)), room) + 1)
            data = many.data
            self._carried.extend(
                (data[i * slot : i * slot + sizes[i]], sender if keys is None else keys[i])
                for i in range(got, came)
            )
            sizes = sizes[:got]
        if keys is None and min(sizes) and max(sizes) <= self.limit:
            # The common look: each datagram whole, as it came, in a few
            # steps for all, unless one ends in LF.
            data = many.data
            starts = range(0, got * slot, slot)
            taken = [data[i : i + n] for i, n in zip(starts, sizes, strict=True)]
            if not _trailer_in(taken, data, starts, sizes):
                held = handed.groups.get(sender)
                if held is None:
                    handed.groups[sender] = taken
                else:
                    held += taken
                handed.count += got
                handed.nbytes += sum(sizes)
                return came
        view = many.view
        limit = self.limit
        groups = handed.groups
        group: list[bytes] | None = None
        group_key: object = _NO_KEY
        count = nbytes = 0
        for i, size in enumerate(sizes):
            start = i * slot
            key = sender if keys is None else keys[i]
            if not size or size > limit or view[start + size - 1] == 10:
                self._take(handed, view, start, size, key)
                group_key = _NO_KEY  # it may have made the group
                continue
            if group is None or key != group_key:
                group = groups.get(key)
                if group is None:
                    group = groups[key] = []
                group_key = key
            group.append(view[start : start + size].tobytes())  # at its size: datagram.py
            nbytes += size
            count += 1
        handed.count += count
        handed.nbytes += nbytes
        return came

    def _take_carried(self, handed: Handed, everything: bool = False) -> None:
        """Move what a call read past a full hand-over into ``handed``, as far as
        it has room (``everything``: at the stop, all of it)."""
        carried = self._carried
        while carried and (
            everything or (handed.count < self.drain_limit and handed.nbytes < self.drain_bytes)
        ):
            data, key = carried.popleft()
            self._take(handed, memoryview(data), 0, len(data), key)

    def _addresses(self, many: recvmmsg.Receiver, got: int) -> list[object]:
        """The senders of the first ``got`` datagrams as recvfrom gives them
        (the keys _pull_one uses), made once per sender."""
        made = self._senders
        names = many.names_of(got)
        out: list[object] = list(map(made.get, names))
        if None in out:  # a sender not seen yet
            for i, address in enumerate(out):
                if address is None:
                    out[i] = self._address(names[i])
        return out

    def _address(self, name: bytes) -> object:
        """The sender whose struct sockaddr is ``name``, as recvfrom gives it
        (the key _pull_one uses), made once."""
        address = self._senders.get(name)
        if address is None:
            if len(self._senders) >= SENDERS_KEPT:
                self._senders.clear()
            address = self._senders[name] = recvmmsg.sender(name)
        return address

    def _take(self, handed: Handed, view: memoryview, start: int, size: int, key: object) -> None:
        """Add the datagram of ``size`` bytes at ``start`` in ``view`` to ``handed``."""
        if size and view[start + size - 1] == 10:  # a trailer, not content
            size -= 1  # (rsyslog drops it too)
        if size > self.limit:
            if not self.truncate:
                handed.dropped_oversize += 1
                return
            handed.truncated += 1
            data = utf8_cut(view[start : start + size].tobytes(), self.limit)
            size = len(data)
        elif size:
            data = view[start : start + size].tobytes()  # at its size: see inputs/datagram.py
        else:
            return
        group = handed.groups.get(key)
        if group is None:
            handed.groups[key] = [data]
        else:
            group.append(data)
        handed.nbytes += size
        handed.count += 1

    def _read(self) -> None:
        sock = self.sock
        sock.setblocking(True)
        setsockopt = sock.setsockopt
        pull = self._pull_one  # one a wake-up: cheaper than recvmmsg's call (ctypes)
        drain_limit = self.drain_limit
        drain_bytes = self.drain_bytes
        monotonic = time.monotonic
        handed = Handed()
        first = deadline = 0.0
        timed = False  # SO_RCVTIMEO is set
        # A queue too short to nap on: a burst would block senders (a unix
        # socket under the kernel's default net.unix.max_dgram_qlen, 10).
        naps = self.kernel_queue >= NAP_QUEUE
        self._nap = MIN_NAP
        per_datagram = 0  # receive calls since the rate was too high to nap
        while not self._stopping:
            # Wait in the receive call: with nothing held, for as long as it
            # takes (no wake-ups while nothing is logged); else for a quarter
            # of HANDOVER at most, so that the hand-over goes about when due.
            if handed.holds:
                if monotonic() >= deadline:
                    self._hand_over(handed)
                    handed = Handed()
                    continue
                if not timed:
                    setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.handover / 4))
                    timed = True
            elif timed:
                setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _BLOCK)
                timed = False
            held = handed.holds
            if self._carried:  # read before anything the receive call would read
                self._take_carried(handed)
            else:
                try:
                    pull(handed, 0)
                except BlockingIOError:  # SO_RCVTIMEO: the hand-over may be due
                    continue
                except OSError as exc:  # e.g. ICMP errors surfaced on a UDP socket
                    if not self._stopping:
                        log.debug("input %s: %s", self.name, exc)
                    continue
            if not handed.holds:  # an empty datagram, or the stop
                continue
            if not held:
                first = monotonic()
                deadline = first + self.handover
            if naps and self._nap >= MIN_NAP:
                handed, deadline = self._gather(handed, deadline)
            elif naps:
                # Too fast to nap: a receive call per datagram, as they come
                # (each finds the next waiting). Look at the rate again now
                # and then.
                per_datagram += 1
                if per_datagram >= RELEARN:
                    per_datagram = 0
                    self._nap = MIN_NAP
            if handed.count >= drain_limit or handed.nbytes >= drain_bytes:
                # Full. Gathered within FLOOD_SHARE of HANDOVER, it is a
                # flood: trio reads the socket until it calms down (this
                # thread would wait for the GIL at every datagram).
                flood = monotonic() - first < self.handover * FLOOD_SHARE
                handed.flood = flood
                if flood:
                    self._resume.clear()
                self._hand_over(handed)
                handed = Handed()
                if flood:
                    self._resume.wait()
                    self._nap = MIN_NAP
                    if timed:  # HANDOVER may have changed (tests)
                        setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _BLOCK)
                        timed = False
        self._take_carried(handed, everything=True)
        if handed.holds:
            self._hand_over(handed, wait=False)  # stopping: trio takes it after the join

    def _gather(self, handed: Handed, deadline: float) -> tuple[Handed, float]:
        """Datagrams are coming: nap, take what came meanwhile, and again,
        until a look finds none or ``handed`` is full; hand over when due.
        Returns what is held and when it is due. Each nap lets about ``FILL``
        of the kernel's queue fill at the rate the last look saw, so that
        no sender waits for room (see the module docstring)."""
        pull = self.pull
        drain_limit = self.drain_limit
        drain_bytes = self.drain_bytes
        monotonic = time.monotonic
        dontwait = socket.MSG_DONTWAIT
        fill = self.kernel_queue * FILL
        longest = self.handover * NAP_SHARE
        nap = self._nap
        now = monotonic()
        while nap >= MIN_NAP and not self._stopping:
            time.sleep(min(nap, max(0.0, deadline - now)))
            self.looks += 1
            found = 0
            while handed.count < drain_limit and handed.nbytes < drain_bytes:
                try:
                    found += pull(handed, dontwait)
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.debug("input %s: %s", self.name, exc)
                    break
                if self._stopping or self._short:  # the stop's shutdown; or none left
                    break
            took, now = now, monotonic()
            if handed.count >= drain_limit or handed.nbytes >= drain_bytes:
                nap /= 2  # the look stopped short: more may be waiting
                break
            if found:
                # The rate seen, and the nap that lets ``fill`` in at it;
                # shortened at once, lengthened by half at most.
                nap = min(longest, nap * 1.5, (now - took) * fill / found)
            if now >= deadline and handed.holds:
                self._hand_over(handed)
                handed = Handed()
                deadline = now + self.handover
            if not found:
                break  # quiet: wait in the receive call again
        self._nap = nap
        return handed, deadline


def _trailer_in(taken: list[bytes], data: mmap.mmap, starts: range, sizes: list[int]) -> bool:
    """Whether a datagram ``taken`` from ``data`` (at ``starts``, of ``sizes``)
    ends in LF: none does when none holds one (memchr over them joined: 20
    ns a datagram); else each one's last byte is read (the first twice, so
    that itemgetter gives a tuple: 150 ns a datagram)."""
    if 10 not in b"".join(taken):
        return False
    lasts = list(map(operator.add, starts, sizes))
    return 10 in operator.itemgetter(lasts[0] - 1, *(last - 1 for last in lasts))(data)


def _timeval(seconds: float) -> bytes:
    """``seconds`` as SO_RCVTIMEO takes it (at least 1 us: 0 would mean no timeout)."""
    whole = int(seconds)
    return _TIMEVAL.pack(whole, max(1, int((seconds - whole) * 1_000_000)))

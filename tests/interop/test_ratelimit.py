"""Per-source rate limits against a real ``relay run`` process (issue 10, "Done when" 2).

Each test runs relay with one rate-limited input and a file:// output, and
counts what the file holds by sequence number.

* Two UDP sources, 127.0.0.2 and 127.0.0.3, bound by the test: the first sends
  within its limit and loses nothing; the second floods at ten times it in two
  bursts, and every message of it at an exempt severity arrives; what it lost
  equals the ``rate_limited`` counter and the sum of its episodes' end lines.
* A million distinct spoofed sources (a raw socket writing UDP datagrams from
  127.16.0.0-127.31.255.255) leave relay's memory within the bound of the key
  table: ``max_keys`` (default 20,000) times at most 500 bytes of RSS a key,
  10 MB, plus 10 MiB for everything else a million datagrams cost (the
  datagram reader's hand-overs among it: up to 1,024 datagrams each, each a
  batch of its own when each has a sender of its own; with 50 ms hand-overs
  instead of 10 the whole flood grew RSS 16.4 MiB instead of 15.5, and
  14.5-17.7 MiB in runs on a shared machine). Measured earlier
  (Python 3.11, 2 shared cores): 7.9 MiB of growth in all, of which 2.7-3.0
  MiB is what the same flood costs with no rate limit or with ``max_keys =
  1``: about 265 bytes a key at 20,000 keys (375 at ``max_keys = 100000``).
  A key in a throttling episode costs more (its episode record): 250,000
  spoofed sources sending 2 datagrams each at ``burst = 1`` grew RSS 11.0 MiB,
  about 420 bytes a key. tracemalloc counts 200-250 bytes a key in a table
  that has churned through a million keys (250-330 at its peak, while the
  dictionary is rebuilt); the rest is allocator slack. With eviction disabled
  the million keys took 185 MiB.
* ``on_limit = "delay"`` on a TCP input (``relay send``) and on a RELP input
  (rsyslogd's omrelp): a sender writing as fast as it can loses nothing and
  is slowed to the rate: the time from the first arrival to the last is
  (N - burst) / rate within 10%.

The 127.0.0.x addresses and the spoofed sources are all loopback (127/8).
The spoofing needs a raw socket, so root (CAP_NET_RAW), as the suite runs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.cli.sender import SendPlan, build_messages
from relay.config import DEFAULT_RATE_LIMIT_MAX_KEYS, Endpoint
from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    RelaySendProcess,
    RsyslogSender,
    free_port,
    omrelp_action,
    process_memory_kib,
    relay_counters,
    udp_drops,
    udp_receive_queue,
)
from tests.waiting import wait_until

# Rates within 10%, no kernel drops at a flood rate, RSS bounds: alone (scripts/test).
pytestmark = [pytest.mark.interop, pytest.mark.serial]

LEGIT, FLOODER = "127.0.0.2", "127.0.0.3"
MIB = 1024 * 1024
_ARRIVED = re.compile(rb"src=(\S+) seq=(\d+)")


class LimitedRelay:
    """A relay with the input "in" (``url``, rate-limited by ``limit``) writing to out.log."""

    def __init__(
        self, tmp_path: Path, url: str, limit: str, *, extra: str = "", output_extra: str = ""
    ) -> None:
        self.out = tmp_path / "out.log"
        config = tmp_path / "relay.toml"
        config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[input.in]
url = "{url}"
{extra}
[input.in.rate_limit]
{limit}

[output.file]
url = "file://{self.out}"
{output_extra}
""")
        self.process = RelayProcess(["-c", str(config)], tmp_path / "relay")

    def data(self) -> bytes:
        try:
            return self.out.read_bytes()
        except FileNotFoundError:
            return b""

    def arrived(self) -> collections.Counter[tuple[str, int]]:
        """How often each (src, seq) is in the file."""
        return collections.Counter(
            (src.decode(), int(seq)) for src, seq in _ARRIVED.findall(self.data())
        )

    def wait_udp(self, port: int) -> None:
        wait_until(lambda: udp_receive_queue(port) is not None, 10, message=self.process.log_tail)

    def stop(self) -> tuple[str, dict[str, int]]:
        """SIGTERM; the relay must exit 0. Its log and the counters of "in"."""
        assert self.process.terminate(timeout=30) == 0, self.process.log_tail()
        log = self.process.log()
        assert "Traceback" not in log, log
        return log, relay_counters(log, "input", "in")


@pytest.fixture
def udp_port() -> int:
    return free_port("udp")


def _bound(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _message(pri: int, src: str, seq: int) -> bytes:
    return b"<%d>1 - testhost ratetest - - - src=%s seq=%d" % (pri, src.encode(), seq)


def _wait_read(relay: LimitedRelay, port: int, timeout: float = 30) -> None:
    """Until relay has read every datagram sent to ``port``."""
    wait_until(
        lambda: udp_receive_queue(port) == 0,
        timeout,
        message=lambda: f"relay stopped reading; log:\n{relay.process.log_tail()}",
    )


def _episodes(log: str, key: str) -> tuple[int, list[int]]:
    """How many episodes of ``key`` started, and what each ended one dropped."""
    prefix = rf"input in: rate limit: {re.escape(key)}: "
    starts = re.findall(prefix + r"dropping messages above ", log)
    ends = re.findall(prefix + r"([\d,]+) messages? dropped in [\d.]+ s", log)
    return len(starts), [int(n.replace(",", "")) for n in ends]


# -- a: one flooder among well-behaved sources ------------------------------

RATE = 100  # the limit (and burst) per source
LEGIT_RATE = 20  # a fifth of it: room for a 4 s stall of either side
FLOOD_RATE = 10 * RATE
FLOOD_SECONDS = 2.0  # each of two bursts, QUIET apart
QUIET = 3.0  # more than INTERVAL: the first episode ends in it
INTERVAL = 1.5
CRIT, NOTICE = 8 + 2, 8 + 5  # user.crit (exempt) and user.notice


def _schedule() -> list[tuple[float, str, int, int]]:
    """(when, source, seq, PRI) of every datagram: the flooder's two bursts,
    every 10th message at crit, and the other source throughout."""
    plan = []
    per_burst = int(FLOOD_RATE * FLOOD_SECONDS)
    for seq in range(2 * per_burst):
        burst, i = divmod(seq, per_burst)
        when = burst * (FLOOD_SECONDS + QUIET) + i / FLOOD_RATE
        plan.append((when, FLOODER, seq, CRIT if seq % 10 == 0 else NOTICE))
    total = 2 * FLOOD_SECONDS + QUIET
    plan += [(i / LEGIT_RATE, LEGIT, i, NOTICE) for i in range(int(total * LEGIT_RATE))]
    return sorted(plan)


def _send(port: int, plan: list[tuple[float, str, int, int]]) -> float:
    """Send ``plan`` on time from sockets bound to its sources; returns the seconds taken."""
    socks = {src: _bound(src) for src in {src for _, src, _, _ in plan}}
    started = time.monotonic()
    try:
        for when, src, seq, pri in plan:
            ahead = started + when - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)  # the sending rate under test, not synchronisation
            socks[src].sendto(_message(pri, src, seq), (LOOPBACK, port))
    finally:
        for sock in socks.values():
            sock.close()
    return time.monotonic() - started


def test_a_flooder_loses_what_is_over_its_rate_and_nobody_else_does(
    tmp_path: Path, udp_port: int
) -> None:
    relay = LimitedRelay(
        tmp_path,
        f"udp://{LOOPBACK}:{udp_port}",
        f'rate = {RATE}\nexempt_severity = "crit"\ninterval = {INTERVAL}',
    )
    plan = _schedule()
    with relay.process.start():
        relay.wait_udp(udp_port)
        took = _send(udp_port, plan)
        _wait_read(relay, udp_port)
        legit = {seq for _, src, seq, _ in plan if src == LEGIT}
        wait_until(
            lambda: legit <= {seq for src, seq in relay.arrived() if src == LEGIT},
            10,
            message=lambda: f"127.0.0.2's messages missing; log:\n{relay.process.log_tail()}",
        )
        assert udp_drops(udp_port) == 0, "the kernel dropped datagrams: rates too high for it"
        log, counters = relay.stop()

    arrived = relay.arrived()
    assert max(arrived.values()) == 1, [k for k, n in arrived.items() if n > 1]
    assert {seq for src, seq in arrived if src == LEGIT} == legit
    flood = [(seq, pri) for _, src, seq, pri in plan if src == FLOODER]
    got = {seq for src, seq in arrived if src == FLOODER}
    exempt = {seq for seq, pri in flood if pri == CRIT}
    assert exempt <= got, f"{len(exempt - got)} crit messages of the flooder lost"

    dropped = counters.get("rate_limited", 0)
    starts, ends = _episodes(log, FLOODER)
    print(
        f"sent {len(plan)} in {took:.1f} s; flooder: {len(flood)} sent, {len(got)} arrived, "
        f"{dropped} rate_limited; episodes: {starts} started, ended with {ends}"
    )
    assert dropped > 0, log
    assert sum(ends) == dropped == len(flood) - len(got), (ends, dropped, len(flood), len(got))
    # One episode a burst: the quiet between them is longer than the interval.
    assert starts == len(ends) == 2, log
    assert _episodes(log, LEGIT) == (0, []), log
    assert f"in: rate limit: {FLOODER}: dropping messages above {RATE}/s (burst {RATE})" in log
    # What passed charged is one bucket a burst plus the rate over the time
    # the flooder was sending (and a second for the relay's reading behind).
    charged = len(got - exempt)
    assert charged <= 2 * RATE + RATE * (2 * FLOOD_SECONDS + 1), charged


# -- b: a million spoofed sources -------------------------------------------

SPOOFED = 1_000_000
# Documented bound: bytes of RSS per key of the table, and what else the
# flood may cost (see the module docstring for what was measured).
KEY_BYTES = 500
OTHER = 10 * MIB
_UDP = socket.IPPROTO_UDP


def _spoofed(port: int, count: int) -> Iterator[None]:
    """Send one datagram from each of ``count`` distinct sources 127.16.0.0 and up
    to 127.0.0.1:``port`` through a raw socket (IP_HDRINCL), yielding every 4,096
    so that the caller can hold back while relay catches up."""
    payload = b"<13>1 - spoofed - - - - spoofed"
    udp = struct.pack("!HHHH", 40_000, port, 8 + len(payload), 0) + payload  # no checksum
    packet = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,  # IPv4, a 20-byte header
            0,
            20 + len(udp),
            0,  # id, checksum and (below) the source: the kernel fills 0s
            0,
            64,
            _UDP,
            0,
            bytes(4),
            socket.inet_aton(LOOPBACK),
        )
        + udp
    )
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        pytest.fail("spoofing sources needs a raw socket: run as root (CAP_NET_RAW)")
    set_source = struct.Struct("!I").pack_into
    first = (127 << 24) | (16 << 16)
    with raw:
        sendto = raw.sendto
        for i in range(count):
            if i % 4096 == 0:
                yield
            set_source(packet, 12, first + i)
            sendto(packet, (LOOPBACK, 0))


def test_a_million_spoofed_sources_stay_within_the_key_table_bound(
    tmp_path: Path, udp_port: int
) -> None:
    relay = LimitedRelay(
        tmp_path,
        f"udp://{LOOPBACK}:{udp_port}",
        f"rate = {RATE}",  # max_keys: the default
        extra='rcvbuf = "256 MiB"',
        # The input reads faster than the file is written: what waits, waits on
        # disk past 1 MiB, so that RSS measures the key table, not the spool.
        output_extra='queue_max_bytes = "1 MiB"',
    )
    bound = DEFAULT_RATE_LIMIT_MAX_KEYS * KEY_BYTES + OTHER
    with relay.process.start(), _bound(LEGIT) as legit:
        relay.wait_udp(udp_port)
        legit.sendto(_message(NOTICE, LEGIT, 0), (LOOPBACK, udp_port))
        wait_until(lambda: relay.arrived()[LEGIT, 0], 10, message=relay.process.log_tail)
        before = process_memory_kib(relay.process.pid, "VmRSS") * 1024
        started = time.monotonic()
        for _ in _spoofed(udp_port, SPOOFED):
            # Hold back while a quarter of the receive buffer waits: relay reads
            # ~40,000 of these a second here, the raw socket writes 140,000.
            wait_until(
                lambda: (udp_receive_queue(udp_port) or 0) < 64 * MIB,
                60,
                interval=0.005,
                message=lambda: f"relay stopped reading; log:\n{relay.process.log_tail()}",
            )
        _wait_read(relay, udp_port, timeout=60)
        took = time.monotonic() - started
        # ... and written every one (the spool may still hold some).
        wait_until(lambda: relay.data().count(b"\n") == SPOOFED + 1, 120, interval=0.5)
        legit.sendto(_message(NOTICE, LEGIT, 1), (LOOPBACK, udp_port))
        wait_until(lambda: relay.arrived()[LEGIT, 1], 10, message=relay.process.log_tail)
        peak = process_memory_kib(relay.process.pid, "VmHWM") * 1024
        after = process_memory_kib(relay.process.pid, "VmRSS") * 1024
        drops = udp_drops(udp_port)
        _, counters = relay.stop()
    print(
        f"{SPOOFED:,} spoofed sources read in {took:.1f} s; RSS {before / MIB:.1f} MiB before, "
        f"{after / MIB:.1f} MiB after, peak {peak / MIB:.1f} MiB: grew {(peak - before) / MIB:.1f}"
        f" MiB, bound {bound / MIB:.1f} MiB"
    )
    assert drops == 0, f"the kernel dropped {drops} datagrams: relay did not see every source"
    assert counters["received"] == SPOOFED + 2, counters
    assert counters.get("rate_limited", 0) == 0, counters  # one message a key: within every bucket
    assert relay.data().count(b"\n") == SPOOFED + 2
    assert peak - before <= bound, (before, peak, bound)


# -- c: delay on a TCP (and a RELP) input ----------------------------------

DELAY_RATE = 2_000
DELAY_COUNT = 22_000  # (count - burst) / rate = 10 s
DELAY_SIZE = 500


class _Flooder:
    """A sender writing DELAY_COUNT numbered messages of DELAY_SIZE bytes as fast
    as relay reads them: ``relay send`` over TCP, or rsyslogd's omrelp."""

    def __init__(self, tmp_path: Path, kind: str, port: int, stack: contextlib.ExitStack) -> None:
        self.thread: threading.Thread | None = None
        if kind == "tcp":
            sender = RelaySendProcess(port, DELAY_COUNT, size=DELAY_SIZE)
            self.process: RelaySendProcess | None = stack.enter_context(sender)
            return
        self.process = None
        rsyslog = stack.enter_context(RsyslogSender(tmp_path, omrelp_action(port)))
        plan = SendPlan(endpoint=Endpoint("relp", LOOPBACK, port), size=DELAY_SIZE)
        lines = build_messages(plan, 0, DELAY_COUNT)
        # In a thread: rsyslogd may take a while to read them all, and the
        # first arrival must be timed meanwhile.
        self.thread = threading.Thread(target=rsyslog.send_lines, args=(lines, 60))
        self.thread.start()
        stack.callback(self.thread.join)

    def running(self) -> bool:
        if self.process is not None:
            return self.process.running()
        assert self.thread is not None
        return self.thread.is_alive()

    def finish(self) -> None:
        if self.process is not None:
            self.process.finish(timeout=10)


@pytest.mark.parametrize("kind", ["tcp", "relp"])
def test_delay_slows_a_flooder_to_its_rate_and_loses_nothing(tmp_path: Path, kind: str) -> None:
    port = free_port("tcp")
    relay = LimitedRelay(
        tmp_path, f"{kind}://{LOOPBACK}:{port}", f'rate = {DELAY_RATE}\non_limit = "delay"'
    )
    total = DELAY_COUNT * (DELAY_SIZE + 1)  # each padded to DELAY_SIZE; the file adds LF
    expected = (DELAY_COUNT - DELAY_RATE) / DELAY_RATE
    done: list[float] = []
    with relay.process.start(), contextlib.ExitStack() as stack:
        relay.process.wait_for_tcp(port)
        started = time.monotonic()
        sender = _Flooder(tmp_path, kind, port, stack)
        wait_until(lambda: relay.out.exists() and relay.out.stat().st_size, 10, interval=0.005)
        first = time.monotonic()

        def all_arrived() -> bool:
            if not done and not sender.running():
                done.append(time.monotonic() - started)
            return relay.out.stat().st_size >= total

        wait_until(all_arrived, 3 * expected, interval=0.005, message=relay.process.log_tail)
        last = time.monotonic()
        sender.finish()
        _, counters = relay.stop()
    took = last - first
    print(
        f"{kind}: {DELAY_COUNT} messages at {DELAY_RATE}/s: first to last arrival {took:.2f} s "
        f"(expected {expected:.2f} s); the sender was done writing after "
        f"{done[0] if done else -1:.2f} s; {counters}"
    )
    seqs = collections.Counter(int(n) for n in re.findall(rb"seq=(\d+)", relay.data()))
    assert seqs == collections.Counter(range(DELAY_COUNT))
    assert counters.get("rate_limited", 0) == 0
    assert counters.get("rate_limit_delays", 0) > 0
    assert abs(took - expected) <= 0.1 * expected, (took, expected)
    assert os.path.getsize(relay.out) == total

"""relay/outputs/targets.py with plain numbers; several targets of a TCP output
(relay/outputs/tcp.py) over real loopback sockets, and its DNS fallback."""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from relay.config import Endpoint, OutputConfig, TargetMode
from relay.message import Batch
from relay.outputs import delivery, tcp
from relay.outputs.tcp import TcpOutput
from relay.policy.backoff import Backoff
from relay.policy.targets import (
    FailedBack,
    FailedOver,
    Plan,
    State,
    TargetDown,
    TargetSelector,
    TargetUp,
)
from relay.protocol.framing import FrameDecoder
from relay.spool.spool import memory_spool
from relay.stats import Counters
from tests.waiting import await_until

A, B, C = (Endpoint("tcp", host, 514) for host in ("a", "b", "c"))

# -- the selection logic, time as plain numbers ---------------------------------


def selector(mode: TargetMode, *endpoints: Endpoint) -> TargetSelector:
    return TargetSelector(endpoints or (A, B), mode, Backoff(initial=1.0, maximum=8.0))


def test_failover_starts_on_the_first_target() -> None:
    targets = selector(TargetMode.FAILOVER)
    assert targets.plan(0.0) == Plan(connect=0)
    targets.connecting(0)
    assert targets.connected(0) == []  # never down: nothing to report
    assert targets.plan(0.0) == Plan(write=0)
    assert targets.delivered(0) == []


def test_a_write_to_the_current_target_rebuilds_nothing() -> None:
    """delivered() runs after every write: a target record that does not
    change is not rebuilt (dataclasses.replace costs about 10 us)."""
    targets = selector(TargetMode.FAILOVER)
    targets.connecting(0)
    targets.connected(0)
    targets.delivered(0)
    before = targets.targets
    assert targets.delivered(0) == []
    assert all(a is b for a, b in zip(targets.targets, before, strict=True))


def test_failover_moves_on_then_probes_and_fails_back() -> None:
    targets = selector(TargetMode.FAILOVER)
    targets.connecting(0)
    targets.connected(0)
    targets.delivered(0)
    # random=0.999... gives the full cap: the first back-off is 1 s
    assert targets.failed(0, 10.0, "refused", 0.999999) == [TargetDown(A, "refused")]
    assert targets.plan(10.0) == Plan(connect=1)
    targets.connecting(1)
    targets.connected(1)
    assert targets.plan(10.5) == Plan(write=1)  # A is skipped while its back-off runs
    assert targets.delivered(1) == [FailedOver(A, B)]
    assert targets.plan(11.0) == Plan(write=1, probe=(0,))  # A is due: probe it
    targets.connecting(0)
    assert targets.plan(11.0) == Plan(write=1)  # the probe is under way: B carries on
    assert targets.connected(0) == [TargetUp(A)]
    assert targets.plan(11.1) == Plan(write=0)  # the next batch goes to A
    assert targets.delivered(0) == [FailedBack(B, A)]
    assert targets.state(1) is State.IDLE  # the caller closes B's connection
    assert targets.delivered(0) == []


def test_failover_backoff_grows_per_target_and_resets_on_delivery() -> None:
    targets = selector(TargetMode.FAILOVER)
    targets.connecting(1)
    targets.connected(1)
    events = []
    for now in (0.0, 1.0, 3.0):
        targets.connecting(0)
        events += targets.failed(0, now, "refused", 0.999999)
    assert events == [TargetDown(A, "refused")]  # one line for the whole episode
    assert targets.targets[0].retry_at == pytest.approx(3.0 + 4.0)  # caps 1, 2, 4
    assert targets.plan(6.9) == Plan(write=1)
    assert targets.plan(7.0) == Plan(write=1, probe=(0,))
    targets.connecting(0)
    targets.connected(0)
    targets.delivered(0)
    assert targets.targets[0].backoff.failures == 0


def test_failover_probes_only_the_first_target() -> None:
    targets = selector(TargetMode.FAILOVER, A, B, C)
    targets.connecting(2)
    targets.connected(2)
    targets.failed(0, 0.0, "refused", 0.0)
    targets.failed(1, 0.0, "refused", 0.0)
    assert targets.plan(100.0) == Plan(write=2, probe=(0,))
    targets.connecting(0)
    assert targets.plan(100.0) == Plan(write=2, probe=(1,))


def test_all_down_tries_every_target_once_ignoring_backoff() -> None:
    targets = selector(TargetMode.FAILOVER)
    targets.failed(0, 0.0, "refused", 0.999999)
    targets.failed(1, 0.0, "refused", 0.999999)
    assert targets.plan(0.5) == Plan(connect=0)
    assert targets.plan(0.5, exclude={0}) == Plan(connect=1)
    assert targets.plan(0.5, exclude={0, 1}) == Plan()  # the output backs off


def test_a_closed_connection_is_retried_at_once() -> None:
    targets = selector(TargetMode.FAILOVER)
    targets.connecting(0)
    targets.connected(0)
    targets.closed(0)  # an idle timeout of the collector: not a failure
    assert targets.plan(0.0) == Plan(connect=0)
    assert targets.targets[0].healthy


def test_an_abandoned_attempt_is_neither_up_nor_down() -> None:
    targets = selector(TargetMode.FAILOVER)
    targets.connecting(0)
    targets.closed(0)
    assert targets.state(0) is State.IDLE
    targets.failed(1, 0.0, "refused", 0.5)
    targets.closed(1)  # only a connection or an attempt can be closed
    assert targets.state(1) is State.DOWN


def test_loadbalance_round_robin_per_write() -> None:
    targets = selector(TargetMode.LOADBALANCE, A, B, C)
    for index in range(3):
        targets.connecting(index)
        targets.connected(index)
    written = []
    for _ in range(7):
        plan = targets.plan(0.0)
        assert plan.write is not None and not plan.probe
        written.append(plan.write)
        assert targets.delivered(plan.write) == []
    assert written == [0, 1, 2, 0, 1, 2, 0]


def test_loadbalance_skips_a_failed_target_until_its_backoff_expires() -> None:
    targets = selector(TargetMode.LOADBALANCE)
    targets.connecting(0)
    targets.connected(0)
    assert targets.plan(0.0) == Plan(write=0)
    targets.delivered(0)
    assert targets.plan(0.0) == Plan(write=0, probe=(1,))  # B's turn: connect it meanwhile
    targets.connecting(1)
    targets.failed(1, 0.0, "refused", 0.999999)
    for _ in range(3):
        assert targets.plan(0.5) == Plan(write=0)
        targets.delivered(0)
    assert targets.plan(1.0) == Plan(write=0, probe=(1,))
    targets.connecting(1)
    assert targets.connected(1) == [TargetUp(B)]
    assert targets.plan(1.0) == Plan(write=1)


def test_loadbalance_a_failed_write_goes_to_the_next_target() -> None:
    targets = selector(TargetMode.LOADBALANCE)
    for index in range(2):
        targets.connecting(index)
        targets.connected(index)
    targets.failed(0, 0.0, "reset", 0.5)
    assert targets.plan(0.0, exclude={0}) == Plan(write=1)


def test_needs_a_target() -> None:
    with pytest.raises(ValueError):
        TargetSelector((), TargetMode.FAILOVER, Backoff())


# -- several targets over loopback ----------------------------------------------

RETRY_MAX = 0.2  # real seconds: keeps each test well under a second
PAD = b"x" * 1000


def make_output(targets: Iterable[Endpoint], mode: TargetMode = TargetMode.FAILOVER) -> TcpOutput:
    targets = tuple(targets)
    config = OutputConfig("up", targets[0], targets=targets, mode=mode, retry_max=RETRY_MAX)
    output = TcpOutput(config, memory_spool(), Counters("output", "up", delivery.COUNTERS))
    # These tests are about choosing targets: a batch counts as delivered once the
    # peer's kernel has it (test_tcp.py tests the resend window itself).
    output.confirm_age = 0
    return output


def local(port: int) -> Endpoint:
    return Endpoint("tcp", "127.0.0.1", port)


def batch(seqs: Iterable[int], pad: bytes = b"") -> Batch:
    return Batch([b"<13>1 - - - - - seq=%d %s" % (s, pad) for s in seqs], received=0.0)


def seq_of(frame: bytes) -> int:
    return int(frame.split(b"seq=", 1)[1].split(b" ", 1)[0])


async def feed(output: TcpOutput, seqs: Iterable[int], timeout: float = 5.0) -> None:
    """Queue one batch per seq, each once the one before is delivered (one write each)."""
    for seq in seqs:
        output.spool.put_nowait(batch([seq]))
        with trio.fail_after(timeout):
            await output.spool.wait_empty()


class Collector:
    """A collector on loopback that records the seq of every frame it reads.

    With ``reset_at``, reading a frame with that seq (or a later one) stops the
    listener and resets the connection (RST): a collector that dies mid-write.
    """

    def __init__(self, nursery: trio.Nursery, *, reset_at: int | None = None) -> None:
        self.nursery = nursery
        self.reset_at = reset_at
        self.seqs: list[int] = []
        self.port = 0
        self.connections: dict[trio.SocketStream, trio.CancelScope] = {}
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self, port: int = 0, *, rcvbuf: int = 0) -> None:
        listener = (await trio.open_tcp_listeners(port, host="127.0.0.1"))[0]
        if rcvbuf:  # accepted connections inherit it: the writer cannot run far ahead
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.port = listener.socket.getsockname()[1]
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self.nursery.start_soon(self._serve, listener)

    async def stop(self) -> None:
        """Stop listening and close every connection (FIN)."""
        self._scope.cancel()
        await self._stopped.wait()

    async def drop_connections(self) -> None:
        """Close every connection (FIN), as an idle timeout does; keep listening."""
        for scope in self.connections.values():
            scope.cancel()
        await await_until(lambda: not self.connections, 5, interval=0.002)

    async def _serve(self, listener: trio.SocketListener) -> None:
        try:
            with self._scope:
                async with listener, trio.open_nursery() as nursery:
                    while True:
                        stream = await listener.accept()
                        self.connections[stream] = trio.CancelScope()
                        nursery.start_soon(self._read, stream)
        finally:
            self._stopped.set()

    async def _read(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        try:
            with self.connections[stream]:
                async with stream:
                    while data := await stream.receive_some(65536):
                        for frame in decoder.receive_data(data):
                            self.seqs.append(seq_of(frame))
                            if self.reset_at is not None and self.seqs[-1] >= self.reset_at:
                                self._reset(stream)
                                return
        finally:
            del self.connections[stream]

    def _reset(self, stream: trio.SocketStream) -> None:
        self._scope.cancel()  # stop listening too
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # with a zero linger: RST, and what was unread is gone


def send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to (Linux: the last of tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def duplicates(*collectors: Collector) -> set[int]:
    counts = collections.Counter(s for c in collectors for s in c.seqs)
    return {seq for seq, count in counts.items() if count > 1}


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_failover_to_the_second_target_and_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.output")
    big = range(1000, 1000 + 3 * send_buffer_max() // len(PAD))  # more than the buffers hold
    async with trio.open_nursery() as nursery:
        a, b = Collector(nursery, reset_at=big[0]), Collector(nursery)
        await a.start(rcvbuf=4096)
        await b.start()
        output = make_output([local(a.port), local(b.port)])
        nursery.start_soon(output.run)

        await feed(output, range(20))
        await await_until(lambda: len(a.seqs) == 20, 5, interval=0.002)
        assert b.seqs == []

        # A reads the first frames of a write too big for the socket buffers,
        # then stops listening and resets the connection while the write runs.
        output.spool.put_nowait(batch(big, PAD))
        await feed(output, range(20, 40))
        await await_until(lambda: set(range(20, 40)) <= set(b.seqs), 5, interval=0.002)
        assert output.counters["target_failures"] >= 1
        assert output.counters["failures"] == 0  # B took over: the output never waited

        a.reset_at = None
        await a.start(a.port)  # A is back (this time without the reset)
        seq = 40
        with trio.fail_after(5):
            while not set(a.seqs) & set(range(40, seq)):  # until a batch reaches A again
                await feed(output, [seq])
                seq += 1
                await trio.sleep(0.01)  # real time passes: A's back-off runs out
        await feed(output, range(seq, seq + 20))
        await await_until(lambda: set(range(seq, seq + 20)) <= set(a.seqs), 5, interval=0.002)
        nursery.cancel_scope.cancel()

    sent = set(range(seq + 20)) | set(big)
    assert set(a.seqs) | set(b.seqs) == sent  # nothing lost
    # Only the batch whose write failed may arrive twice: A read its start, B all of it.
    assert big[0] in duplicates(a, b)
    assert duplicates(a, b) <= set(big)
    assert not set(b.seqs) & set(range(seq, seq + 20))  # traffic is back on A
    url_a, url_b = local(a.port).url, local(b.port).url
    assert len(messages(caplog, f"target {url_a} down")) == 1
    assert messages(caplog, "failing over") == [f"output up: failing over from {url_a} to {url_b}"]
    assert messages(caplog, f"target {url_a} up") == [f"output up: target {url_a} up"]
    assert messages(caplog, "back on") == [f"output up: back on {url_a}"]


async def test_loadbalance_shares_and_survives_one_target() -> None:
    async with trio.open_nursery() as nursery:
        a, b = Collector(nursery), Collector(nursery)
        await a.start()
        await b.start()
        output = make_output([local(a.port), local(b.port)], TargetMode.LOADBALANCE)
        nursery.start_soon(output.run)

        await feed(output, range(60))
        await await_until(lambda: len(a.seqs) + len(b.seqs) == 60, 5, interval=0.002)
        assert len(a.seqs) >= 20 and len(b.seqs) >= 20  # round-robin, per write
        assert output.targets.state(0) is output.targets.state(1) is State.UP  # both kept open

        await b.stop()
        await feed(output, range(60, 100))
        await await_until(lambda: set(range(60, 100)) <= set(a.seqs), 5, interval=0.002)
        nursery.cancel_scope.cancel()

    assert set(a.seqs) | set(b.seqs) == set(range(100))
    assert duplicates(a, b) == set()  # no write failed
    assert not set(b.seqs) & set(range(60, 100))
    assert output.counters["failures"] == 0


async def test_all_targets_down_waits_then_delivers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ports = []
    for _ in range(2):
        probe = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        ports.append(probe.socket.getsockname()[1])
        await probe.aclose()  # nothing listens there now: connection refused
    output = make_output([local(port) for port in ports])
    output.spool.put_nowait(batch([0, 1]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.run)
        await trio.sleep(5)  # virtual time: several rounds with the output's back-off
        assert output.counters["failures"] >= 3
        assert output.counters["target_failures"] >= 2 * output.counters["failures"]
        assert len(output.spool) == 2  # the spool keeps everything
        urls = ", ".join(local(port).url for port in ports)
        assert output.last_error == f"all targets down ({urls})"
        b = Collector(nursery)
        await b.start(ports[1])
        await await_until(lambda: len(b.seqs) == 2, 5, interval=0.002)
        nursery.cancel_scope.cancel()
    assert b.seqs == [0, 1]


@contextlib.contextmanager
def blackhole(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A port where a connect hangs: the listener's accept queue is full, so the
    kernel drops every further SYN (a host that is down, a firewall that drops)."""
    with socket.socket() as listener:
        listener.bind((host, port))
        listener.listen(0)  # room for one pending connection
        with socket.create_connection(listener.getsockname()):  # takes it
            yield listener.getsockname()[1]


async def test_a_target_that_hangs_never_holds_up_delivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with blackhole() as port:
        async with trio.open_nursery() as nursery:
            b = Collector(nursery)
            await b.start()
            output = make_output([local(port), local(b.port)])
            nursery.start_soon(output.run)
            # Nothing is up yet: the first batch waits for the connect to A to time out.
            await feed(output, range(5), timeout=2 * tcp.CONNECT_TIMEOUT)
            assert output.targets.state(0) is State.DOWN
            await trio.sleep(RETRY_MAX)  # A's back-off runs out: the next batch probes it
            start = trio.current_time()
            await feed(output, range(5, 25))
            assert output.targets.state(0) is State.CONNECTING  # the probe still hangs
            # ... and B took every batch meanwhile, without waiting for A's connect
            # to time out (virtual time also moves while the window is polled).
            assert trio.current_time() - start < tcp.CONNECT_TIMEOUT / 2
            # The probe times out, and A is down until its back-off runs out again.
            await await_until(
                lambda: output.targets.state(0) is State.DOWN,
                2 * tcp.CONNECT_TIMEOUT,
                interval=0.002,
            )
            await feed(output, range(25, 30))
            await await_until(lambda: len(b.seqs) == 30, 5, interval=0.002)
            nursery.cancel_scope.cancel()
    assert b.seqs == list(range(30))


# -- DNS ------------------------------------------------------------------------


class Resolver(trio.abc.HostnameResolver):
    """``collector.test`` is ``addresses``, until ``failing`` or ``hanging``."""

    def __init__(self) -> None:
        self.addresses = ["127.0.0.1"]
        self.failing = False
        self.hanging = False

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        await trio.lowlevel.checkpoint()
        if host != b"collector.test":
            raise trio.socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if self.hanging:  # a name server that does not answer
            await trio.sleep_forever()
        if self.failing:
            raise trio.socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*tcp, (address, port)) for address in self.addresses]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    resolver = Resolver()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    yield resolver
    trio.socket.set_custom_hostname_resolver(previous)


async def test_dns_outage_uses_the_last_good_address(
    resolver: Resolver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.output")
    async with trio.open_nursery() as nursery:
        collector = Collector(nursery)
        await collector.start()
        output = make_output([Endpoint("tcp", "collector.test", collector.port)])
        nursery.start_soon(output.run)
        await feed(output, range(10))

        resolver.failing = True
        for seq in range(10, 40):
            if seq % 10 == 0:  # the collector drops idle connections: reconnect, look up
                await collector.drop_connections()
            await feed(output, [seq])
        assert output.counters["dns_failures"] == 3
        assert output.counters["failures"] == 0  # delivery never stopped

        resolver.failing = False
        await collector.drop_connections()
        await feed(output, range(40, 50))
        await await_until(lambda: len(collector.seqs) == 50, 5, interval=0.002)
        nursery.cancel_scope.cancel()

    assert collector.seqs == list(range(50))
    assert messages(caplog, "cannot resolve") == [
        "output up: cannot resolve collector.test (Temporary failure in name resolution); "
        "using its last known addresses 127.0.0.1"
    ]
    assert messages(caplog, "resolves again") == [
        "output up: collector.test resolves again (127.0.0.1)"
    ]


async def test_dns_never_resolved_waits_for_the_name(
    resolver: Resolver, autojump_clock: trio.testing.MockClock
) -> None:
    resolver.failing = True
    async with trio.open_nursery() as nursery:
        collector = Collector(nursery)
        await collector.start()
        output = make_output([Endpoint("tcp", "collector.test", collector.port)])
        output.spool.put_nowait(batch([0]))
        nursery.start_soon(output.run)
        await trio.sleep(2)
        assert output.counters["dns_failures"] >= 2
        assert output.last_error == (
            "cannot resolve collector.test: Temporary failure in name resolution"
        )
        resolver.failing = False
        await await_until(lambda: collector.seqs == [0], 5, interval=0.002)
        nursery.cancel_scope.cancel()


async def test_dns_that_does_not_answer_counts_as_failed(
    resolver: Resolver, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        collector = Collector(nursery)
        await collector.start()
        output = make_output([Endpoint("tcp", "collector.test", collector.port)])
        nursery.start_soon(output.run)
        await feed(output, [0])
        resolver.hanging = True
        await collector.drop_connections()
        start = trio.current_time()
        await feed(output, [1], timeout=2 * tcp.RESOLVE_TIMEOUT)
        assert trio.current_time() - start == pytest.approx(tcp.RESOLVE_TIMEOUT)
        await await_until(lambda: len(collector.seqs) == 2, 5, interval=0.002)
        nursery.cancel_scope.cancel()
    assert collector.seqs == [0, 1]
    assert output.counters["dns_failures"] == 1
    assert messages(caplog, "cannot resolve") == [
        "output up: cannot resolve collector.test (timed out); "
        "using its last known addresses 127.0.0.1"
    ]


async def test_a_dead_address_of_a_name_is_passed_over(
    resolver: Resolver, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        collector = Collector(nursery)
        await collector.start()
        with blackhole("127.0.0.2", collector.port):
            resolver.addresses = ["127.0.0.2", "127.0.0.1"]
            output = make_output([Endpoint("tcp", "collector.test", collector.port)])
            nursery.start_soon(output.run)
            start = trio.current_time()
            await feed(output, [0])
            assert trio.current_time() - start == pytest.approx(tcp.HAPPY_EYEBALLS_DELAY)
            await await_until(lambda: collector.seqs == [0], 5, interval=0.002)
            assert output.counters["failures"] == 0
            nursery.cancel_scope.cancel()

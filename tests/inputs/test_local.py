"""relay/inputs/local.py: unix:// and unix+stream:// sockets with the kernel's credentials."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import struct
import subprocess
import termios
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Endpoint, InputConfig, RateLimitConfig, RateLimitKey
from relay.errors import StartupError
from relay.inputs import local, reader, recvmmsg
from relay.message import Batch
from relay.outputs import delivery
from relay.spool.router import Route, Router
from relay.spool.spool import Spool, memory_spool
from relay.stats import Counters
from tests.interop.peers import require_program
from tests.waiting import await_until

ME = (os.getpid(), os.getuid(), os.getgid())


def make_input(
    spools: list[Spool],
    path: Path,
    *,
    stream: bool = False,
    creds_wanted: bool = True,
    **settings: object,
) -> local.LocalDatagramInput | local.LocalStreamInput:
    scheme = "unix+stream" if stream else "unix"
    config = InputConfig("loc", Endpoint(scheme, path=str(path)), **settings)  # type: ignore[arg-type]
    router = Router(
        [Route(s, Counters("output", f"o{i}", delivery.COUNTERS)) for i, s in enumerate(spools)]
    )
    kind = local.LocalStreamInput if stream else local.LocalDatagramInput
    counters = Counters("input", "loc", (*kind.counter_names, "rate_limited"))
    made = kind(config, router, counters, creds_wanted=creds_wanted)
    made.open()
    return made


def our_annotation() -> bytes:
    """What annotate = true appends to this process's messages."""
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    return b" @[_PID=%d _UID=%d _GID=%d _COMM=%s]" % (*ME, comm.encode())


def batches(spool: Spool) -> list[Batch]:
    return spool.peek(1 << 40)


def texts(spool: Spool) -> list[bytes]:
    """The messages queued, without the timestamp and host name relay filled in."""
    return [m[:4] + m[4 + 16 :].split(b" ", 1)[1] for b in batches(spool) for m in b.messages]


async def wait_for(spool: Spool, count: int) -> None:
    with trio.fail_after(10):
        while len(spool) < count:
            await spool.wait_changed()


async def test_datagrams_carry_the_kernels_credentials_not_the_text(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, hostname="myhost")
    logger = require_program("logger", "bsdutils")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"<13>Dec  1 13:20:39 fake[99999]: from the test", str(path))
        # logger claims pid 99999 too; the kernel says which process it is.
        child = await trio.run_process(
            [logger, "-u", str(path), "--id=99999", "-t", "fake", "from logger"]
        )
        await wait_for(spool, 2)
        nursery.cancel_scope.cancel()
    got = batches(spool)
    assert got[0].creds == ME
    assert got[1].creds is not None
    assert got[1].creds[0] not in (99999, os.getpid())  # logger's own pid
    assert got[1].creds[1:] == ME[1:]
    assert got[0].messages[0][4 + 16 :] == b"myhost fake[99999]: from the test"
    assert texts(spool)[1] == b"<13>fake[99999]: from logger"
    assert child.returncode == 0


async def test_credentials_are_read_only_when_something_reads_them(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, creds_wanted=False)
    assert dgram.sock is not None
    assert not dgram.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"<13>app: one", str(path))
        await wait_for(spool, 1)
        nursery.cancel_scope.cancel()
    assert [b.creds for b in batches(spool)] == [None]
    # annotate and a rate limit by pid read them whatever the filters say.
    for forcing in (
        {"annotate": True},
        {"rate_limit": RateLimitConfig(rate=1, burst=1, key=RateLimitKey.PID)},
    ):
        other = make_input([memory_spool()], tmp_path / "log2", creds_wanted=False, **forcing)
        assert other.sock is not None
        assert other.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
        other.sock.close()
        (tmp_path / "log2").unlink()


async def test_batches_are_grouped_by_credentials(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path)
    script = "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    script += "[s.sendto(b'<13>child: %d' % i, sys.argv[1]) for i in range(3)]"
    # 9 datagrams: within the kernel's queue of a socket nobody reads yet
    # (net.unix.max_dgram_qlen, 10 by default).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        for i in range(3):
            client.sendto(b"<13>parent: %d" % i, str(path))
        child = subprocess.run(["python3", "-c", script, str(path)], check=True)  # waits
        for i in range(3, 6):
            client.sendto(b"<13>parent: %d" % i, str(path))
    async with trio.open_nursery() as nursery:  # one wake-up reads all 9
        nursery.start_soon(dgram.serve)
        await wait_for(spool, 9)
        nursery.cancel_scope.cancel()
    by_pid = {b.creds[0]: b.messages for b in batches(spool) if b.creds}
    assert len(batches(spool)) == 2
    assert len(by_pid[os.getpid()]) == 6
    assert child.returncode == 0
    assert sum(len(m) for m in by_pid.values()) == 9


async def test_stream_frames_and_peer_credentials(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "slog"
    listener = make_input([spool], path, stream=True)
    logger = require_program("logger", "bsdutils")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            # glibc's syslog(3) on a stream socket: each message ends with a NUL.
            client.sendall(b"<13>Dec  1 13:20:39 nul[1]: one\0<13>nul[1]: two\0")
        await trio.run_process([logger, "-u", str(path), "-T", "-t", "lf", "three"])
        await trio.run_process([logger, "-u", str(path), "-T", "--octet-count", "-t", "oc", "four"])
        await wait_for(spool, 4)
        nursery.cancel_scope.cancel()
    assert sorted(texts(spool)) == sorted(
        [b"<13>nul[1]: one", b"<13>nul[1]: two", b"<13>lf: three", b"<13>oc: four"]
    )
    creds = [b.creds for b in batches(spool)]
    assert creds[0] == ME
    assert all(c is not None and c[1:] == ME[1:] for c in creds)
    assert listener.counters["connections"] == 3


@pytest.mark.parametrize("stream", [False, True], ids=["dgram", "stream"])
async def test_socket_mode_stale_replaced_live_refused(tmp_path: Path, stream: bool) -> None:
    path = tmp_path / "log"
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    stale = socket.socket(socket.AF_UNIX, kind)
    stale.bind(str(path))
    stale.close()  # leaves the socket file behind, like a crashed daemon
    spool = memory_spool()
    live = make_input([spool], path, stream=stream, socket_mode=0o620)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o620
    for other in (False, True):  # a live socket of either kind is refused
        with pytest.raises(StartupError, match="in use by another process"):
            make_input([memory_spool()], path, stream=other)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(live.serve)
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect(str(path))
            client.send(b"<13>app[1]: hello\n")
        await wait_for(spool, 1)
        nursery.cancel_scope.cancel()
    assert texts(spool) == [b"<13>app[1]: hello"]
    assert not path.exists()  # removed on stop


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("not a socket")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        make_input([memory_spool()], path)
    assert path.read_text() == "not a socket"


async def test_full_spools_drop_count_and_never_block_the_sender(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hand-overs of a few datagrams each: the spool that holds 10 refuses most.
    monkeypatch.setattr(reader, "HANDOVER", 0.001)
    full = memory_spool(max_messages=10)
    roomy = memory_spool()
    path = tmp_path / "log"
    alone = make_input([full], path)
    small = memory_spool(max_messages=10)
    both = make_input([small, roomy], tmp_path / "log2")
    caplog.set_level(logging.WARNING, "relay.input")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(alone.serve)
        nursery.start_soon(both.serve)
        for target, dgram in ((path, alone), (tmp_path / "log2", both)):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.setblocking(False)  # a send that would block raises
                for i in range(1000):
                    while True:
                        try:
                            client.sendto(b"<13>app: seq=%d" % i, str(target))
                            break
                        except BlockingIOError:  # the kernel's queue (max_dgram_qlen)
                            await trio.sleep(0.001)  # the input reads on: it drains
            await await_until(lambda: dgram.counters["received"] == 1000, 10)  # noqa: B023
        nursery.cancel_scope.cancel()
    # A spool takes a batch while it is not full yet: 10 and one hand-over
    # (inputs/reader.py) more.
    assert len(full) + alone.counters["dropped_full"] == 1000
    assert alone.counters["dropped_full"] > 500
    assert both.counters["dropped_full"] == 0  # the second output took every one
    assert len(roomy) == 1000
    # The first drop is logged at once, the rest summed up at the stop: the
    # lines add up to the counters.
    lines = [r.getMessage() for r in caplog.records if "spool full" in r.getMessage()]
    assert len(lines) == 4

    def total(after: str) -> int:
        numbers = [line.split(after)[1].split(" ")[0].strip(";") for line in lines]
        return sum(int(n.replace(",", "")) for n in numbers)

    assert total(": o0 ") == 2000 - len(full) - len(small)
    assert total("taken by no output: ") == alone.counters["dropped_full"]


async def test_annotate_appends_the_credentials(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, annotate=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"<13>app[99999]: hi", str(path))
        await wait_for(spool, 1)
        nursery.cancel_scope.cancel()
    suffix = our_annotation()
    assert texts(spool) == [b"<13>app[99999]: hi" + suffix]


async def test_rate_limit_by_pid(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "log"
    limit = RateLimitConfig(rate=1, burst=5, key=RateLimitKey.PID)
    dgram = make_input([spool], path, rate_limit=limit)
    script = "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    script += "[s.sendto(b'<13>child: %d' % i, sys.argv[1]) for i in range(7)]"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for i in range(7):  # within the kernel's queue while the input waits its turn
                client.sendto(b"<13>parent: %d" % i, str(path))
        await trio.run_process(["python3", "-c", script, str(path)])
        await await_until(lambda: dgram.counters["received"] == 14, 10)
        nursery.cancel_scope.cancel()
    # Each process has its own bucket of 5.
    senders = [m.split(b">", 1)[1].split(b":")[0] for m in texts(spool)]
    assert (senders.count(b"parent"), senders.count(b"child")) == (5, 5)
    assert dgram.counters["rate_limited"] == 4


async def test_max_connections_closes_new_ones_at_once(tmp_path: Path) -> None:
    spool = memory_spool()
    path = tmp_path / "slog"
    listener = make_input([spool], path, stream=True, max_connections=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve)
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(str(path))
        await await_until(lambda: listener.counters["connections"] == 1, 10)
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(str(path))
        await await_until(lambda: listener.counters["refused_connections"] == 1, 10)
        second.settimeout(5)
        assert second.recv(10) == b""  # closed, not left waiting
        first.sendall(b"<13>a: kept\n")
        await wait_for(spool, 1)
        first.close()
        second.close()
        nursery.cancel_scope.cancel()


def test_process_names_are_cached_bounded_and_expire() -> None:
    now = [0.0]
    names = local.ProcessNames(max_entries=2, lifetime=5.0, clock=lambda: now[0])
    me = os.getpid()
    assert names(me) == Path(f"/proc/{me}/comm").read_text().strip()
    assert names(me) is not None and names.reads == 1  # cached
    now[0] = 5.0
    names(me)
    assert names.reads == 2  # expired: pids are reused
    assert names(1 << 30) is None  # no such process
    names(1)
    assert len(names._names) == 2  # bounded: the least recently used went


def send_all(directory: Path, datagrams: list[bytes], stream_bytes: list[bytes]) -> None:
    """The garbage, then a good message on each socket (in a thread: sends may block)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        for gram in datagrams:
            client.sendto(gram, str(directory / "d"))
        client.sendto(b"<13>good: after datagrams", str(directory / "d"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(directory / "s"))
        for chunk in stream_bytes:
            client.sendall(chunk)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(directory / "s"))
        client.sendall(b"<13>good: after stream\n")


GARBAGE = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20)


@given(datagrams=GARBAGE, stream_bytes=GARBAGE)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_garbage_never_stops_the_inputs(
    tmp_path: Path, datagrams: list[bytes], stream_bytes: list[bytes]
) -> None:
    async def main() -> None:
        spool = memory_spool()
        directory = Path(tmp_path) / f"g{os.urandom(4).hex()}"
        directory.mkdir()
        dgram = make_input([spool], directory / "d", max_message_size=64)
        listener = make_input([spool], directory / "s", stream=True, max_message_size=64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dgram.serve)
            nursery.start_soon(listener.serve)
            await trio.to_thread.run_sync(send_all, directory, datagrams, stream_bytes)

            def arrived() -> bool:
                got = [m for b in batches(spool) for m in b.messages]
                good = (b"good: after datagrams", b"good: after stream")
                return sum(m.endswith(good) for m in got) == 2

            await await_until(arrived, 10)
            nursery.cancel_scope.cancel()
        assert dgram.counters["handler_errors"] == listener.counters["handler_errors"] == 0

    trio.run(main)


# A sender of steady datagrams, in its own process: 4,000 a second for 0.25 s.
STEADY_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(1000):
    pause = start + i / 4000 - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    s.sendto(b"<13>app: seq=%d" % i, sys.argv[1])
"""


@pytest.mark.serial  # a sender paced at 4,000/s, batches counted
async def test_a_steady_trickle_is_handed_over_in_batches(tmp_path: Path) -> None:
    """Datagrams at 4,000/s are read as they come (the kernel's queue of 10
    never fills) but reach the spool a few dozen at a time, each hand-over one
    trio wake-up (inputs/reader.py); every one arrives, in order."""
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, creds_wanted=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        await trio.run_process(["python3", "-c", STEADY_SENDER, str(path)])
        await wait_for(spool, 1000)
        nursery.cancel_scope.cancel()
    assert [int(t.rsplit(b"=", 1)[1]) for t in texts(spool)] == list(range(1000))
    # 10 ms at 4,000/s: 40 a batch (1 to 3 when each wake-up read what had come)
    assert 1000 / len(batches(spool)) >= 10


def queued_in_kernel(sock: socket.socket) -> int:
    """Bytes of the next datagram waiting in ``sock`` (0: none)."""
    size: int = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]
    return size


async def test_what_the_reader_holds_is_queued_at_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Datagrams read from the kernel but not yet handed over (the hand-over
    an hour away) are queued when the input stops, not lost."""
    monkeypatch.setattr(reader, "HANDOVER", 3600.0)
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, creds_wanted=False)
    sock = dgram.sock
    assert sock is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for i in range(3):
                client.sendto(b"<13>app: seq=%d" % i, str(path))
        await await_until(lambda: queued_in_kernel(sock) == 0, 10)
        assert len(spool) == 0  # held by the reader
        with trio.fail_after(5):
            await dgram.stop()
            await await_until(lambda: len(spool) == 3, 5)
    assert [t.rsplit(b"=", 1)[1] for t in texts(spool)] == [b"0", b"1", b"2"]
    assert not path.exists()


@pytest.mark.parametrize("many", [True, False], ids=["recvmmsg", "recv"])
async def test_a_steady_trickle_on_a_long_queue_is_read_in_naps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    """Under systemd's net.unix.max_dgram_qlen (512) the reader naps between
    looks (inputs/reader.py), through recvmmsg or one receive call a datagram:
    every message arrives once, in order, with the sender's credentials.
    (The reader is told the queue is 512 long; the kernel's here may be 10,
    so the sender waits for room when it is full. That no sender waits
    under 512 is measured by scripts/bench, which sets it.)"""
    monkeypatch.setattr(local, "unix_queue_length", lambda: 512)
    if not many:
        monkeypatch.setattr(recvmmsg, "_RECVMMSG", None)
    spool = memory_spool()
    path = tmp_path / "log"
    dgram = make_input([spool], path, annotate=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dgram.serve)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            for i in range(600):
                while True:
                    try:
                        client.sendto(b"<13>app: seq=%d" % i, str(path))
                        break
                    except BlockingIOError:  # the kernel's queue is full
                        await trio.sleep(0.001)
                if i % 5 == 4:
                    await trio.sleep(0.001)
        await wait_for(spool, 600)
        nursery.cancel_scope.cancel()
    assert isinstance(dgram, local.LocalDatagramInput)
    assert dgram.reader is not None and dgram.reader.looks > 0
    suffix = our_annotation()
    assert texts(spool) == [b"<13>app: seq=%d" % i + suffix for i in range(600)]

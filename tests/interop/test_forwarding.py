"""End to end: real senders -> relay -> real rsyslog collector, over loopback.

Every test counts by sequence number: each number sent arrives exactly once.
The relay also writes an exact octet-counted copy of what it received to a
file, so that "bytes unchanged" is checked against what the relay was given,
not against what the test thinks the sender sent.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.protocol.framing import FrameDecoder, Framing, encode_octet_counted
from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_stats,
    require_program,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

COUNT = 100_000


class Pipeline:
    """A relay listening on TCP and UDP, forwarding over TCP to ``collector``."""

    def __init__(self, tmp_path: Path, collector: RsyslogCollector) -> None:
        self.port = free_port("tcp")
        while True:  # the same number free for UDP too, to keep the URLs simple
            try:
                import socket

                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.port = free_port("tcp")
        self.copy = tmp_path / "received.octet"
        self.config = config = tmp_path / "relay.toml"
        config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[input.tcp]
url = "tcp://127.0.0.1:{self.port}"

[input.udp]
url = "udp://127.0.0.1:{self.port}"

[output.collector]
url = "tcp://127.0.0.1:{collector.tcp_port}"

[output.copy]
url = "file://{self.copy}"
format = "octet-counted"
""")
        self.relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
        self.collector = collector

    def received(self) -> list[bytes]:
        """What the relay received, from its exact octet-counted copy."""
        decoder = FrameDecoder(framing=Framing.OCTET_COUNTING)
        return decoder.receive_data(self.copy.read_bytes()) + decoder.receive_data(b"")

    def wait_delivered(self, count: int, timeout: float = 60) -> list[bytes]:
        return self.collector.wait_for_count(count, timeout=timeout)

    def kernel_drops(self) -> int:
        """The datagrams the kernel dropped at the relay's UDP socket, as relay counts them."""
        return int(relay_stats(self.config)["inputs"]["udp"]["dropped"]["kernel"])

    def check(self, count: int, *, datagrams: bool = False) -> None:
        """Every seq 0..count-1 exactly once at the collector, bytes unchanged.

        ``datagrams``: over UDP a burst may overflow the relay's receive
        buffer on a loaded machine; then as many seqs as the relay counts as
        dropped by the kernel may be missing (none silently), and no more."""
        drops = 0
        if datagrams:

            def all_counted() -> bool:
                nonlocal drops
                drops = self.kernel_drops()
                return len(self.collector.lines()) + drops >= count

            wait_until(all_counted, 60, message=lambda: f"{drops} dropped by the kernel")
        lines = self.wait_delivered(count - drops)
        seqs = self.collector.seqs()
        missing = sorted(set(range(count)) - set(seqs))
        dupes = sorted(n for n, c in seqs.items() if c > 1)
        assert len(missing) == drops and not dupes, (
            f"{len(missing)} missing (first {missing[:5]}; {drops} counted as dropped by the "
            f"kernel), {len(dupes)} duplicated (first {dupes[:5]})"
        )
        assert len(lines) == count - drops
        wait_until(
            lambda: len(self.received()) >= count - drops, 10, message="relay's copy incomplete"
        )
        assert collections.Counter(lines) == collections.Counter(self.received())


@pytest.fixture
def pipeline(tmp_path: Path, rsyslog_collector: RsyslogCollector) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path, rsyslog_collector)
    with pipe.relay.start():
        pipe.relay.wait_for_tcp(pipe.port)
        yield pipe
        assert pipe.relay.terminate(timeout=30) == 0, pipe.relay.log_tail()
    assert "Traceback" not in pipe.relay.log()


def test_relay_send_over_tcp(pipeline: Pipeline) -> None:
    result = subprocess.run(
        [
            "python",
            "-m",
            "relay",
            "send",
            f"tcp://127.0.0.1:{pipeline.port}",
            "--count",
            str(COUNT),
            "--size",
            "300",
            "--connections",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pipeline.check(COUNT)


def _logger(pipeline: Pipeline, *flags: str) -> None:
    logger = require_program("logger", "bsdutils")
    lines = "".join(f"seq={n}\n" for n in range(COUNT))
    result = subprocess.run(
        [
            logger,
            "-n",
            "127.0.0.1",
            "-P",
            str(pipeline.port),
            "--rfc5424",
            "-t",
            "interop",
            "--socket-errors=on",
            *flags,
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_logger_over_udp(pipeline: Pipeline) -> None:
    _logger(pipeline, "-d")
    pipeline.check(COUNT, datagrams=True)


def test_logger_over_tcp_lf_framing(pipeline: Pipeline) -> None:
    _logger(pipeline, "-T")
    pipeline.check(COUNT)


def test_logger_over_tcp_octet_counting(pipeline: Pipeline) -> None:
    _logger(pipeline, "-T", "--octet-count")
    pipeline.check(COUNT)


def test_odd_bytes_arrive_unchanged(pipeline: Pipeline) -> None:
    """Invalid UTF-8, a BOM, tabs and an RFC 3164 message without hostname reach
    rsyslog byte for byte (RFC 5424 §6.4: receivers SHOULD NOT alter MSG)."""
    import socket

    sent = [
        b"<13>1 2026-11-22T00:00:00Z host app - - - seq=0 \xff\xfe invalid utf-8",
        b"<13>1 2026-11-22T00:00:00Z host app - - - \xef\xbb\xbfseq=1 with BOM",
        b'<13>1 2026-11-22T00:00:00Z host app - - [ex@32473 a="b\\]c"] seq=2\ttab',
        b"<13>Nov 22 00:00:00 sshd[42]: seq=3 rfc3164 without hostname",
        b"seq=4 no PRI at all, forwarded raw",
    ]
    with socket.create_connection(("127.0.0.1", pipeline.port)) as sock:
        sock.sendall(encode_octet_counted(sent))
    lines = pipeline.wait_delivered(len(sent))
    assert sorted(lines) == sorted(sent)

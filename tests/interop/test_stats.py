"""Seeing into a running relay: ``relay stats`` and /metrics add up.

Real relay processes; ``relay stats`` run as a user runs it, /metrics fetched
with curl and parsed with prometheus_client's text-format parser; messages
counted by sequence number at a real rsyslog collector or relay's file output.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.cli.sender import SendPlan, build_messages
from relay.config import Endpoint
from tests.interop.peers import (
    LOOPBACK,
    REPO_ROOT,
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_send,
    relay_stats,
    udp_port_bound,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

LOAD = 200_000
# The output whose upstream is down: a memory spool this small, dropping
# the oldest, so that dropped and queued are both non-zero.
LOSSY_QUEUE = 20_000


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def env() -> dict[str, str]:
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics fetched with curl, parsed: (sample name, sorted labels) -> value."""
    curl = shutil.which("curl")
    assert curl, "curl is missing: apt-get install curl (scripts/test does)"
    result = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "10", f"http://{LOOPBACK}:{port}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    samples = {}
    for family in text_string_to_metric_families(result.stdout):
        assert family.documentation, f"{family.name} has no HELP"
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: Mapping[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def adds_up(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(received, delivered + dropped + queued) of an output's stats entry."""
    queued = entry["queued"]["memory"]["messages"] + entry["queued"]["disk"]["messages"]
    accounted = entry["delivered"] + sum(entry["dropped"].values()) + queued
    return entry["received"] + entry["recovered"], accounted


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RsyslogCollector]:
    with RsyslogCollector(tmp_path) as running:
        yield running


def test_counters_add_up_after_a_load_in_stats_and_metrics(
    tmp_path: Path, collector: RsyslogCollector
) -> None:
    """200,000 messages over TCP to two outputs, one delivering to rsyslog and
    one whose upstream is down (small memory spool, drop_oldest): once the
    traffic stops, per output received = delivered + dropped + queued in
    ``relay stats --json`` and in /metrics alike, and the delivered count is
    what the collector saw."""
    port, metrics_port, down = free_port(), free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
metrics = "{LOOPBACK}:{metrics_port}"

[input.tcp]
url = "tcp://{LOOPBACK}:{port}"

[output.central]
url = "tcp://{LOOPBACK}:{collector.tcp_port}"

[output.lossy]
url = "tcp://{LOOPBACK}:{down}"
retry_max = 0.5
disk_max_bytes = 0
queue_max_messages = {LOSSY_QUEUE}
on_full = "drop_oldest"
""")
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port, metrics_port)
        relay_send(port, LOAD, size=200)
        collector.wait_for_count(LOAD, timeout=120)

        def settled() -> dict[str, Any]:
            doc = relay_stats(config)
            outputs = doc["outputs"]
            done = outputs["central"]["delivered"] == LOAD and doc["inputs"]["tcp"]["received"]
            return doc if done else {}

        doc = wait_until(settled, 30, interval=0.2, message="central delivered all")
        central, lossy = doc["outputs"]["central"], doc["outputs"]["lossy"]
        assert doc["inputs"]["tcp"]["received"] == LOAD
        assert adds_up(central) == (LOAD, LOAD)
        assert adds_up(lossy) == (LOAD, LOAD)
        assert lossy["delivered"] == 0
        # drop_oldest drops whole batches, never those handed to the output.
        assert LOSSY_QUEUE / 2 < lossy["queued"]["memory"]["messages"] < LOSSY_QUEUE * 1.1
        assert lossy["dropped"]["drop_oldest"] == LOAD - lossy["queued"]["memory"]["messages"]
        assert lossy["upstream"]["state"] == "down"
        assert "refused" in lossy["upstream"]["last_error"]
        assert central["upstream"]["connected"] == [f"tcp://{LOOPBACK}:{collector.tcp_port}"]
        seqs = collector.seqs()
        assert len(seqs) == LOAD and set(seqs.values()) == {1}
        assert central["delivered"] == sum(seqs.values())

        samples = scrape(metrics_port)
        for name in ("central", "lossy"):
            received = metric(samples, "relay_output_received_messages_total", output=name)
            delivered = metric(samples, "relay_output_delivered_messages_total", output=name)
            dropped = sum(
                v
                for (n, labels), v in samples.items()
                if n == "relay_output_dropped_messages_total" and ("output", name) in labels
            )
            queued = sum(
                metric(samples, "relay_spool_messages", output=name, place=place)
                for place in ("memory", "disk")
            )
            assert received == LOAD
            assert delivered + dropped + queued == received
        assert metric(samples, "relay_input_received_messages_total", input="tcp") == LOAD
        assert metric(samples, "relay_output_delivered_messages_total", output="central") == (
            len(seqs)
        )
        target = f"tcp://{LOOPBACK}:{collector.tcp_port}"
        assert metric(samples, "relay_output_up", output="central", target=target) == 1
        assert (
            metric(samples, "relay_output_up", output="lossy", target=f"tcp://{LOOPBACK}:{down}")
            == 0
        )
        assert metric(samples, "relay_spool_oldest_age_seconds", output="lossy") > 0

        table = subprocess.run(
            relay_command("stats", "-c", str(config)),
            capture_output=True,
            text=True,
            env=env(),
            timeout=30,
            check=True,
        ).stdout
        row = next(line for line in table.splitlines() if line.startswith("lossy "))
        dropped_now = relay_stats(config)["outputs"]["lossy"]["dropped"]["drop_oldest"]
        assert row.split()[1:4] == [str(LOAD), "0", str(dropped_now)], table
        assert "lossy: dropped: drop_oldest" in table
        # Memory only, upstream down: what lossy holds is lost at the stop.
        assert relay.terminate(30) == 1


def burst(port: int, count: int) -> None:
    """``count`` numbered datagrams, as fast as a socket sends them."""
    plan = SendPlan(endpoint=Endpoint("udp", LOOPBACK, port), count=count)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        for message in build_messages(plan, 0, count):
            sock.send(message)


def test_udp_kernel_drops_are_what_was_sent_and_did_not_arrive(tmp_path: Path) -> None:
    """A burst a small receive buffer cannot hold, sent while the relay is
    stopped (SIGSTOP): the kernel drops the rest; relay stats, /metrics and
    the periodic stats line show exactly sent minus what arrived at the output."""
    port, metrics_port = free_port("udp"), free_port()
    sink = tmp_path / "sink.log"
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
metrics = "{LOOPBACK}:{metrics_port}"
stats_interval = 0.5

[input.udp]
url = "udp://{LOOPBACK}:{port}"
rcvbuf = 4096

[output.file]
url = "file://{sink}"
""")
    sent = 2_000
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(metrics_port)
        wait_until(lambda: udp_port_bound(port), 10)
        os.kill(relay.pid, signal.SIGSTOP)
        try:
            burst(port, sent)
        finally:
            os.kill(relay.pid, signal.SIGCONT)

        def all_counted() -> dict[str, Any]:
            doc = relay_stats(config)
            entry = doc["inputs"]["udp"]
            counted = entry["received"] + entry["dropped"]["kernel"]
            delivered = doc["outputs"]["file"]["delivered"] == entry["received"]
            return doc if counted == sent and delivered else {}

        doc = wait_until(all_counted, 30, interval=0.2, message="every datagram counted")

        def arrived() -> int:
            return len(re.findall(rb"seq=\d+", sink.read_bytes())) if sink.exists() else 0

        entry = doc["inputs"]["udp"]
        kernel = entry["dropped"]["kernel"]
        assert kernel > 0, "the burst fit: nothing to see"
        wait_until(lambda: arrived() == entry["received"], 10)
        assert kernel == sent - arrived()
        samples = scrape(metrics_port)
        assert metric(samples, "relay_udp_kernel_drops_total", input="udp") == kernel
        assert (
            metric(samples, "relay_input_dropped_messages_total", input="udp", reason="kernel")
            == kernel
        )
        wait_until(
            lambda: (
                f"stats: input udp: received {sent - kernel}, dropped {kernel} (kernel {kernel})"
                in relay.log()
            ),
            10,
            message=relay.log_tail,
        )
        assert relay.terminate() == 0


def _garbage(rng: random.Random) -> bytes:
    """Something a confused or hostile client might send."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 20_000))
    if kind == 1:  # a request line that never ends
        return b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * rng.randrange(10, 20_000)
    if kind == 2:
        return rng.choice([b"stats", b"STATS\n", b"\n", b"stats\nstats\n", b"\x00\n", b"reload\n"])
    if kind == 3:
        return b"GET /" + rng.randbytes(50) + b" HTTP/1.1\r\n\r\n"
    if kind == 4:
        return rng.choice([b"PUT / HTTP/1.1\r\n\r\n", b"GET /metrics\r\n\r\n", b"\r\n\r\n"])
    return b""  # connect and say nothing


def _play(connect: Callable[[], socket.socket], data: bytes, rng: random.Random) -> socket.socket:
    """Send ``data``; half the time read what comes back, else leave it open."""
    sock = connect()
    sock.settimeout(2)
    with contextlib.suppress(OSError):
        if rng.random() < 0.3:  # byte by byte, the start of it
            for byte in data[:20]:
                sock.send(bytes([byte]))
            data = data[20:]
        sock.sendall(data)
        if rng.random() < 0.5:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    return sock


def test_no_client_of_the_control_socket_or_metrics_can_stop_the_relay(tmp_path: Path) -> None:
    """Hundreds of garbage, endless, silent and half-closed clients on both
    listeners, some left open to the end: relay stats and /metrics keep
    answering, and the relay stops cleanly (exit 0, no traceback)."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
metrics = "{LOOPBACK}:{metrics_port}"

[input.tcp]
url = "tcp://{LOOPBACK}:{port}"

[output.file]
url = "file://{tmp_path / "sink.log"}"
""")
    control_path = str(tmp_path / "state" / "control.sock")

    def unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(control_path)
        return sock

    def tcp() -> socket.socket:
        return socket.create_connection((LOOPBACK, metrics_port))

    rng = random.Random(11)
    kept: list[socket.socket] = []
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port, metrics_port)
        try:
            for i in range(300):
                connect = unix if i % 2 else tcp
                sock = _play(connect, _garbage(rng), rng)
                if len(kept) < 40 and rng.random() < 0.2:
                    kept.append(sock)  # more than either listener serves at once
                else:
                    sock.close()
                if i % 50 == 0:
                    assert relay_stats(config)["outputs"]["file"]["received"] == 0
                    assert scrape(metrics_port)
            relay_send(port, 100)
            wait_until(lambda: relay_stats(config)["outputs"]["file"]["delivered"] == 100, 20)
            doc = relay_stats(config)
            assert doc["other"]["control"]["control.sock"]["bad_requests"] > 0
            assert doc["other"]["metrics"][f"{LOOPBACK}:{metrics_port}"]["bad_requests"] > 0
            assert relay.terminate(20) == 0
        finally:
            for sock in kept:
                sock.close()
        assert "Traceback" not in relay.log(), relay.log_tail()
        assert relay.running() is False


def _default_sigint() -> None:
    """In the child, before exec: SIGINT delivered and not ignored, whatever
    the test process's state (a child inherits an ignored signal and the mask)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_relay_stats_when_no_relay_runs_and_watch_ends_on_ctrl_c(tmp_path: Path) -> None:
    """One line and status 1 without a relay; --watch refreshes until SIGINT,
    then exits 0 without a traceback."""
    result = subprocess.run(
        relay_command("stats", "--state-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"relay: error: relay is not running (no control socket at {tmp_path}/control.sock)\n"
    )
    port = free_port()
    with RelayProcess(["--input", f"tcp://{LOOPBACK}:{port}"], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port)
        state = tmp_path / "relay" / "state"
        out = tmp_path / "watch.out"
        with out.open("w") as output:
            watch = subprocess.Popen(
                relay_command("stats", "--state-dir", str(state), "--watch", "0.2"),
                stdout=output,
                stderr=subprocess.PIPE,
                env=env(),
                # As from a terminal. In the full parallel run (pytest-xdist) this
                # relay stats went on 10 s after SIGINT, twice; alone it never did.
                preexec_fn=_default_sigint,
            )
            try:
                wait_until(lambda: out.read_text().count("OUT/S") >= 2, 20)
                watch.send_signal(signal.SIGINT)
                _, err = watch.communicate(timeout=10)
            finally:
                if watch.poll() is None:
                    watch.kill()
                    watch.communicate()
        assert watch.returncode == 0, err
        assert err == b""
        assert relay.terminate() == 0

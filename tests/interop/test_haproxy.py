"""Relays behind a real HAProxy speaking the PROXY protocol (issue 13, Done-when 1).

HAProxy (Debian's package) runs in TCP mode with ``send-proxy-v2`` and health
checks in front of two relays (``balance roundrobin``). Clients bound to
127.0.0.2 and 127.0.0.3 send numbered messages through it. Each relay writes
what it receives to ``out/{source}.log`` (a file output whose path shows the
source address: what makes the client visible at the end of the line), and
limits each source to 1 message/s with a burst of 100: the flooding client is
cut, the quiet one is not, though both come through the same balancer. A
PROXY header sent straight to a relay from an address it does not trust is
refused and counted, and nothing it sent is written anywhere.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.protocol.proxy import encode_v2
from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    free_port,
    log_tail,
    relay_send_command,
    require_program,
    wait_for_tcp,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

FLOOD = 1000  # messages on each of the flooding client's connections
QUIET = 40  # messages on each of the quiet client's (within the burst)
BURST = 100

HAPROXY_CONFIG = """\
global
    pidfile {pidfile}
    maxconn 200
    log stderr format short local0 info


defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend syslog
    bind 127.0.0.1:{front}
    default_backend relays

backend relays
    balance roundrobin
    server relay1 127.0.0.1:{port1} send-proxy-v2 check inter 500ms
    server relay2 127.0.0.1:{port2} send-proxy-v2 check inter 500ms
"""

RELAY_CONFIG = """\
[relay]
state_dir = "{directory}/state"
metrics = {metrics}

[input.in]
url = "tcp://127.0.0.1:{port}"
proxy_protocol = true
proxy_trusted = ["127.0.0.1"]

[input.in.rate_limit]
rate = 1
burst = {burst}

[output.files]
url = "file://{directory}/out/{{source}}.log"
"""


class Relay:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port, self.metrics = free_port(), free_port()
        directory.mkdir(parents=True)
        config = directory / "relay.toml"
        config.write_text(
            RELAY_CONFIG.format(
                directory=directory, port=self.port, metrics=self.metrics, burst=BURST
            )
        )
        self.process = RelayProcess(["-c", str(config)], directory)

    def counter(self, sample: str) -> float:
        """A sample of the relay's /metrics, e.g. ``relay_input_proxy_health_checks_total``."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if _is(line, sample)]
        return sum(values)

    def files(self) -> dict[str, list[bytes]]:
        out = self.directory / "out"
        if not out.is_dir():
            return {}
        return {p.stem: p.read_bytes().splitlines() for p in sorted(out.glob("*.log"))}


def _is(line: str, sample: str) -> bool:
    """Whether a metrics ``line`` is of ``sample``: a name, or a name with its
    labels as written (``name{input="in",reason="untrusted"}``)."""
    if "{" in sample:
        return line.startswith(sample + " ")
    return line.startswith((sample + " ", sample + "{"))


@pytest.fixture
def haproxy_program() -> str:
    return require_program("haproxy", "haproxy")


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[Relay]]:
    both = [Relay(tmp_path / "relay1"), Relay(tmp_path / "relay2")]
    with both[0].process, both[1].process:
        for relay in both:
            relay.process.wait_for_tcp(relay.port, relay.metrics, timeout=30)
        yield both


@pytest.fixture
def balancer(tmp_path: Path, haproxy_program: str, relays: list[Relay]) -> Iterator[int]:
    """HAProxy in front of the relays, in the foreground (-db): its frontend's port."""
    front = free_port()
    directory = tmp_path / "haproxy"
    directory.mkdir()
    config = directory / "haproxy.cfg"
    pidfile = directory / "haproxy.pid"
    config.write_text(
        HAPROXY_CONFIG.format(
            pidfile=pidfile, front=front, port1=relays[0].port, port2=relays[1].port
        )
    )
    check = subprocess.run(
        [haproxy_program, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    log = directory / "haproxy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [haproxy_program, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_tcp(LOOPBACK, front, 10, process=process, log_path=log)
            yield front
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    print(log_tail(log))


def send_from(source: str, port: int, lines: list[bytes], header: bytes = b"") -> None:
    """One connection from ``source`` (a loopback address) to ``port``: ``header``,
    then ``lines`` LF-framed; closed once written."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.connect((LOOPBACK, port))
        sock.settimeout(10)
        try:
            sock.sendall(header + b"".join(line + b"\n" for line in lines))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):  # until the far end closes: all of it was taken
                pass
        except OSError:  # reset, or closed already: refused, with what we sent unread
            pass


def logged(relay: Relay, text: str) -> Callable[[], bool]:
    return lambda: text in relay.process.log()


def numbered(client: str, first: int, count: int) -> list[bytes]:
    return [
        b"<13>1 - host app - - - client=%s seq=%d" % (client.encode(), n)
        for n in range(first, first + count)
    ]


def seqs(lines: list[bytes], client: str) -> list[int]:
    tag = b"client=%s seq=" % client.encode()
    return sorted(int(line.split(tag)[1]) for line in lines if tag in line)


def test_clients_seen_and_limited_by_their_own_address_behind_haproxy(
    relays: list[Relay], balancer: int, tmp_path: Path
) -> None:
    # The flooding client, one connection after the other until both relays
    # throttle it (roundrobin alternates; a port probe also takes a turn).
    started = "rate limit: 127.0.0.2: dropping messages above 1/s"
    for first in range(0, 10 * FLOOD, FLOOD):
        send_from("127.0.0.2", balancer, numbered("a", first, FLOOD))
        if all(started in r.process.log() for r in relays):
            break
    for relay in relays:
        wait_until(logged(relay, started), 30, message=relay.process.log_tail)
    # Now the balancer's own address would have no tokens left on either relay:
    # the quiet client gets through only if the relays see it as itself.
    for first in (0, QUIET):
        send_from("127.0.0.3", balancer, numbered("b", first, QUIET))

    def quiet_arrived() -> bool:
        return sum(len(seqs(r.files().get("127.0.0.3", []), "b")) for r in relays) >= 2 * QUIET

    wait_until(quiet_arrived, 30, message=lambda: str([r.files().keys() for r in relays]))

    # A PROXY header straight from an address not in proxy_trusted.
    spoof = encode_v2(("192.0.2.99", 4000), (LOOPBACK, relays[0].port))
    send_from("127.0.0.5", relays[0].port, numbered("spoof", 0, 10), header=spoof)
    untrusted = 'relay_input_proxy_refused_connections_total{input="in",reason="untrusted"}'
    wait_until(lambda: relays[0].counter(untrusted) == 1, 10)

    files = [relay.files() for relay in relays]
    for relay, got in zip(relays, files, strict=True):
        # Each relay served both clients, each under its own address; nothing
        # under the balancer's, the spoofer's or the address it claimed.
        assert set(got) == {"127.0.0.2", "127.0.0.3"}, relay.process.log_tail()
        assert not any(b"spoof" in line for lines in got.values() for line in lines)
        assert not any(
            b"PROXY" in line or b"QUIT" in line for lines in got.values() for line in lines
        )
        assert (
            relay.counter(
                'relay_input_proxy_refused_connections_total{input="in",reason="bad_header"}'
            )
            == 0
        )
    quiet = sorted(n for got in files for n in seqs(got["127.0.0.3"], "b"))
    assert quiet == list(range(2 * QUIET))
    flood = [n for got in files for n in seqs(got["127.0.0.2"], "a")]
    assert len(flood) == len(set(flood))
    # The burst and what 1/s refilled on each relay, of thousands sent.
    assert BURST * 2 <= len(flood) < 2 * (BURST + 60), len(flood)
    assert "refused a connection from 127.0.0.5:" in relays[0].process.log()
    # HAProxy's health checks (a PROXY LOCAL header, then a reset) passed and
    # were not taken for bad headers; only the spoofer was refused.
    assert relays[0].counter(untrusted) == 1
    assert relays[1].counter(untrusted) == 0
    assert "is DOWN" not in (tmp_path / "haproxy" / "haproxy.log").read_text()
    stats = subprocess.run(
        [sys.executable, "-m", "relay", "stats", "-c", str(relays[0].directory / "relay.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "in: PROXY refusals: untrusted 1" in stats.stdout, stats.stdout + stats.stderr
    for relay in relays:
        assert relay.process.terminate() == 0
        assert "Traceback" not in relay.process.log()


@pytest.mark.parametrize("version", ["1", "2"])
def test_relay_send_proxy_from(relays: list[Relay], version: str) -> None:
    """`relay send --proxy-from` speaks as a balancer would: the relay files the
    messages under the address the header names."""
    relay = relays[0]
    command = relay_send_command(relay.port, 50)
    sent = subprocess.run(
        [*command, "--proxy-from", "192.0.2.7:40000", "--proxy-version", version],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: len(relay.files().get("192.0.2.7", [])) >= 50, 10, message=relay.process.log_tail
    )
    lines = relay.files()["192.0.2.7"]
    assert sorted(int(line.split(b"seq=")[1]) for line in lines) == list(range(50))
    assert set(relay.files()) == {"192.0.2.7"}


def test_example_config_is_valid(haproxy_program: str) -> None:
    example = Path(__file__).resolve().parents[2] / "etc" / "haproxy.cfg"
    check = subprocess.run(
        [haproxy_program, "-c", "-f", str(example)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

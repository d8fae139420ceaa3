"""tls:// and relp+tls:// against rsyslog's ossl driver and Python's ssl, over loopback.

rsyslog's TLS settings are global per process (DefaultNetstreamDriver*), so
the sender and the collector are separate rsyslogd processes, each with its
own certificate (tests/certs.py: the shapes rsyslog accepted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.certs import CertFiles, CertificateAuthority
from tests.interop.peers import (
    LOOPBACK,
    RelayProcess,
    RsyslogCollector,
    RsyslogSender,
    assert_each_arrived,
    feed_through_outage,
    free_port,
    omfwd_action,
    omrelp_action,
    relay_counters,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

RELAY = "relay.example.net"
SENDER = "sender.example.net"
COLLECTOR = "collector.example.net"


@dataclass
class Pki:
    ca: CertificateAuthority
    relay: CertFiles
    sender: CertFiles
    collector: CertFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create(tmp_path / "pki")
    return Pki(ca, ca.issue(RELAY), ca.issue(SENDER), ca.issue(COLLECTOR))


class TlsCollector(RsyslogCollector):
    """rsyslogd taking imtcp over TLS (tcp_port) and imrelp over TLS (relp_port)."""

    def __init__(
        self, tmp_path: Path, cert: CertFiles, permitted: str, *, direct: bool = False
    ) -> None:
        self.cert, self.permitted = cert, permitted
        super().__init__(tmp_path, direct=direct)

    def _config(self) -> str:
        c = self.cert
        return f"""\
global(parser.escapeControlCharactersOnReceive="off"
       DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{c.ca}"
       DefaultNetstreamDriverCertFile="{c.cert}" DefaultNetstreamDriverKeyFile="{c.key}")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"
       StreamDriver.AuthMode="x509/name" PermittedPeer=["{self.permitted}"])
input(type="imtcp" address="{self.host}" port="{self.tcp_port}" ruleset="sink")
module(load="imrelp" tls.tlslib="openssl")
input(type="imrelp" address="{self.host}" port="{self.relp_port}" ruleset="sink" tls="on"
      tls.caCert="{c.ca}" tls.myCert="{c.cert}" tls.myPrivKey="{c.key}"
      tls.authMode="name" tls.permittedPeer=["{self.permitted}"])
{self.sink()}"""

    def wait_ready(self) -> None:
        # A plain-TCP probe makes rsyslog log one harmless handshake error.
        self.wait_for_tcp(self.tcp_port, self.host)
        self.wait_for_tcp(self.relp_port, self.host)


def sender_preamble(cert: CertFiles) -> str:
    return (
        f'global(DefaultNetstreamDriverCAFile="{cert.ca}" '
        f'DefaultNetstreamDriverCertFile="{cert.cert}" '
        f'DefaultNetstreamDriverKeyFile="{cert.key}")\n'
        'module(load="omrelp" tls.tlslib="openssl")'
    )


def omrelp_tls_sender(tmp_path: Path, cert: CertFiles, port: int) -> RsyslogSender:
    """rsyslog omrelp over TLS (librelp's openssl) to the relay on ``port``,
    mutual TLS, permitting only RELAY."""
    action = omrelp_action(
        port,
        extra=f'tls="on" tls.caCert="{cert.ca}" tls.myCert="{cert.cert}" '
        f'tls.myPrivKey="{cert.key}" tls.authMode="name" tls.permittedPeer=["{RELAY}"]',
    )
    return RsyslogSender(tmp_path, action, preamble=sender_preamble(cert))


def relay_config(
    tmp_path: Path,
    pki: Pki,
    *,
    scheme: str,
    port: int,
    target: str,
    input_profile: str = "",
    output_profile: str = "",
) -> Path:
    r = pki.relay
    path = tmp_path / "relay.toml"
    path.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
stop_timeout = 10

[tls.listener]
cert = "{r.cert}"
key = "{r.key}"
ca = "{r.ca}"
permitted_peers = ["{SENDER}"]
{input_profile}

[tls.upstream]
cert = "{r.cert}"
key = "{r.key}"
ca = "{r.ca}"
{output_profile or f'permitted_peers = ["{COLLECTOR}"]'}

[input.in]
url = "{scheme}://127.0.0.1:{port}"
{'tls = "listener"' if "tls" in scheme else ""}

[output.central]
url = "{target}"
tls = "upstream"
retry_max = 0.5
""")
    return path


def line(seq: int) -> bytes:
    return b"<13>1 2026-01-01T00:00:00Z host app - - - seq=%d %s" % (seq, b"x" * 150)


def test_omfwd_tls_to_relay_to_imtcp_tls_every_message_once(tmp_path: Path, pki: Pki) -> None:
    # Mutual TLS on both hops, x509/name, each side permitting only the other.
    collector = TlsCollector(tmp_path, pki.collector, permitted=RELAY)
    port = free_port()
    config = relay_config(
        tmp_path, pki, scheme="tls", port=port, target=f"tls://127.0.0.1:{collector.tcp_port}"
    )
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    action = omfwd_action(
        port,
        extra='StreamDriver="ossl" StreamDriverMode="1" StreamDriverAuthMode="x509/name" '
        f'StreamDriverPermittedPeers="{RELAY}"',
    )
    sender = RsyslogSender(tmp_path, action, preamble=sender_preamble(pki.sender))
    count = 20_000
    with collector, relay.start():
        relay.wait_for_tcp(port)
        with sender:
            sender.send_lines(line(i) for i in range(count))
            wait_until(
                lambda: len(collector.seqs()) >= count,
                90,
                message=lambda: (
                    f"collector has {len(collector.seqs())} of {count}; "
                    f"relay log:\n{relay.log_tail()}"
                ),
            )
        assert relay.terminate() == 0  # delivers what it holds: a duplicate would be in
        seqs = collector.seqs()
        assert set(seqs) == set(range(count))
        assert max(seqs.values()) == 1, "duplicates"


# -- refusals -----------------------------------------------------------------


def client_context(cert: CertFiles | None, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def try_send(ctx: ssl.SSLContext, port: int, data: bytes) -> None:
    """Connect, handshake, write; whatever the server does to us is not an error here."""
    with (
        contextlib.suppress(OSError),  # ssl.SSLError is one
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        tls.settimeout(1)
        tls.recv(100)  # TLS 1.3: the server's verdict on our certificate


def wait_closed(sock: socket.socket, timeout: float = 10) -> None:
    """Read until the relay closes ``sock`` (EOF or reset); fail after ``timeout`` s."""
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(4096):
            pass


def failed_attempts(relay: RelayProcess) -> int:
    """How many failed attempts output "central" has logged: the first as a
    warning, each later one at debug level (relay run --log-level debug)."""
    lines = relay.log().splitlines()
    return sum("output central: " in x and "retrying in" in x for x in lines)


def keeps_retrying(relay: RelayProcess, attempts: int = 3) -> None:
    """Wait until the relay has failed ``attempts`` times and still runs."""
    wait_until(
        lambda: failed_attempts(relay) >= attempts or not relay.running(),
        20,
        message=relay.log_tail,
    )
    assert relay.running(), relay.log_tail()


def peer_certificate(port: int, ca: Path, cert: CertFiles) -> bytes:
    ctx = client_context(cert, ca)
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


@pytest.fixture
def tls_relay(tmp_path: Path, pki: Pki) -> Iterator[tuple[RelayProcess, int, RsyslogCollector]]:
    """A relay with a tls:// input (permitting SENDER) forwarding to a plain collector."""
    collector = RsyslogCollector(tmp_path)
    port = free_port()
    r = pki.relay
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[tls.listener]
cert = "{r.cert}"
key = "{r.key}"
ca = "{r.ca}"
permitted_peers = ["{SENDER}"]

[input.in]
url = "tls://127.0.0.1:{port}"
tls = "listener"

[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
""")
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(port)
        yield relay, port, collector


def test_refused_clients_get_one_line_each_and_nothing_is_forwarded(
    tmp_path: Path, pki: Pki, tls_relay: tuple[RelayProcess, int, RsyslogCollector]
) -> None:
    relay, port, collector = tls_relay
    stranger = CertificateAuthority.create(tmp_path / "other", "Other CA").issue(SENDER)
    outsider = pki.ca.issue("outsider.example.net")
    now = datetime.now(UTC)
    expired = pki.ca.issue(
        SENDER, not_before=now - timedelta(days=30), not_after=now - timedelta(days=2)
    )
    ca = pki.relay.ca
    refused = b"<13>1 2026-01-01T00:00:00Z host app - - - REFUSED\n"
    try_send(client_context(stranger, ca), port, refused)
    try_send(client_context(outsider, ca), port, refused)
    try_send(client_context(expired, ca), port, refused)
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
        raw.sendall(refused)
        wait_until(lambda: "[plaintext_on_tls_port]" in relay.log(), 10, message=relay.log_tail)
    try_send(
        client_context(pki.sender, ca), port, b"<13>1 2026-01-01T00:00:00Z host app - - - OK\n"
    )
    collector.wait_for_count(1)
    wait_until(lambda: "plaintext on the TLS port" in relay.log(), 10, message=relay.log_tail)
    log = relay.log()
    assert "(unknown CA)" in log and "[unknown_ca]" in log, log
    assert "(peer not permitted)" in log and "outsider.example.net" in log, log
    assert "[expired]" in log, log
    assert "[plaintext_on_tls_port]" in log and "starts with '<13>1" in log, log
    # What the input accepted, it counts; the counts are logged at the stop.
    assert relay.terminate() == 0
    assert relay_counters(relay.log(), "input", "in")["received"] == 1, relay.log_tail()
    assert [b"OK" in x for x in collector.lines()] == [True], collector.lines()


def test_failures_from_one_address_are_rate_limited(
    tmp_path: Path, pki: Pki, tls_relay: tuple[RelayProcess, int, RsyslogCollector]
) -> None:
    relay, port, _ = tls_relay
    for _ in range(5):
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            raw.sendall(b"<13>plain\n")
            wait_closed(raw)  # judged (logged or not) and closed by the relay
        time.sleep(0.05)  # spaced like a misconfigured client retrying
    assert relay.log().count("[plaintext_on_tls_port]") == 1, relay.log()
    assert relay.terminate() == 0
    counters = relay_counters(relay.log(), "input", "in")
    assert counters["tls_plaintext_on_tls_port"] == 5, relay.log_tail()


def test_output_name_mismatch_is_reported_with_both_names(tmp_path: Path, pki: Pki) -> None:
    wrong = pki.ca.issue("wrong.example.net", san=["DNS:wrong.example.net"])
    collector = TlsCollector(tmp_path, wrong, permitted=RELAY)
    port = free_port()
    config = relay_config(
        tmp_path,
        pki,
        scheme="tls",
        port=port,
        target=f"tls://localhost:{collector.tcp_port}",
        output_profile="# no permitted_peers: the host name is checked",
    )
    relay = RelayProcess(["-c", str(config), "--log-level", "debug"], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(port)
        try_send(client_context(pki.sender, pki.relay.ca), port, line(1) + b"\n")
        wait_until(lambda: "name mismatch" in relay.log(), 10, message=relay.log_tail)
        keeps_retrying(relay)
    log = relay.log()
    assert "expected localhost, the server presented wrong.example.net" in log, log


def test_expiring_certificate_is_named_at_start(tmp_path: Path, pki: Pki) -> None:
    soon = pki.ca.issue(RELAY, valid_for=timedelta(days=10), stem="soon")
    pki.relay = soon
    collector = RsyslogCollector(tmp_path)
    port = free_port()
    config = relay_config(
        tmp_path, pki, scheme="tls", port=port, target=f"tcp://127.0.0.1:{collector.tcp_port}"
    )
    text = config.read_text().replace('tls = "upstream"\n', "")
    config.write_text(text)
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with relay.start():
        relay.wait_for_tcp(port)
        # Logged by a task the start spawns beside the listeners: a loaded
        # host may accept the connection first (seen: an empty log here).
        wait_until(lambda: "expires on" in relay.log(), 10, message=relay.log_tail)
        log = relay.log()
    day = soon.not_after.strftime("%Y-%m-%d")
    assert f"certificate {soon.cert} " in log and f"expires on {day}" in log, log


def test_sighup_reload_keeps_old_certificate_on_bad_files_and_takes_good_ones(
    tmp_path: Path, pki: Pki, tls_relay: tuple[RelayProcess, int, RsyslogCollector]
) -> None:
    relay, port, _ = tls_relay
    ca = pki.relay.ca
    old = peer_certificate(port, ca, pki.sender)
    good = pki.ca.issue(RELAY, stem="renewed")
    pki.relay.cert.write_text("not a certificate\n")
    os.kill(relay.pid, signal.SIGHUP)
    wait_until(lambda: "TLS reload failed" in relay.log(), 10, message=relay.log_tail)
    assert "keeping the previous certificates" in relay.log()
    assert peer_certificate(port, ca, pki.sender) == old
    pki.relay.cert.write_bytes(good.cert.read_bytes())
    pki.relay.key.write_bytes(good.key.read_bytes())
    os.kill(relay.pid, signal.SIGHUP)
    wait_until(lambda: peer_certificate(port, ca, pki.sender) != old, 10, message=relay.log_tail)
    assert peer_certificate(port, ca, pki.sender) == ssl.PEM_cert_to_DER_cert(good.cert.read_text())


def test_relp_output_refused_by_imrelp_says_so_and_keeps_retrying(tmp_path: Path, pki: Pki) -> None:
    # imrelp permits another name: over TLS 1.3 it closes after our handshake,
    # without an alert; the output's error says what that usually means.
    collector = TlsCollector(tmp_path, pki.collector, permitted="someone-else.example.net")
    port = free_port()
    config = relay_config(
        tmp_path,
        pki,
        scheme="relp+tls",
        port=port,
        target=f"relp+tls://127.0.0.1:{collector.relp_port}",
    )
    relay = RelayProcess(["-c", str(config), "--log-level", "debug"], tmp_path / "relay")
    sender = omrelp_tls_sender(tmp_path, pki.sender, port)
    with collector, relay.start():
        relay.wait_for_tcp(port)
        with sender:
            sender.send_lines(line(i) for i in range(10))
            wait_until(
                lambda: "TLS client handshake with 127.0.0.1" in relay.log(),
                20,
                message=relay.log_tail,
            )
            keeps_retrying(relay)
    log = relay.log()
    assert "not among its permitted peers" in log, log
    assert collector.seqs() == {}


def test_tls_output_refused_by_imtcp_says_so_and_keeps_retrying(tmp_path: Path, pki: Pki) -> None:
    # Our client certificate comes from a CA the collector does not know. (rsyslog
    # 8.2302's imtcp/ossl was seen to let a peer outside PermittedPeer through.)
    stranger = CertificateAuthority.create(tmp_path / "other", "Other CA").issue(RELAY)
    collector = TlsCollector(tmp_path, pki.collector, permitted=RELAY)
    port = free_port()
    config = relay_config(
        tmp_path, pki, scheme="tls", port=port, target=f"tls://127.0.0.1:{collector.tcp_port}"
    )
    text = config.read_text()
    upstream = text.index("[tls.upstream]")
    head, tail = text[:upstream], text[upstream:]
    tail = tail.replace(str(pki.relay.cert), str(stranger.cert), 1)
    tail = tail.replace(str(pki.relay.key), str(stranger.key), 1)
    config.write_text(head + tail)
    relay = RelayProcess(["-c", str(config), "--log-level", "debug"], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(port)
        try_send(client_context(pki.sender, pki.relay.ca), port, line(1) + b"\n")
        wait_until(
            lambda: "TLS client handshake with 127.0.0.1" in relay.log(),
            20,
            message=relay.log_tail,
        )
        keeps_retrying(relay)
        assert collector.seqs() == {}
    log = relay.log()
    assert "(unknown CA): the server does not trust the CA that issued our certificate" in log
    # The same reason: logged once (later attempts only at debug level).
    logged = [x for x in log.splitlines() if "TLS client handshake" in x and " DEBUG " not in x]
    assert len(logged) == 1, log


def test_omrelp_tls_to_relay_to_imrelp_tls_every_message_once(tmp_path: Path, pki: Pki) -> None:
    """RELP over TLS both ways: rsyslog omrelp -> relay relp+tls:// in and out ->
    rsyslog imrelp, mutual TLS with permitted peers on both hops.

    This once stalled in 1 run of 12 under load: omrelp reads our answers only
    when it sends, and the input stopped reading while answers waited to be
    written (tests/inputs/test_relp.py has the mechanism without TLS)."""
    count = 200_000
    collector = TlsCollector(tmp_path, pki.collector, permitted=RELAY)
    port = free_port()
    config = relay_config(
        tmp_path,
        pki,
        scheme="relp+tls",
        port=port,
        target=f"relp+tls://127.0.0.1:{collector.relp_port}",
    )
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    sender = omrelp_tls_sender(tmp_path, pki.sender, port)
    with collector, relay.start():
        relay.wait_for_tcp(port)
        with sender:
            started = time.monotonic()
            sender.send_lines((line(i) for i in range(count)), timeout=90)
            wait_until(
                lambda: len(collector.seqs()) >= count,
                90,
                message=lambda: f"collector has {len(collector.seqs())} of {count}",
            )
            took = time.monotonic() - started
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    what = "omrelp TLS -> relay -> imrelp TLS"
    assert_each_arrived(collector, relay, count, what=what, took=took)


def test_imrelp_tls_killed_mid_stream_and_restarted_loses_nothing(tmp_path: Path, pki: Pki) -> None:
    """The RELP+TLS upstream hangs (SIGSTOP) at ~30% for 0.5 s, with messages in
    flight, is SIGKILLed and restarted 5 s later: every number arrives (over a
    new TLS session); the relay sent the unanswered ones again, and duplicates
    are at most that."""
    count = 200_000
    collector = TlsCollector(tmp_path, pki.collector, permitted=RELAY, direct=True)
    port = free_port()
    config = relay_config(
        tmp_path,
        pki,
        scheme="tcp",
        port=port,
        target=f"relp+tls://127.0.0.1:{collector.relp_port}",
    )
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with collector, relay.start():
        relay.wait_for_tcp(port)
        took = feed_through_outage(relay, collector, port, count, hang=0.5)
    assert_each_arrived(collector, relay, count, what="imrelp TLS killed at 30%", took=took)
    resent = relay_counters(relay.log(), "output", "central").get("resent", 0)
    assert resent > 0, "nothing was in flight when the collector died: the test proved nothing"

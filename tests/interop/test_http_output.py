"""The HTTP(S) output against real HTTP peers over loopback (issue 12).

A real nginx (tests/interop/httppeers.py) stands in front of the recording
API: mutual TLS, a bearer token (401 otherwise), a body limit (413), and 502
when the API behind it is down. Messages are numbered (``seq=<n>``) and
counted by number at the API.

* Done-when 1: 100,000 messages from ``logger`` (unix socket) and ``relay
  send`` (TCP) arrive as JSON with the enrichment fields, every seq once.
* Done-when 2: faults one after the other while messages flow (the API
  answering 429 then 503, nginx's body limit lowered (413), the API stopped
  (502), nginx stopped and restarted, the token replaced by a wrong one (401)
  and fixed), and a SIGTERM while the API is down: nothing lost, duplicates
  at most what the relay counted as ``resent``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.certs import CertFiles, CertificateAuthority
from tests.interop.httppeers import Nginx, Recorder
from tests.interop.peers import (
    RelayProcess,
    RelaySendProcess,
    free_port,
    relay_counters,
    require_program,
)
from tests.waiting import wait_until

TOKEN = "s3cret-token-for-the-test"


@pytest.fixture
def certs(tmp_path: Path) -> tuple[CertFiles, CertFiles]:
    """(nginx's certificate for localhost, relay's client certificate), one CA."""
    ca = CertificateAuthority.create(tmp_path / "pki")
    return ca.issue("localhost"), ca.issue("relay-agent")


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def relay_config(
    tmp_path: Path,
    url: str,
    client: CertFiles,
    *,
    tcp_port: int,
    extra: str = "",
    unix: Path | None = None,
) -> Path:
    config = tmp_path / "relay.toml"
    unix_input = f'[input.local]\nurl = "unix://{unix}"\n' if unix else ""
    config.write_text(
        f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[tls.api]
cert = "{client.cert}"
key = "{client.key}"
ca = "{client.ca}"

[input.tcp]
url = "tcp://127.0.0.1:{tcp_port}"

{unix_input}
[output.api]
url = "{url}"
tls = "api"
token_file = "{tmp_path / "token"}"
gzip = true
flush_interval = 0.2
{extra}
"""
    )
    return config


def start_relay(tmp_path: Path, config: Path, tcp_port: int) -> RelayProcess:
    relay = RelayProcess(["-c", str(config)], tmp_path).start()
    relay.wait_for_tcp(tcp_port)
    return relay


def assert_delivered(recorder: Recorder, count: int, resent: int) -> None:
    """Every number 0..count-1 arrived; duplicates at most ``resent``."""
    duplicates = sum(n - 1 for n in recorder.seqs.values())
    missing = set(range(count)) - set(recorder.seqs)
    print(f"{count} messages, {duplicates} duplicates, {resent} resent")
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:5]}"
    assert set(recorder.seqs) == set(range(count))
    assert duplicates <= resent, (duplicates, resent)


def test_hundred_thousand_through_nginx(tmp_path: Path, certs: tuple[CertFiles, CertFiles]) -> None:
    """Done-when 1: logger and relay send, 50,000 each, through nginx (mutual
    TLS, token, gzip) to the API: JSON records, every seq exactly once."""
    logger = require_program("logger", "bsdutils")
    server, client = certs
    write_token(tmp_path / "token", TOKEN)
    tcp_port = free_port()
    sock = tmp_path / "log.sock"
    with (
        Recorder() as recorder,
        Nginx(tmp_path / "nginx", server=server, backend=recorder.port, token=TOKEN) as nginx,
    ):
        config = relay_config(tmp_path, nginx.url, client, tcp_port=tcp_port, unix=sock)
        with start_relay(tmp_path, config, tcp_port) as relay:
            lines = "".join(f"seq={n} from logger\n" for n in range(50_000, 100_000))
            with RelaySendProcess(tcp_port, 50_000, size=200) as feed:
                subprocess.run(
                    [logger, "-u", str(sock), "-t", "app"],
                    input=lines.encode(),
                    check=True,
                    timeout=120,
                )
                feed.finish(timeout=120)
            wait_until(
                lambda: recorder.counted() >= 100_000,
                120,
                message=lambda: f"{recorder.counted()} arrived; {relay.log_tail()}",
            )
            assert relay.terminate(timeout=30) == 0
        counters = relay_counters(relay.log(), "output", "api")
    assert_delivered(recorder, 100_000, counters.get("resent", 0))
    assert counters.get("resent", 0) == 0
    assert recorder.gzipped == recorder.requests
    assert recorder.authorization == {f"Bearer {TOKEN}"}
    record = next(r for r in recorder.records if r.get("input") == "local")
    assert record["app_name"] == "app"
    assert record["message"].startswith("seq=")
    assert record["timestamp"].endswith("Z")
    assert TOKEN not in relay.log()

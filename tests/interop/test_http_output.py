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

import json
import os
import socket
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
    relay_send,
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


# The enrichment Done-when 1 asks for: the host's facts, static labels, and a
# message text that is a JSON object parsed under "app".
ENRICH = (
    'host_fields = ["name", "machine_id", "kernel"]\n'
    'labels = { env = "test", role = "agent" }\n'
    'parse_message = "app"\n'
)


def test_hundred_thousand_through_nginx(tmp_path: Path, certs: tuple[CertFiles, CertFiles]) -> None:
    """Done-when 1: logger and relay send, 50,000 each, through nginx (mutual
    TLS, token, gzip) to the API: JSON records with the enrichment fields,
    every seq exactly once."""
    logger = require_program("logger", "bsdutils")
    server, client = certs
    write_token(tmp_path / "token", TOKEN)
    tcp_port = free_port()
    sock = tmp_path / "log.sock"
    with (
        Recorder() as recorder,
        Nginx(tmp_path / "nginx", server=server, backend=recorder.port, token=TOKEN) as nginx,
    ):
        config = relay_config(
            tmp_path, nginx.url, client, tcp_port=tcp_port, unix=sock, extra=ENRICH
        )
        with start_relay(tmp_path, config, tcp_port) as relay:
            # Every tenth logger line is a JSON object (parse_message).
            lines = "".join(
                f'{{"seq": {n}, "text": "seq={n} from logger"}}\n'
                if n % 10 == 0
                else f"seq={n} from logger\n"
                for n in range(50_000, 100_000)
            )
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
    host = {
        "name": socket.gethostname(),
        "machine_id": Path("/etc/machine-id").read_text().strip(),
        "kernel": os.uname().release,
    }
    for record in recorder.records:
        assert record["host"] == host
        assert record["labels"] == {"env": "test", "role": "agent"}
        assert record["timestamp"].endswith("Z") and record["received"].endswith("Z")
    local = [r for r in recorder.records if r["input"] == "local"]
    tcp = [r for r in recorder.records if r["input"] == "tcp"]
    assert local and tcp
    assert local[0]["app_name"] == "app" and local[0]["facility"] == "user"
    assert {"pid", "uid", "gid"} <= set(local[0])  # the kernel's credentials
    assert tcp[0]["app_name"] == "relay-send" and tcp[0]["source"] == "127.0.0.1"
    parsed = [r for r in local if "app" in r]
    assert parsed and all(r["app"] == json.loads(r["message"]) for r in parsed)
    assert TOKEN not in relay.log()


def burst(port: int, count: int, start: int) -> int:
    """``relay send`` of ``count`` numbered messages from ``start``; the next start."""
    relay_send(port, count, start=start, size=200)
    return start + count


def wait_logged(relay: RelayProcess, text: str, times: int = 1) -> None:
    wait_until(
        lambda: relay.log().count(text) >= times,
        30,
        message=lambda: f"the relay never logged {text!r}; {relay.log_tail()}",
    )


def wait_all(recorder: Recorder, count: int, relay: RelayProcess) -> None:
    wait_until(
        lambda: set(range(count)) <= set(recorder.seqs),
        60,
        message=lambda: (
            f"{len(set(range(count)) - set(recorder.seqs))} of {count} missing; " + relay.log_tail()
        ),
    )


def test_faults_lose_nothing(tmp_path: Path, certs: tuple[CertFiles, CertFiles]) -> None:
    """Done-when 2: each fault while a burst of 5,000 messages goes through,
    then a SIGTERM while the API is down: every seq arrives, and the
    duplicates are at most what the relay counted as resent."""
    server, client = certs
    token = write_token(tmp_path / "token", TOKEN)
    tcp_port = free_port()
    with (
        Recorder(free_port()) as recorder,
        Nginx(tmp_path / "nginx", server=server, backend=recorder.port, token=TOKEN) as nginx,
    ):
        config = relay_config(
            tmp_path,
            nginx.url,
            client,
            tcp_port=tcp_port,
            extra="batch_max_messages = 500\nretry_max = 2\n",
        )
        with start_relay(tmp_path / "run1", config, tcp_port) as relay:
            sent = burst(tcp_port, 5000, 0)
            wait_all(recorder, sent, relay)

            # The API answers 429 (Retry-After: 1), then 503, for a while.
            recorder.refuse(429, 3)
            sent = burst(tcp_port, 5000, sent)
            wait_until(lambda: recorder.refused >= 3, 30)
            recorder.refuse(503, 3)
            wait_until(lambda: recorder.refused >= 6, 30)
            wait_all(recorder, sent, relay)
            wait_logged(relay, "answered 429")
            wait_logged(relay, "answered 503")

            # nginx's body limit lowered below a request: 413, halves.
            # (a third of the largest request so far: gzip makes them small)
            limit = max(1024, recorder.max_body // 3)
            print(f"largest request {recorder.max_body} bytes, limit {limit}")
            nginx.set_body_limit(str(limit))
            recorder.max_body = 0
            sent = burst(tcp_port, 5000, sent)
            wait_all(recorder, sent, relay)  # still under the low limit
            assert "client intended to send too large body" in nginx.error_log.read_text()
            assert 0 < recorder.max_body <= limit
            nginx.set_body_limit("10m")

            # The API stopped: nginx answers 502.
            recorder.stop()
            sent = burst(tcp_port, 5000, sent)
            wait_logged(relay, "answered 502")
            recorder.start()
            wait_all(recorder, sent, relay)

            # nginx stopped, and started again.
            nginx.stop()
            sent = burst(tcp_port, 5000, sent)
            wait_logged(relay, "cannot connect")
            nginx.start()
            wait_all(recorder, sent, relay)

            # The token replaced by a wrong one (401), then fixed.
            write_token(token, "a-wrong-token")
            sent = burst(tcp_port, 5000, sent)
            wait_logged(relay, "answered 401 (unauthorized)")
            assert len(set(recorder.seqs)) < sent
            write_token(token, TOKEN)
            wait_all(recorder, sent, relay)
            log = relay.log()
            assert "output api: delivering again" in log[log.rindex("answered 401") :]

            # SIGTERM while the API is down: kept on disk, delivered after a restart.
            recorder.stop()
            sent = burst(tcp_port, 5000, sent)
            wait_logged(relay, "answered 502", 2)
            assert relay.terminate(timeout=30) == 0
        first = relay_counters(relay.log(), "output", "api")
        recorder.start()
        with start_relay(tmp_path / "run2", config, tcp_port) as relay2:
            wait_all(recorder, sent, relay2)
            assert relay2.terminate(timeout=30) == 0
        second = relay_counters(relay2.log(), "output", "api")
    log = relay.log() + relay2.log()
    assert TOKEN not in log and "a-wrong-token" not in log
    assert first.get("throttled", 0) >= 3
    assert first.get("split", 0) >= 1
    assert first.get("auth_failures", 0) >= 1
    assert first.get("rejected", 0) == 0
    assert_delivered(recorder, sent, first.get("resent", 0) + second.get("resent", 0))


def plain_config(tmp_path: Path, port: int, tcp_port: int, extra: str) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[input.tcp]
url = "tcp://127.0.0.1:{tcp_port}"

[output.api]
url = "http://127.0.0.1:{port}/ingest"
flush_interval = 0.1
retry_max = 1
{extra}
"""
    )
    return config


@pytest.mark.parametrize("body", ["ndjson", "json_array", "es_bulk", "loki"])
def test_every_body_kind(tmp_path: Path, body: str) -> None:
    tcp_port = free_port()
    with Recorder(body=body) as recorder:
        config = plain_config(tmp_path, recorder.port, tcp_port, f'body = "{body}"\n')
        with start_relay(tmp_path, config, tcp_port) as relay:
            relay_send(tcp_port, 2000, size=200)
            wait_all(recorder, 2000, relay)
            assert relay.terminate() == 0
    assert_delivered(recorder, 2000, 0)
    assert recorder.gzipped == 0


def test_bulk_items_refused_are_retried_or_dead_lettered(tmp_path: Path) -> None:
    """_bulk answered 200 with item errors: the 429 item is sent again, the 400
    item goes to the dead-letter file with its status; the rest once."""
    tcp_port = free_port()
    dead = tmp_path / "dead.ndjson"
    with Recorder(body="es_bulk") as recorder:
        recorder.bulk_refuse = {5: 429, 7: 400}
        extra = f'body = "es_bulk"\ndead_letter = "{dead}"\n'
        config = plain_config(tmp_path, recorder.port, tcp_port, extra)
        with start_relay(tmp_path, config, tcp_port) as relay:
            relay_send(tcp_port, 100, size=200)
            wait_all(recorder, 7, relay)
            wait_until(lambda: set(recorder.seqs) == set(range(100)) - {7}, 30)
            assert relay.terminate() == 0
        counters = relay_counters(relay.log(), "output", "api")
    assert all(n == 1 for n in recorder.seqs.values())
    (line,) = dead.read_text().splitlines()
    entry = json.loads(line)
    assert entry["status"] == 400 and entry["output"] == "api"
    assert entry["record"]["message"].startswith("seq=7 ")
    assert counters["rejected"] == counters["dead_lettered"] == 1
    assert "the API refused 1 messages with 400" in relay.log()


def test_other_4xx_goes_to_the_dead_letter_file(tmp_path: Path) -> None:
    tcp_port = free_port()
    dead = tmp_path / "dead.ndjson"
    with Recorder() as recorder:
        recorder.refuse(422, 1)
        config = plain_config(tmp_path, recorder.port, tcp_port, f'dead_letter = "{dead}"\n')
        with start_relay(tmp_path, config, tcp_port) as relay:
            relay_send(tcp_port, 10, size=200)
            wait_until(lambda: dead.exists() and len(dead.read_text().splitlines()) == 10, 30)
            relay_send(tcp_port, 10, size=200, start=10)
            wait_until(
                lambda: set(recorder.seqs) == set(range(10, 20)),
                30,
                message=lambda: f"{recorder.seqs} {recorder.requests} {recorder.refused}",
            )
            assert relay.terminate() == 0
        counters = relay_counters(relay.log(), "output", "api")
    seqs = sorted(
        int(json.loads(x)["record"]["message"][4:].split()[0])
        for x in dead.read_text().splitlines()
    )
    assert seqs == list(range(10))
    assert counters["dead_lettered"] == 10
    assert relay.log().count("the API refused") == 1


def test_token_file_readable_by_others_is_refused_at_start(tmp_path: Path) -> None:
    token = write_token(tmp_path / "token", TOKEN)
    token.chmod(0o644)
    tcp_port = free_port()
    config = plain_config(tmp_path, 9, tcp_port, f'token_file = "{token}"\n')
    with RelayProcess(["-c", str(config)], tmp_path) as relay:
        assert relay.wait_for_exit() != 0
        errors = relay.log().strip().splitlines()
    assert errors == [
        f"relay: error: output api: token_file {token}: readable by others (mode 0644); "
        "chmod 600 it"
    ]


def test_a_server_certificate_of_another_ca_is_a_counted_tls_failure(
    tmp_path: Path, certs: tuple[CertFiles, CertFiles]
) -> None:
    """nginx presents a certificate relay's CA did not sign: one line naming
    the reason, tls_failures counted, nothing delivered nor lost."""
    _, client = certs
    stranger = CertificateAuthority.create(tmp_path / "other", "Another CA").issue("localhost")
    write_token(tmp_path / "token", TOKEN)
    tcp_port = free_port()
    with (
        Recorder() as recorder,
        Nginx(tmp_path / "nginx", server=stranger, backend=recorder.port, token=TOKEN) as nginx,
    ):
        config = relay_config(tmp_path, nginx.url, client, tcp_port=tcp_port)
        with start_relay(tmp_path, config, tcp_port) as relay:
            relay_send(tcp_port, 10, size=200)
            wait_logged(relay, "TLS client handshake with localhost:")
            assert relay.terminate() == 0
        counters = relay_counters(relay.log(), "output", "api")
        spool = relay_counters(relay.log(), "spool", "api")
    assert "failed (unknown CA)" in relay.log(), relay.log_tail()
    assert counters["tls_failures"] >= 1
    assert recorder.requests == 0
    assert spool["saved_at_stop"] == 10


def wait_all_of(count: int, *recorders: Recorder) -> None:
    wait_until(lambda: sum(r.counted() for r in recorders) >= count, 30)


def test_failover_to_the_second_target_and_back(tmp_path: Path) -> None:
    """targets = [A, B]: with A down everything goes to B; once A is back the
    traffic returns to it. Every seq once, in all."""
    tcp_port = free_port()
    first = Recorder(free_port())
    with Recorder() as second:
        config = plain_config(tmp_path, second.port, tcp_port, "")
        text = config.read_text().replace(
            f'url = "http://127.0.0.1:{second.port}/ingest"',
            f'targets = ["http://127.0.0.1:{first.port}/ingest", '
            f'"http://127.0.0.1:{second.port}/ingest"]',
        )
        config.write_text(text)
        with start_relay(tmp_path, config, tcp_port) as relay:
            relay_send(tcp_port, 1000, size=200)
            wait_until(lambda: second.counted() == 1000, 30, message=relay.log_tail)
            wait_logged(relay, "failing over from http://127.0.0.1:")
            with first:
                start = 1000
                while not first.counted():  # a batch at a time until A takes them
                    start = burst(tcp_port, 100, start)
                    wait_all_of(start, first, second)
                wait_logged(relay, "back on http://127.0.0.1:")
                assert relay.terminate() == 0
    seqs = first.seqs + second.seqs
    assert set(seqs) == set(range(start)) and all(n == 1 for n in seqs.values())

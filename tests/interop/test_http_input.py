"""The HTTP ingest input against a real client: curl, over loopback.

What a shipper posting to relay sees (issue 12, done-when 3): NDJSON, plain
and gzip, is answered 200 only once every record is queued (proven with
``durability = "fsync"`` and kill -9: what got a 200 is delivered after the
restart); a wrong token gets 401 and nothing is accepted; full spools get
429 with Retry-After and nothing of that request is queued; a bad record at
line 7 gets 400 naming line 7 and nothing of that request is queued; HTTPS
with a client certificate required. Records are counted by sequence number.
Clients that break HTTP are closed and counted, and the relay carries on.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.certs import CertificateAuthority
from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_counters,
    require_program,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

_SEQ = re.compile(rb"seq=(\d+)")


def ndjson(seqs: Iterable[int]) -> bytes:
    return b"".join(
        json.dumps({"message": f"seq={n} via http", "hostname": "web1", "app_name": "app"}).encode()
        + b"\n"
        for n in seqs
    )


class Answer:
    def __init__(self, status: int, headers: str, body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        for line in self.headers.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body!r})"


def curl(
    url: str, body: bytes, tmp: Path, *extra: str, gzipped: bool = False, check: bool = True
) -> Answer:
    """POST ``body`` with curl; the status, headers and body of the answer."""
    exe = require_program("curl", "curl")
    data = tmp / "body"
    data.write_bytes(gzip.compress(body) if gzipped else body)
    headers, out = tmp / "headers", tmp / "out"
    command = [exe, "-sS", "--max-time", "20", "-o", str(out), "-D", str(headers)]
    command += ["-w", "%{http_code}", "--data-binary", f"@{data}"]
    command += ["-H", "Content-Type: application/x-ndjson"]
    if gzipped:
        command += ["-H", "Content-Encoding: gzip"]
    result = subprocess.run([*command, *extra, url], capture_output=True, timeout=30)
    if check:
        assert result.returncode == 0, result.stderr
    return Answer(
        int(result.stdout or b"0"),
        headers.read_text() if headers.exists() else "",
        out.read_text() if out.exists() else "",
    )


def file_seqs(path: Path) -> Counter[int]:
    data = path.read_bytes() if path.exists() else b""
    return Counter(int(m) for m in _SEQ.findall(data))


def config(tmp_path: Path, port: int, input_extra: str = "", output: str = "") -> Path:
    out = tmp_path / "out.log"
    path = tmp_path / "relay.toml"
    path.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"
[input.api]
url = "http://127.0.0.1:{port}"
{input_extra}
{output or f'[output.central]{chr(10)}url = "file://{out}"'}
""")
    return path


def test_ndjson_plain_and_gzip_get_200_only_once_on_disk(tmp_path: Path) -> None:
    """With the upstream down and fsync durability, what got a 200 survives kill -9."""
    collector = RsyslogCollector(tmp_path)  # down for the first run
    port = free_port()
    conf = config(
        tmp_path,
        port,
        output=f"""\
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
durability = "fsync"
retry_max = 0.5
""",
    )
    url = f"http://127.0.0.1:{port}/v1/ingest"
    first = RelayProcess(["-c", str(conf)], tmp_path / "run1")
    with first.start():
        first.wait_for_tcp(port)
        plain = curl(url, ndjson(range(0, 500)), tmp_path)
        zipped = curl(url, ndjson(range(500, 1000)), tmp_path, gzipped=True)
        assert (plain.status, zipped.status) == (200, 200), (plain, zipped)
        os.kill(first.pid, signal.SIGKILL)  # at once: only what is on disk is left
        first.wait_for_exit()
    with collector:
        second = RelayProcess(["-c", str(conf)], tmp_path / "run2")
        with second.start():
            second.wait_for_tcp(port)
            wait_until(lambda: len(collector.seqs()) >= 1000, 30, message=second.log_tail)
            assert second.terminate() == 0
    assert collector.seqs() == Counter(range(1000))
    assert "Traceback" not in first.log() + second.log()


def test_a_wrong_token_gets_401_and_nothing_is_accepted(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    port = free_port()
    conf = config(tmp_path, port, f'token_file = "{token}"')
    url = f"http://127.0.0.1:{port}/v1/ingest"
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        wrong = curl(url, ndjson(range(100)), tmp_path, "-H", "Authorization: Bearer s3cret")
        none = curl(url, ndjson(range(100, 200)), tmp_path)
        assert (wrong.status, none.status) == (401, 401), (wrong, none)
        assert wrong.header("WWW-Authenticate") == "Bearer"
        right = curl(
            url, ndjson(range(200, 300)), tmp_path, "-H", "Authorization: Bearer s3cret-token"
        )
        assert right.status == 200, right
        wait_until(lambda: len(file_seqs(tmp_path / "out.log")) >= 100, 10)
        # A client that sends its whole body anyway still reads the 401: the
        # relay drops what it sends before closing, rather than reset it.
        head = b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        big = ndjson(range(1000, 30000))
        assert b"HTTP/1.1 401 " in _raw(port, head % len(big) + big)
        assert relay.terminate() == 0
    assert file_seqs(tmp_path / "out.log") == Counter(range(200, 300))
    assert "s3cret" not in relay.log()
    assert relay_counters(relay.log(), "input", "api")["unauthorized"] == 3


def test_a_token_file_others_can_read_refuses_the_start(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o644)
    port = free_port()
    conf = config(tmp_path, port, f'token_file = "{token}"')
    relay = RelayProcess(["-c", str(conf)], tmp_path / "run")
    with relay.start():
        assert relay.wait_for_exit() != 0
    lines = [x for x in relay.log().splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "token_file" in lines[0] and "readable by group or others" in lines[0]
    assert "s3cret" not in relay.log()


def test_full_spools_get_429_with_retry_after_and_nothing_queued(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path)  # down: the spool fills
    port = free_port()
    conf = config(
        tmp_path,
        port,
        output=f"""\
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
queue_max_messages = 50
disk_max_bytes = 0
on_full = "block"
retry_max = 0.5
""",
    )
    url = f"http://127.0.0.1:{port}/v1/ingest"
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        assert curl(url, ndjson(range(50)), tmp_path).status == 200
        full = curl(url, ndjson(range(50, 100)), tmp_path)
        assert full.status == 429, full
        assert full.header("Retry-After") == "2"
        with collector:
            # The sender retries as Retry-After says, until the spool has room.
            retried = wait_until(
                lambda: curl(url, ndjson(range(50, 100)), tmp_path).status == 200, 30
            )
            assert retried
            wait_until(lambda: len(collector.seqs()) >= 100, 30, message=relay.log_tail)
            assert relay.terminate() == 0
    # The 429's records are not queued: each arrives once, from the retry.
    assert collector.seqs() == Counter(range(100))
    assert relay_counters(relay.log(), "input", "api")["refused_full"] >= 1


def test_a_bad_record_at_line_7_gets_400_naming_it_and_nothing_queued(tmp_path: Path) -> None:
    port = free_port()
    conf = config(tmp_path, port)
    url = f"http://127.0.0.1:{port}/v1/ingest"
    lines = ndjson(range(10)).splitlines(keepends=True)
    lines[6] = b'{"message": "seq=6 cut short\n'
    array = json.dumps([{"message": "seq=20"}, {"message": "seq=21"}, {"message": 5}]).encode()
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        bad = curl(url, b"".join(lines), tmp_path)
        assert bad.status == 400, bad
        assert "line 7" in json.loads(bad.body)["message"]
        zipped = curl(url, b"".join(lines), tmp_path, gzipped=True)
        assert zipped.status == 400 and "line 7" in zipped.body, zipped
        bad_array = curl(url, array, tmp_path)
        assert bad_array.status == 400 and "record 2" in bad_array.body, bad_array
        good = curl(url, ndjson(range(100, 110)), tmp_path)
        assert good.status == 200, good
        wait_until(lambda: len(file_seqs(tmp_path / "out.log")) >= 10, 10)
        assert relay.terminate() == 0
    assert file_seqs(tmp_path / "out.log") == Counter(range(100, 110))
    assert relay_counters(relay.log(), "input", "api")["bad_requests"] == 3


def test_limits_answer_413_and_a_gzip_bomb_is_cut_off(tmp_path: Path) -> None:
    port = free_port()
    conf = config(tmp_path, port, "max_body_bytes = 65536")
    url = f"http://127.0.0.1:{port}/v1/ingest"
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        big = curl(url, ndjson(range(2000)), tmp_path)
        assert big.status == 413, big
        # 10 MB of spaces is about 10 KB of gzip: under the limit, inflating past it.
        bomb = curl(url, ndjson([1]) + b" " * 10_000_000, tmp_path, gzipped=True)
        assert bomb.status == 413, bomb
        assert curl(url, ndjson(range(5)), tmp_path).status == 200
        wait_until(lambda: len(file_seqs(tmp_path / "out.log")) >= 5, 10)
        assert relay.terminate() == 0
    assert file_seqs(tmp_path / "out.log") == Counter(range(5))
    assert relay_counters(relay.log(), "input", "api")["too_large"] == 2


def test_https_with_a_client_certificate_required(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server, client = ca.issue("relay.example.net"), ca.issue("shipper.example.net")
    port = free_port()
    conf = config(
        tmp_path,
        port,
        f"""\
tls = "listener"
[tls.listener]
cert = "{server.cert}"
key = "{server.key}"
ca = "{server.ca}"
require_client_cert = true
permitted_peers = ["shipper.example.net"]
""",
    )
    conf.write_text(conf.read_text().replace("http://", "https://"))
    url = f"https://localhost:{port}/v1/ingest"
    trust = ("--cacert", str(server.ca))
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        refused = curl(url, ndjson(range(10)), tmp_path, *trust, check=False)
        assert refused.status == 0, refused  # no answer: the handshake failed
        mine = ("--cert", str(client.cert), "--key", str(client.key))
        answer = curl(url, ndjson(range(10, 20)), tmp_path, *trust, *mine)
        assert answer.status == 200, answer
        wait_until(lambda: len(file_seqs(tmp_path / "out.log")) >= 10, 10)
        assert relay.terminate() == 0
    assert file_seqs(tmp_path / "out.log") == Counter(range(10, 20))


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what comes back before the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return b""
    return b"".join(chunks)


def test_garbage_and_broken_requests_are_closed_and_the_relay_carries_on(
    tmp_path: Path,
) -> None:
    rng = random.Random(12)
    port = free_port()
    conf = config(tmp_path, port)
    url = f"http://127.0.0.1:{port}/v1/ingest"
    good = b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(
        ndjson([1])
    ) + ndjson([1])
    cases = (
        [rng.randbytes(rng.randrange(1, 5000)) for _ in range(20)]
        + [
            good[: rng.randrange(1, len(good))]
            for _ in range(10)  # truncated
        ]
        + [
            b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3,
        ]
    )
    with RelayProcess(["-c", str(conf)], tmp_path / "run") as relay:
        relay.wait_for_tcp(port)
        answers = [_raw(port, case) for case in cases]
        assert b"HTTP/1.1 431" in answers[30] or b"HTTP/1.1 400" in answers[30]
        # Keep-alive: two requests on one connection, both answered.
        two = _raw(port, good.replace(b"seq=1", b"seq=2") + good.replace(b"seq=1", b"seq=3"))
        assert two.count(b"HTTP/1.1 200") == 2, two
        assert curl(url, ndjson(range(10, 15)), tmp_path).status == 200
        wait_until(lambda: {2, 3, *range(10, 15)} <= set(file_seqs(tmp_path / "out.log")), 10)
        assert relay.running()
        assert relay.terminate() == 0
    log = relay.log()
    assert "Traceback" not in log
    counters = relay_counters(log, "input", "api")
    assert counters["protocol_errors"] >= 20 and counters.get("session_errors", 0) == 0

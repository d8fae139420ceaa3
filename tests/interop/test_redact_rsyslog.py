"""Redaction through a real relay to a real rsyslog collector.

The corpus of tests/policy/redact_corpus.py (cards that pass and fail the
Luhn check, passwords in key=value, JSON and URL forms, bearer tokens, AWS
keys, e-mail and IP addresses, and clean lines) is sent to ``relay run`` over
TCP, LF-framed and octet-counted, by two connections; the relay's output
redacts with every built-in rule and forwards to rsyslogd, which writes each
message's received bytes (%rawmsg%). Every line must arrive once, exactly as
the corpus says: every secret masked and every other byte unchanged. The
counters the relay logs at stop must equal the corpus's per-rule counts.
"""

from __future__ import annotations

import collections
import socket
from pathlib import Path

from relay.protocol.framing import encode_octet_counted
from tests.interop.peers import RelayProcess, RsyslogCollector, free_port, relay_counters
from tests.policy.redact_corpus import LINES, RULES


def test_the_corpus_arrives_at_rsyslog_with_every_secret_masked(
    tmp_path: Path, rsyslog_collector: RsyslogCollector
) -> None:
    port = free_port("tcp")
    rules = ", ".join(f'"{rule}"' for rule in RULES)
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[input.tcp]
url = "tcp://127.0.0.1:{port}"

[output.collector]
url = "tcp://127.0.0.1:{rsyslog_collector.tcp_port}"
redact = [{rules}]
""")
    relay = RelayProcess(["-c", str(config)], tmp_path / "relay")
    with relay.start():
        relay.wait_for_tcp(port)
        raw = [line.raw for line in LINES]
        with socket.create_connection(("127.0.0.1", port)) as lf:
            lf.sendall(b"".join(m + b"\n" for m in raw))
        with socket.create_connection(("127.0.0.1", port)) as octet:
            octet.sendall(encode_octet_counted(raw))
        arrived = rsyslog_collector.wait_for_count(2 * len(LINES), timeout=30)
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    expected = collections.Counter(line.redacted for line in LINES for _ in range(2))
    assert collections.Counter(arrived) == expected
    leaked = [line.raw for line in LINES if line.raw != line.redacted and line.raw in arrived]
    assert not leaked
    counts = relay_counters(relay.log(), "redaction", "collector")
    wanted: collections.Counter[str] = collections.Counter()
    for line in LINES:
        for rule, count in line.counts.items():
            wanted[rule] += 2 * count
    assert counts == {rule: n for rule, n in wanted.items() if n}
    assert "Traceback" not in relay.log()

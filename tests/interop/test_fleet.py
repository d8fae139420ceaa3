"""A fleet: senders -> HAProxy (TCP mode) -> relay nodes -> collector.

Issue 13, "Done when" 2: rsyslog's omrelp sends through a real HAProxy to
two relay nodes (each with two worker processes); the node that carries the
stream is SIGTERMed at 30% and started again later. omrelp sends again what
was not acknowledged (HAProxy passes its new connection to the other node),
the stopped node delivers what it had before it exits or after its restart,
and the collector gets every number; duplicates are at most one RELP window.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import pytest

from relay.observe import control
from tests.interop.haproxy import Haproxy
from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    RsyslogSender,
    free_port,
    omrelp_action,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

# omrelp's window: what it may have sent and not had answered when a node
# stops, and so sends again (the bound on duplicates).
WINDOW = 1024


def line(seq: int) -> bytes:
    return b"<13>1 2026-01-01T00:00:00Z host app - - - seq=%d %s" % (seq, b"x" * 150)


def node_config(path: Path, port: int, collector: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""\
[relay]
state_dir = "{path.parent / "state"}"
workers = 2
stop_timeout = 20

[input.relp]
url = "relp://127.0.0.1:{port}"

[output.central]
url = "relp://127.0.0.1:{collector}"
retry_max = 0.5
window = 4096
""")
    return path


def received(config: Path) -> int:
    """What the node's RELP input received so far (its workers added up)."""
    try:
        doc = control.request(control.socket_path(config.parent / "state"), "stats")
    except control.NotRunning:
        return 0
    return int(doc["inputs"]["relp"]["received"])


def ready(relay: RelayProcess) -> bool:
    return "all 2 workers ready" in relay.log()


def test_a_node_stops_mid_stream_and_nothing_is_lost(tmp_path: Path) -> None:
    count = 200_000
    collector = RsyslogCollector(tmp_path)
    ports = [free_port(), free_port()]
    configs = [
        node_config(tmp_path / f"node{i}" / "relay.toml", port, collector.relp_port)
        for i, port in enumerate(ports)
    ]
    nodes = [RelayProcess(["-c", str(c)], c.parent / "run1") for c in configs]
    haproxy = Haproxy(tmp_path / "haproxy", ports)
    sender = RsyslogSender(tmp_path, omrelp_action(haproxy.port, window=WINDOW))
    with collector, nodes[0], nodes[1]:
        for node in nodes:
            wait_until(functools.partial(ready, node), 30, message=node.log_tail)
        with haproxy, sender:
            started = time.monotonic()
            feed = threading.Thread(
                target=sender.send_lines, args=([line(i) for i in range(count)], 120)
            )
            feed.start()
            try:
                wait_until(lambda: len(collector.seqs()) >= count * 3 // 10, 60)
                # omrelp holds one connection: the node with it is the one to stop.
                busy = max((0, 1), key=lambda i: received(configs[i]))
                assert nodes[busy].terminate(timeout=60) == 0, nodes[busy].log_tail()
                wait_until(lambda: len(collector.seqs()) >= count * 6 // 10, 60)
                again = RelayProcess(["-c", str(configs[busy])], configs[busy].parent / "run2")
                with again:
                    wait_until(lambda: ready(again), 30, message=again.log_tail)
                    wait_until(
                        lambda: set(range(count)) <= set(collector.seqs()),
                        120,
                        message=lambda: (
                            f"missing {count - len(set(collector.seqs()) & set(range(count)))}"
                        ),
                    )
                    took = time.monotonic() - started
                    assert again.terminate(timeout=30) == 0, again.log_tail()
            finally:
                feed.join(timeout=120)
        other = nodes[1 - busy]
        assert other.terminate(timeout=30) == 0, other.log_tail()
    seqs = collector.seqs()
    duplicates = sum(n - 1 for n in seqs.values())
    print(f"omrelp -> haproxy -> 2 nodes: {count} in {took:.1f} s, {duplicates} duplicates")
    assert set(seqs) == set(range(count))
    assert duplicates <= WINDOW, duplicates
    for node in (*nodes, again):
        assert "Traceback" not in node.log()

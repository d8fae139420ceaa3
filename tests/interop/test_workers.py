"""[relay] workers: processes sharing the inputs, supervised by a parent.

The workers are real ``relay run`` processes on loopback; what a test
checks is what an operator would: what the collector received (by sequence
number), what ``relay stats`` says, the parent's exit status.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.observe import control
from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    free_port,
    relay_send,
    send_until_killed,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop


def stats(state: Path) -> dict[str, Any]:
    """What `relay stats --json` shows: the parent's control socket."""
    return control.request(control.socket_path(state), "stats")


def workers_up(state: Path, count: int, restarts: int = 0) -> bool:
    try:
        workers = stats(state)["workers"]
    except control.NotRunning:
        return False
    return (
        len(workers) == count
        and all(w["state"] == "up" and w["answered"] for w in workers)
        and sum(w["restarts"] for w in workers) >= restarts
    )


def write_config(tmp_path: Path, body: str, workers: int = 2) -> tuple[Path, Path]:
    state = tmp_path / "state"
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nstate_dir = "{state}"\nworkers = {workers}\n{body}')
    return config, state


def test_workers_share_a_port_and_stats_add_up(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path)
    port = free_port()
    config, state = write_config(
        tmp_path,
        f"""\
[input.tcp]
url = "tcp://127.0.0.1:{port}"
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
""",
    )
    with collector, RelayProcess(["-c", str(config)], tmp_path / "run") as relay:
        wait_until(lambda: workers_up(state, 2), 30, message=relay.log_tail)
        relay_send(port, 20_000, connections=16)
        wait_until(lambda: len(collector.seqs()) >= 20_000, 30)
        # Plain TCP counts a message delivered once the peer had it a second.
        wait_until(lambda: stats(state)["outputs"]["central"]["delivered"] == 20_000, 10)
        assert stats(state)["inputs"]["tcp"]["received"] == 20_000
        # Both took connections (16 of them, spread by the kernel's hash).
        each = [
            control.request(control.socket_path(state / f"worker-{k}"), "stats") for k in (0, 1)
        ]
        assert all(d["inputs"]["tcp"]["received"] > 0 for d in each), each
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    assert set(collector.seqs()) == set(range(20_000))
    assert "Traceback" not in relay.log()


def busiest_worker(state: Path) -> tuple[int, int]:
    """(index, pid) of the worker whose RELP input received the most."""
    workers = stats(state)["workers"]
    received = []
    for worker in workers:
        doc = control.request(control.socket_path(state / f"worker-{worker['index']}"), "stats")
        received.append((doc["inputs"]["relp"]["received"], worker["index"], worker["pid"]))
    _, index, pid = max(received)
    return index, pid


async def test_worker_killed_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Done when 3 of issue 13: SIGKILL of a worker taking RELP traffic; the
    parent starts it again, and it delivers what it had acknowledged
    (durability "disk": each batch is written before the answer)."""
    collector = RsyslogCollector(tmp_path)  # down until after the kill: all is spooled
    port = free_port()
    config, state = write_config(
        tmp_path,
        f"""\
[input.relp]
url = "relp://127.0.0.1:{port}"
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
durability = "disk"
retry_max = 0.5
""",
    )
    acked: set[int] = set()
    connections, each = 8, 25_000
    with RelayProcess(["-c", str(config)], tmp_path / "run") as relay:
        wait_until(lambda: workers_up(state, 2), 30, message=relay.log_tail)
        async with trio.open_nursery() as nursery:
            for k in range(connections):
                nursery.start_soon(send_until_killed, port, each, acked, k * each)
            await trio.to_thread.run_sync(
                lambda: wait_until(lambda: len(acked) >= 10_000, 60, message="too few acked")
            )
            index, pid = busiest_worker(state)
            os.kill(pid, signal.SIGKILL)
            # The senders on the other worker go on to the end; those on the
            # killed one saw their connection end.
        wait_until(lambda: workers_up(state, 2, restarts=1), 30, message=relay.log_tail)
        assert f"worker {index} (pid {pid}) was killed by SIGKILL" in relay.log()
        with collector:
            wait_until(
                lambda: acked <= set(collector.seqs()),
                120,
                message=lambda: (
                    f"{len(acked - set(collector.seqs()))} acknowledged "
                    f"messages of {len(acked)} not delivered"
                ),
            )
            doc = stats(state)
            assert doc["workers"][index]["restarts"] == 1
            assert relay.terminate(timeout=60) == 0, relay.log_tail()
    assert "Traceback" not in relay.log()

"""[relay] workers: processes sharing the inputs, supervised by a parent.

The workers are real ``relay run`` processes on loopback; what a test
checks is what an operator would: what the collector received (by sequence
number), what ``relay stats`` says, the parent's exit status.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
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
from tests.interop.test_systemd import NotifySocket, ids
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
    port, metrics = free_port(), free_port()
    config, state = write_config(
        tmp_path,
        f"""\
metrics = {metrics}
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
        # The parent serves the metrics: the sums, and each worker by label.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'relay_input_received_messages_total{input="tcp"} 20000\n' in text
        assert 'relay_output_delivered_messages_total{output="central"} 20000\n' in text
        assert 'relay_worker_up{worker="0"} 1\n' in text
        assert 'relay_worker_up{worker="1"} 1\n' in text
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
    """Issue 13, "Done when" 3: SIGKILL of a worker taking RELP traffic; the
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


def fill_and_stop(tmp_path: Path, body: str, workers: int, port: int, count: int) -> Path:
    """Run a relay with ``workers``, send ``count`` messages over 24
    connections while its collector is down, stop it; its state_dir."""
    config, state = write_config(tmp_path, body, workers=workers)
    with RelayProcess(["-c", str(config)], tmp_path / "run1") as first:
        if workers > 1:
            wait_until(lambda: workers_up(state, workers), 30, message=first.log_tail)
        else:
            first.wait_for_tcp(port)
        relay_send(port, count, connections=24)
        wait_until(lambda: stats(state)["inputs"]["tcp"]["received"] == count, 30)
        assert first.terminate(timeout=60) == 0, first.log_tail()
    return state


def deliver_all(
    tmp_path: Path, body: str, workers: int, count: int, collector: RsyslogCollector, drained: int
) -> str:
    """Start again with ``workers`` and the collector up: every message
    arrives, ``drained`` workers said they delivered an old spool and
    exited, and no spool holds a segment. The log."""
    config, state = write_config(tmp_path, body, workers=workers)
    with collector, RelayProcess(["-c", str(config)], tmp_path / "run2") as second:
        wait_until(
            lambda: set(range(count)) <= set(collector.seqs()),
            60,
            message=lambda: f"{count - len(set(collector.seqs()))} missing",
        )
        done = "left by an earlier run are delivered"
        wait_until(lambda: second.log().count(done) == drained, 30, message=second.log_tail)
        assert second.terminate(timeout=30) == 0, second.log_tail()
    assert "Traceback" not in second.log()
    assert not list(state.glob("**/*.seg"))
    return second.log()


def two_way_body(collector_port: int, port: int) -> str:
    return f"""\
[input.tcp]
url = "tcp://127.0.0.1:{port}"
[output.central]
url = "tcp://127.0.0.1:{collector_port}"
retry_max = 0.5
"""


def test_spools_of_workers_no_longer_run_are_delivered(tmp_path: Path) -> None:
    """A node started again with fewer workers (3, then 1): what workers 1
    and 2 saved at the stop is delivered by workers of their own, which exit."""
    port, count, collector = free_port(), 30_000, RsyslogCollector(tmp_path)
    body = two_way_body(collector.tcp_port, port)
    state = fill_and_stop(tmp_path, body, 3, port, count)
    saved = [k for k in (1, 2) if any((state / f"worker-{k}").glob("spool/*/*.seg"))]
    assert saved == [1, 2], "the kernel gave workers 1 and 2 no connection of 24"
    log = deliver_all(tmp_path, body, 1, count, collector, drained=2)
    assert "worker 2 started" in log


def test_spools_of_a_run_without_workers_are_delivered(tmp_path: Path) -> None:
    """The other way: a relay without workers saved its spool in
    state_dir/spool; started with 2 workers, that spool moves to a worker
    directory of its own and is delivered."""
    port, count, collector = free_port(), 10_000, RsyslogCollector(tmp_path)
    body = two_way_body(collector.tcp_port, port)
    state = fill_and_stop(tmp_path, body, 1, port, count)
    assert any(state.glob("spool/*/*.seg"))
    log = deliver_all(tmp_path, body, 2, count, collector, drained=1)
    assert "moved to" in log and "worker 2 started" in log


def test_ready_once_every_worker_listens_then_reload_and_stop_reach_them_all(
    tmp_path: Path,
) -> None:
    """systemd hears READY=1 from the parent once both workers listen;
    `relay reload` (SIGHUP to the parent) reloads both; SIGTERM stops both."""
    notify = NotifySocket(tmp_path / "notify")
    port, out = free_port(), tmp_path / "out.log"
    config, state = write_config(
        tmp_path, f'[input.tcp]\nurl = "tcp://127.0.0.1:{port}"\n[output.o]\nurl = "file://{out}"\n'
    )
    relay = RelayProcess(
        ["-c", str(config)], tmp_path / "run", env={"NOTIFY_SOCKET": str(notify.path)}
    )
    with relay.start():
        ready = notify.next(30, relay)
        assert ready == {"READY": "1", "STATUS": "2 of 2 workers up; 0 restarts"}
        assert relay.log().count("relay: listening on") == 2
        reload = subprocess.run(
            [sys.executable, "-m", "relay", "reload", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert reload.returncode == 0, reload.stderr
        wait_until(lambda: relay.log().count("relay: reloaded") == 2, 30, message=relay.log_tail)
        # Another number of workers needs a restart: said once, and both
        # workers keep their inputs.
        config.write_text(config.read_text().replace("workers = 2", "workers = 1"))
        os.kill(relay.pid, signal.SIGHUP)
        wait_until(lambda: relay.log().count("relay: reloaded") == 4, 30, message=relay.log_tail)
        assert "[relay] workers changed from 2 to 1: that needs a restart" in relay.log()
        second = control.request(control.socket_path(state / "worker-1"), "stats")
        assert list(second["inputs"]) == ["tcp"]
        relay_send(port, 1000, connections=8)
        wait_until(lambda: out.exists() and out.read_bytes().count(b"seq=") == 1000, 20)
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    assert any(n.get("STOPPING") == "1" for n in notify.waiting())
    assert relay.log().count("relay: SIGTERM received; stopping") == 3  # parent, 2 workers
    notify.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_workers_become_the_user_and_the_parent_stays_root(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path)
    open_dir = Path(tempfile.mkdtemp(prefix="relay-user-"))  # tmp_path is 0700: nobody stops
    open_dir.chmod(0o755)
    port, state = free_port(), open_dir / "state"
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{state}"
workers = 2
[input.tcp]
url = "tcp://127.0.0.1:{port}"
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
""")
    nobody = str(pwd.getpwnam("nobody").pw_uid)
    with (
        collector,
        RelayProcess(["-c", str(config), "--user", "nobody"], tmp_path / "run") as relay,
    ):
        wait_until(lambda: workers_up(state, 2), 30, message=relay.log_tail)
        assert ids(relay.pid)["Uid"] == ["0"] * 4
        for worker in stats(state)["workers"]:
            assert ids(worker["pid"])["Uid"] == [nobody] * 4
        relay_send(port, 2000, connections=8)
        collector.wait_for_count(2000, timeout=30)
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
    assert set(collector.seqs()) == set(range(2000))
    assert "Traceback" not in relay.log()
    shutil.rmtree(open_dir)


def test_a_worker_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    """A busy port: the worker says why in one line, the parent stops the
    other and exits 1, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config, _ = write_config(
            tmp_path, f'[input.tcp]\nurl = "tcp://127.0.0.1:{port}"\n[output.o]\nurl = "file:-"\n'
        )
        with RelayProcess(["-c", str(config)], tmp_path / "run") as relay:
            assert relay.wait_for_exit(timeout=30) == 1
    log = relay.log()
    assert f"error: input tcp: cannot listen on tcp://127.0.0.1:{port}" in log
    assert "before it was ready (its error is above); stopping the others" in log
    assert "Traceback" not in log


def test_workers_stop_and_save_when_the_parent_is_killed(tmp_path: Path) -> None:
    collector = RsyslogCollector(tmp_path)  # never started: all stays queued
    port = free_port()
    config, state = write_config(tmp_path, two_way_body(collector.tcp_port, port))
    with RelayProcess(["-c", str(config)], tmp_path / "run") as relay:
        wait_until(lambda: workers_up(state, 2), 30, message=relay.log_tail)
        pids = [w["pid"] for w in stats(state)["workers"]]
        relay_send(port, 5000, connections=8)
        wait_until(lambda: stats(state)["inputs"]["tcp"]["received"] == 5000, 30)
        relay.kill()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 30)
    log = relay.log()
    assert log.count("is gone; stopping") == 2
    assert log.count("will be delivered first at the next start") == 2
    assert "Traceback" not in log

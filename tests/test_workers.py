"""relay/workers.py: what each worker runs, and which old spools get a worker."""

from __future__ import annotations

from pathlib import Path

from relay import config
from relay.workers import leftover_workers, worker_config

TEXT = """\
[relay]
state_dir = "/var/lib/relay"
workers = 2
metrics = 9514
[input.t]
url = "tcp://127.0.0.1:514"
[input.u]
url = "udp://127.0.0.1:514"
[input.dev]
url = "unix:///run/relay/log"
[output.o]
url = "file:-"
"""


def test_each_worker_shares_the_network_inputs_and_has_its_own_state() -> None:
    cfg = config.loads(TEXT)
    first, second = worker_config(cfg, 0), worker_config(cfg, 1)
    assert [i.name for i in first.inputs] == ["t", "u", "dev"]
    assert [i.name for i in second.inputs] == ["t", "u"]  # unix sockets: worker 0 only
    assert all(i.reuse_port for i in (*first.inputs, *second.inputs))
    assert first.state_dir == Path("/var/lib/relay/worker-0")
    assert second.state_dir == Path("/var/lib/relay/worker-1")
    # The parent serves the metrics; a worker is a plain relay.
    assert (first.metrics, first.workers, second.metrics, second.workers) == (None, 1, None, 1)


def test_a_worker_past_the_count_only_delivers() -> None:
    assert worker_config(config.loads(TEXT), 2).inputs == ()


def test_old_spools_of_more_workers_are_found(tmp_path: Path) -> None:
    for name in ("worker-0", "worker-3", "worker-5", "worker-x"):
        (tmp_path / name / "spool" / "o").mkdir(parents=True)
    for name in ("worker-0", "worker-3", "worker-x"):
        (tmp_path / name / "spool" / "o" / "0000000000000001.seg").write_bytes(b"")
    # worker-5 has nothing queued; worker-0 is one of the two now.
    assert leftover_workers(tmp_path, 2) == [3]
    assert leftover_workers(tmp_path, 4) == []

"""RELP with fsync durability: what the sender saw acknowledged survives kill -9.

The sender is the relay's own RELP client codec over a real socket, so the
test knows exactly which messages were acknowledged when the relay was
SIGKILLed at a random moment. The relay's collector is down during that run,
so everything is in the spool; after a restart with the collector up, every
acknowledged message must arrive.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import trio

from tests.interop.peers import (
    RelayProcess,
    RsyslogCollector,
    free_port,
    send_until_killed,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("seed", range(3))
async def test_acknowledged_messages_survive_kill_9(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    fsync_interval = 0 if seed % 2 == 0 else 0.05  # per batch, and group commit
    collector = RsyslogCollector(tmp_path)  # not started in the first run
    port, state = free_port(), tmp_path / "state"
    config = tmp_path / "relay.toml"
    config.write_text(f"""\
[relay]
state_dir = "{state}"
[input.relp]
url = "relp://127.0.0.1:{port}"
[output.central]
url = "tcp://127.0.0.1:{collector.tcp_port}"
durability = "fsync"
fsync_interval = {fsync_interval}
retry_max = 0.5
""")
    acked: set[int] = set()
    first = RelayProcess(["-c", str(config)], tmp_path / "run1")
    with first.start():
        first.wait_for_tcp(port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_until_killed, port, 1_000_000, acked)
            # The moment of the crash is the point of the test: random, seeded.
            await trio.sleep(rng.uniform(0.3, 1.5))
            os.kill(first.pid, signal.SIGKILL)
        first.wait_for_exit(timeout=10)
    assert len(acked) > 1000, "too few acknowledged before the kill to mean anything"
    with collector:
        second = RelayProcess(["-c", str(config)], tmp_path / "run2")
        with second.start():
            second.wait_for_tcp(port)
            wait_until(
                lambda: acked <= set(collector.seqs()),
                60,
                message=lambda: (
                    f"{len(acked - set(collector.seqs()))} acknowledged "
                    f"messages of {len(acked)} not delivered"
                ),
            )
            assert second.terminate(timeout=30) == 0, second.log_tail()
    assert "Traceback" not in second.log()

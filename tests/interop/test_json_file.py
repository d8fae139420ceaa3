"""A file output with format = "json", end to end: numbered messages from
``relay send`` over TCP and from ``logger`` over a unix socket, each one object
with the enrichment, every seq exactly once."""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.interop.peers import RelayProcess, free_port, relay_send, require_program
from tests.waiting import wait_until

pytestmark = pytest.mark.interop

TCP_COUNT = 3000
LOGGER_COUNT = 300
SEQ = re.compile(r"seq=(\d+)")


def seq(record: dict[str, Any]) -> int:
    match = SEQ.search(record["message"])
    assert match is not None, record
    return int(match[1])


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def test_numbered_messages_arrive_as_json_with_enrichment(tmp_path: Path) -> None:
    logger = require_program("logger", "bsdutils")
    port = free_port()
    sock = tmp_path / "log.sock"
    out = tmp_path / "out.json"
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[input.net]\nurl = "tcp://127.0.0.1:{port}"\n'
        f'[input.dev]\nurl = "unix://{sock}"\n'
        f'[output.api]\nurl = "file://{out}"\nformat = "json"\n'
        'host_fields = ["name", "machine_id", "kernel"]\n'
        'labels = { env = "test", role = "agent" }\n'
        'parse_message = "app"\n'
    )
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port)
        wait_until(lambda: sock.exists(), 10, message=relay.log_tail)
        relay_send(port, TCP_COUNT)
        lines = "".join(f'{{"msg": "seq={n}", "n": {n}}}\n' for n in range(LOGGER_COUNT))
        result = subprocess.run(
            [logger, "-u", str(sock), "-t", "json-test", "--socket-errors=on"],
            input=lines,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        total = TCP_COUNT + LOGGER_COUNT
        wait_until(
            lambda: len(read_records(out)) >= total,
            60,
            message=lambda: f"{len(read_records(out))} of {total}; log:\n{relay.log_tail()}",
        )
        assert relay.terminate(timeout=30) == 0, relay.log_tail()
        assert "Traceback" not in relay.log()

    records = read_records(out)
    by_input: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        by_input[record["input"]].append(record)
    assert sorted(by_input) == ["dev", "net"]
    for name, count in (("net", TCP_COUNT), ("dev", LOGGER_COUNT)):
        seqs = collections.Counter(seq(r) for r in by_input[name])
        assert seqs == collections.Counter(range(count)), name  # each exactly once

    machine_id = Path("/etc/machine-id").read_text().strip()
    host = {"name": socket.gethostname(), "machine_id": machine_id, "kernel": os.uname().release}
    for record in records:
        assert record["host"] == host
        assert record["labels"] == {"env": "test", "role": "agent"}
        assert str(record["received"]).endswith("Z")
    assert {r["source"] for r in by_input["net"]} == {"127.0.0.1"}
    for record in by_input["dev"]:
        n = seq(record)
        assert record["app_name"] == "json-test"
        assert record["hostname"] == socket.gethostname()  # filled in as imuxsock does
        assert record["app"] == {"msg": f"seq={n}", "n": n}
        assert (record["uid"], record["gid"]) == (os.getuid(), os.getgid())  # the kernel's
        assert record["pid"] > 0
    assert not {"pid", "uid", "gid"} & by_input["net"][0].keys()

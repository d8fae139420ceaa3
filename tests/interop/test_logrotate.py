"""logrotate against a running relay: rename, SIGHUP, keep sending (issue 16, done-when 5).

``relay send`` sends numbered messages over TCP at a steady rate while the
real ``logrotate`` binary runs etc/relay.logrotate twice (its paths moved to
the test's directory, its postrotate signal sent to this relay's pid). The
relay writes a fixed file and dynamic ones (``{app_name}``); afterwards every
number is found exactly once across the current, the rotated and the
compressed files, and each rotation left a new file that received messages.
"""

from __future__ import annotations

import collections
import gzip
import re
import subprocess
from pathlib import Path

from tests.interop.peers import (
    LOOPBACK,
    REPO_ROOT,
    RelayProcess,
    RelaySendProcess,
    free_port,
    relay_send,
    require_program,
)
from tests.waiting import wait_until

COUNT = 20_000
# Sent once the relay reopened its files after the second rotation, so that
# both outputs write a new file after it: on a loaded machine the stream
# could be written in full before logrotate's second run (seen: apps/ with
# no app.log).
TAIL = 500
_SEQ = re.compile(rb"seq=(\d+)")


def _seqs(directory: Path, pattern: str = "**/*") -> collections.Counter[int]:
    """How often each number is in the files under ``directory`` (rotated ones too)."""
    seen: collections.Counter[int] = collections.Counter()
    for path in directory.glob(pattern):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            seen.update(int(n) for n in _SEQ.findall(data))
    return seen


def _written_since_rotation(logs: Path, wanted: int) -> bool:
    """Whether each output wrote ``wanted`` numbers, and wrote since the last
    rotation (its file is there again). Each on its own: on a loaded host one
    may lag behind the other (seen: apps/ not rotated a second time, as its
    output had not written since the first)."""
    written = min(len(_seqs(logs, "syslog*")), len(_seqs(logs, "apps/*")))
    return written >= wanted and (logs / "syslog").exists() and any(logs.glob("apps/*.log"))


def _snippet(tmp_path: Path, files: list[Path], pid: int) -> Path:
    """etc/relay.logrotate with our files and our pid."""
    text = (REPO_ROOT / "etc" / "relay.logrotate").read_text()
    _, _, rest = text.partition("\n/var/log/syslog\n")
    _, _, body = rest.partition("{")
    body = re.sub(r"systemctl kill [^\n]*", f"kill -HUP {pid}", body)
    snippet = tmp_path / "relay.logrotate"
    snippet.write_text("\n".join(str(f) for f in files) + "\n{" + body)
    snippet.chmod(0o644)
    return snippet


def _rotate(logrotate: str, snippet: Path, state: Path) -> None:
    result = subprocess.run(
        [logrotate, "-f", "-s", str(state), str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_logrotate_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    logrotate = require_program("logrotate", "logrotate")
    logs = tmp_path / "log"
    port = free_port("tcp")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[input.tcp]\nurl = "tcp://{LOOPBACK}:{port}"\n'
        f'[output.syslog]\nurl = "file://{logs}/syslog"\nformat = "traditional"\n'
        f'[output.hosts]\nurl = "file://{logs}/apps/{{app_name}}.log"\nformat = "rsyslog"\n'
        "flush_interval = 0.2\n"
    )
    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port)
        snippet = _snippet(tmp_path, [logs / "syslog", logs / "apps" / "*.log"], relay.pid)
        state = tmp_path / "logrotate.state"
        with RelaySendProcess(port, COUNT - TAIL, size=120, rate=5_000) as sender:
            for rotation in (1, 2):
                wanted = rotation * COUNT // 3
                wait_until(
                    lambda: _written_since_rotation(logs, wanted),  # noqa: B023 (this iteration)
                    60,
                    message=lambda: f"{len(_seqs(logs))} messages written",
                )
                _rotate(logrotate, snippet, state)
            sender.finish(timeout=60)
        for output in ("syslog", "hosts"):
            wait_until(
                lambda: relay.log().count(f"output {output}: closed its files") >= 2,  # noqa: B023
                10,
                message=relay.log_tail,
            )
        relay_send(port, TAIL, start=COUNT - TAIL, size=120)

        def complete() -> bool:
            seen = _seqs(logs)
            return len(seen) == COUNT and all(n == 2 for n in seen.values())

        wait_until(complete, 30, message=lambda: f"{len(_seqs(logs))} of {COUNT} numbers")
        assert relay.terminate() == 0, relay.log_tail()
    seen = _seqs(logs)
    # Each number once in syslog's generations and once in the app's: twice.
    assert set(seen) == set(range(COUNT))
    assert set(seen.values()) == {2}, collections.Counter(seen.values())
    names = sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*") if p.is_file())
    assert "syslog" in names and "syslog.1" in names and "syslog.2.gz" in names, names
    apps = [n for n in names if n.startswith("apps/")]
    assert len(apps) == 3, apps  # app.log, app.log.1, app.log.2.gz
    assert (logs / "syslog").stat().st_size > 0  # written after the last rotation
    assert (logs / "syslog.1").stat().st_size > 0

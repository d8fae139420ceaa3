"""The relay command as an operator runs it: exit codes and one-line errors."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

from tests.waiting import wait_until

RELAY = [sys.executable, "-m", "relay"]
ROOT = Path(__file__).resolve().parent.parent


def relay(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("run",) and "-c" not in args:  # as root: not /var/lib/relay
        args = ("run", "--state-dir", tempfile.mkdtemp(prefix="relay-test-"), *args[1:])
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("relay: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


@pytest.mark.parametrize(
    "command", [[], ["run"], ["check"], ["reload"], ["send"], ["import-rsyslog"]]
)
def test_help(command: list[str]) -> None:
    result = relay(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


# Each takes 0.02-0.1 s to import (httpx with httpcore, anyio and certifi;
# cryptography.x509): imported only where an HTTP input or output, a
# certificate or `relay import-rsyslog` needs them.
LAZY = ("httpx", "h11", "cryptography", "relay.importer")


def test_commands_load_without_optional_libraries() -> None:
    """What every `relay` command imports before it reads a config leaves out
    what only some configs or commands need, so start and `relay check` are quick."""
    code = f"import sys, relay.cli, relay.app; print(*[m for m in {LAZY!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == []


def test_check_valid_example() -> None:
    result = relay("check", "-c", str(ROOT / "etc" / "relay.toml"))
    assert result.returncode == 0, result.stderr
    assert ": ok:" in result.stdout


def test_check_loads_tls_files_one_line_each() -> None:
    result = relay("check", "-c", str(ROOT / "etc" / "relay-tls.toml"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        f"relay: error: {ROOT / 'etc' / 'relay-tls.toml'}:21: tls.site.cert: "
        "/etc/relay/tls/relay.pem: no such file" in result.stderr.splitlines()
    ), result.stderr


def test_check_lists_each_mistake(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[input.a]\nurl = "udp://0.0.0.0:514"\nrcvbufs = 1\n'
        '[output.b]\nurl = "tcp://collector"\nqueue_max_bytes = -1\n'
    )
    result = relay("check", "-c", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"relay: error: {path}:3: input.a.rcvbufs: unknown setting for udp:// inputs "
        "(known: url, max_message_size, oversize, rate_limit, rcvbuf)",
        f"relay: error: {path}:6: output.b.queue_max_bytes: must be between 1024 and "
        "1125899906842624 bytes, not -1",
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[input.a\n", "not valid TOML"),
        ('[input.a]\nurl = "tls://0.0.0.0:6514"\n[output.b]\nurl = "file:-"\n', "input.a"),
    ],
)
def test_run_with_bad_config_exits_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    assert_one_line_error(relay("run", "-c", str(path)), needle)


def test_run_with_missing_config(tmp_path: Path) -> None:
    assert_one_line_error(relay("run", "-c", str(tmp_path / "nope.toml")), "no such file")


def test_run_on_busy_port_exits_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = relay("run", "--input", f"tcp://127.0.0.1:{port}", "--output", "file:-")
    assert_one_line_error(result, f"tcp://127.0.0.1:{port}", "address already in use")


def test_run_with_unwritable_file_output(tmp_path: Path) -> None:
    # A missing directory is created (create_dirs); a file in its place is not.
    (tmp_path / "not-a-dir").write_text("")
    result = relay(
        "run", "--input", "udp://127.0.0.1:0", "--output", f"file://{tmp_path}/not-a-dir/out.log"
    )
    assert_one_line_error(result, "cannot open", "Not a directory")


def test_tls_listener_on_command_line_needs_a_config_file() -> None:
    assert_one_line_error(
        relay("run", "--input", "tls://127.0.0.1:6514", "--output", "file:-"),
        "--input",
        "needs a certificate",
        "[tls.NAME]",
    )


def test_bad_endpoint_on_command_line() -> None:
    assert_one_line_error(relay("run", "--output", "tcp://collector:0"), "--output", "needs a port")


def read_lines(stream: IO[bytes], count: int, timeout: float) -> list[bytes]:
    """The first ``count`` lines ``stream`` gives within ``timeout`` s; fails with
    what arrived if they do not, or if it closes first."""
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while data.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0 and selector.select(left), f"{count} lines not in {timeout} s: {data!r}"
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
    return data.splitlines(keepends=True)


def test_default_run_forwards_to_stdout_and_stops_cleanly(tmp_path: Path) -> None:
    """`relay run` as the README's first command: to standard output, on TCP and
    UDP (on free ports here, not the default 5514: test_config checks that)."""
    from tests.interop.peers import free_port, udp_port_bound, wait_for_tcp

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    udp, tcp = free_port("udp"), free_port("tcp")
    inputs = ["--input", f"udp://127.0.0.1:{udp}", "--input", f"tcp://127.0.0.1:{tcp}"]
    proc = subprocess.Popen(
        # As root the default state_dir is /var/lib/relay: keep tests out of it.
        [*RELAY, "run", "--state-dir", str(tmp_path / "state"), *inputs],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_for_tcp("127.0.0.1", tcp, timeout=20, process=proc)
        wait_until(lambda: udp_port_bound(udp), 5, message=f"UDP port {udp} not bound")
        sent = relay("send", f"tcp://127.0.0.1:{tcp}", "--count", "3")
        assert sent.returncode == 0, sent.stderr
        sent = relay("send", f"udp://127.0.0.1:{udp}", "--count", "2", "--start", "3")
        assert sent.returncode == 0, sent.stderr
        assert proc.stdout is not None
        lines = read_lines(proc.stdout, 5, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sorted(int(line.split(b"seq=")[1]) for line in lines) == [0, 1, 2, 3, 4]
    assert b"Traceback" not in err


# Every path the config holds, with a NUL in it (TOML's "\u0000"): the table it
# goes in, the key the error must name.
_NUL = "/tmp/relay\\u0000test"
NUL_PATHS = {
    "relay.state_dir": f'[relay]\nstate_dir = "{_NUL}"\n',
    "tls.t.cert": f'[tls.t]\ncert = "{_NUL}"\n',
    "tls.t.key": f'[tls.t]\ncert = "/etc/relay/tls/relay.pem"\nkey = "{_NUL}"\n',
    "tls.t.ca": f'[tls.t]\nca = "{_NUL}"\n',
    "input.nul.url": f'[input.nul]\nurl = "unix://{_NUL}"\n',
    "output.nul.url": f'[output.nul]\nurl = "file://{_NUL}"\n',
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("key", list(NUL_PATHS))
def test_nul_in_a_configured_path_is_one_line(tmp_path: Path, command: str, key: str) -> None:
    # The [tls.t] profile is in use, so that `relay run` would load its files.
    output = (
        'url = "tls://127.0.0.1:6514"\ntls = "t"' if key.startswith("tls.") else 'url = "file:-"'
    )
    path = tmp_path / "relay.toml"
    path.write_text(
        f'{NUL_PATHS[key]}[input.in]\nurl = "udp://127.0.0.1:0"\n[output.out]\n{output}\n'
    )
    args = ["--state-dir", str(tmp_path / "state")] if command == "run" else []
    result = relay(command, "-c", str(path), *args)
    assert result.returncode == 1
    line = 3 if key == "tls.t.key" else 2
    assert_one_line_error(result, f"{path}:{line}: {key}: ", "NUL")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--state-dir", "/tmp/" + "d" * 300, "NAME_MAX"),
        ("--state-dir", "/tmp/a\nb", "control characters"),
        ("--output", "file:///tmp/" + "f/" * 2100, "PATH_MAX"),
        ("--input", "unix:///tmp/" + "s" * 120, "sun_path"),
        ("--output", "tcp://bad..host:514", "not a host name"),
    ],
    ids=["long-name", "newline", "long-path", "long-socket-path", "bad-host"],
)
def test_bad_path_on_the_command_line_is_one_line(option: str, value: str, says: str) -> None:
    result = relay("run", option, value)
    assert result.returncode == 1
    assert_one_line_error(result, option, says)


@pytest.mark.parametrize("command", ["run", "check"])
def test_help_shows_which_ports_are_optional(command: str) -> None:
    from relay.config import DEFAULT_PORTS, INPUT_SCHEMES, OUTPUT_SCHEMES, PATH_SCHEMES

    result = relay(command, "--help")
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"([a-z+]+)://HOST(\[:PORT\]|:PORT)", result.stdout))
    assert shown == {
        (scheme, "[:PORT]" if scheme in DEFAULT_PORTS else ":PORT")
        for scheme in set(INPUT_SCHEMES + OUTPUT_SCHEMES) - set(PATH_SCHEMES)
    }


def test_a_busy_port_is_worded_alike_for_udp_and_tcp() -> None:
    reasons = {}
    for scheme, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
        with socket.socket(socket.AF_INET, kind) as busy:
            busy.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                busy.listen()
            url = f"{scheme}://127.0.0.1:{busy.getsockname()[1]}"
            result = relay("run", "--input", url, "--output", "file:-")
        assert_one_line_error(result, f"cannot listen on {url}: ")
        reasons[scheme] = result.stderr.strip().split(f"{url}: ")[-1]
    assert reasons["udp"] == reasons["tcp"], reasons
    assert reasons["tcp"].startswith("address already in use")


@pytest.mark.parametrize("command", ["check", "run"])
def test_missing_cert_and_key_are_two_lines_with_file_and_line(
    tmp_path: Path, command: str
) -> None:
    """`relay run` names a TLS file as `relay check` does (file, line, key), and
    both name a missing key beside a missing cert."""
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[tls.site]\ncert = "{tmp_path}/relay.pem"\nkey = "{tmp_path}/relay.key"\n'
        '[input.a]\nurl = "tls://127.0.0.1:0"\ntls = "site"\n'
        '[output.b]\nurl = "file:-"\n'
    )
    result = relay(command, "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"relay: error: {path}:4: tls.site.cert: {tmp_path}/relay.pem: no such file",
        f"relay: error: {path}:5: tls.site.key: {tmp_path}/relay.key: no such file",
    ]


def test_a_failed_start_leaves_no_new_directory(tmp_path: Path) -> None:
    """A start that fails (here: its port is taken, the last thing it checks)
    removes the state and spool directories it made, and keeps what was there."""
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes").write_text("the operator's")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for state in (tmp_path / "new" / "state", kept):
            path = tmp_path / "relay.toml"
            path.write_text(
                f'[relay]\nstate_dir = "{state}"\n'
                f'[input.a]\nurl = "tcp://127.0.0.1:{busy.getsockname()[1]}"\n'
                '[output.b]\nurl = "tcp://127.0.0.1:9"\n'  # a spool on disk
            )
            assert_one_line_error(relay("run", "-c", str(path)), "address already in use")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in kept.iterdir()) == ["lock", "notes"]


def test_import_rsyslog_exit_statuses(tmp_path: Path) -> None:
    """0 all converted, 1 something listed (the rest still printed), 2 unreadable."""
    full = tmp_path / "full.conf"
    full.write_text("$ModLoad imuxsock\n*.* @@127.0.0.1:6514\n")
    done = relay("import-rsyslog", str(full))
    assert (done.returncode, done.stderr) == (0, "")
    assert '[output.fwd-127-0-0-1]\nurl = "tcp://127.0.0.1:6514"' in done.stdout
    (tmp_path / "full.toml").write_text(done.stdout)
    assert relay("check", "-c", str(tmp_path / "full.toml")).returncode == 0

    partial = tmp_path / "partial.conf"
    partial.write_text("$ModLoad imuxsock\n*.emerg :omusrmsg:*\n*.* @@127.0.0.1:6514\n")
    listed = relay("import-rsyslog", str(partial))
    assert listed.returncode == 1
    assert (
        listed.stderr == f"{partial}:2: user-message actions (omusrmsg) have no relay equivalent\n"
    )
    assert "[output.fwd-127-0-0-1]" in listed.stdout

    for missing in (tmp_path / "nope.conf", tmp_path):
        result = relay("import-rsyslog", str(missing))
        assert result.returncode == 2
        assert_one_line_error(result, f"cannot read {missing}")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--user", "no-such-user-here"], "user no-such-user-here: no such user"),
        (["--user", "nobody", "--group", "no-such-group-here"], "no such group"),
        (["--group", "nogroup"], "--group needs --user"),
    ],
)
def test_run_as_an_unknown_user_is_one_line(args: list[str], says: str) -> None:
    result = relay("run", "--input", "tcp://127.0.0.1:0", *args)
    assert_one_line_error(result, says)


def test_reload_without_a_relay_is_one_line(tmp_path: Path) -> None:
    """No relay holds the state directory: status 1, one line; a stale pid in
    the lock file (a relay that was killed) is not signalled."""
    result = relay("reload", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert_one_line_error(result, f"no relay is running with state_dir {tmp_path}")
    (tmp_path / "lock").write_text(f"{os.getpid()}\n")  # this test's own pid: alive, no lock
    result = relay("reload", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert_one_line_error(result, "nothing holds the lock")


def test_reload_with_an_invalid_config_says_why(tmp_path: Path) -> None:
    conf = tmp_path / "relay.toml"
    conf.write_text(
        '[relay]\nstate_dir = "relative"\n[input.t]\nurl = "tcp://127.0.0.1:1"\n'
        '[output.f]\nurl = "file:-"\n'
    )
    result = relay("reload", "-c", str(conf))
    assert result.returncode == 2
    assert_one_line_error(result, f"{conf}:2: relay.state_dir:")

"""Selectors, differential against rsyslogd: the same messages, the same refusals.

One rsyslogd reads every selector of ``SELECTORS`` as a legacy config line
(``SELECTOR  FILE;tpl``), each writing its own file, and one ``relay run``
takes the same selectors as the ``filter`` of one file output each; both are
fed every PRI (24 facilities x 8 severities) plus one message with no PRI over
TCP, each message naming its PRI in the text. For each selector, the set of
messages in relay's file, in rsyslog's file and the set
``relay.policy.selector`` selects in-process must be the same. Every selector
in ``REFUSED`` makes ``rsyslogd -N1`` fail, our parser raise, and ``relay
check`` print one line naming the output's ``filter`` key and the position.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from relay.policy.selector import PRI_COUNT, SelectorError, parse_selector
from tests.interop.peers import (
    LOOPBACK,
    REPO_ROOT,
    RelayProcess,
    Rsyslog,
    free_port,
    require_program,
)
from tests.waiting import wait_until

SELECTORS = [
    "*.*",
    "*.info",
    "*.info;mail.none;authpriv.*",
    "*.info;mail.none;authpriv.none;cron.none",
    "kern.=warning",
    "*.!=debug",
    "*.*;*.!=debug",
    "mail.!info",
    "mail.*;mail.!info",
    "mail.!=info",
    "auth,authpriv.*",
    "*.none",
    "*.*;*.none",
    "mail,news.=crit",
    "local7.*;local7.!=debug",
    "local0.*",
    "local1.err;local2.=notice;local3.!=alert",
    "local4,local5,local6.warning",
    "security.*",
    "mail.warn",
    "mail.error",
    "*.panic",
    "*.emerg",
    "user.debug",
    "user.=notice",
    "*.=info",
    "daemon.=debug",
    "uucp,cron,ftp,ntp,console.*",
    "syslog.*;lpr.crit",
    "MAIL.INFO",
    "Local7.Err",
    "*.*;mail.none",
    "mail.none;mail.crit",
    "mail.!none",
    "mail.*;mail.!*",
    "*mail.info",
    "mail.3",
    "mail.=5",
    "mail.!6",
    "*.!0",
    "mail.16",
    "mail.12",
    "mail.=12",
    "*.255",
    "kern,16.*",
    "kern,3.*",
    "kern,24,160.err",
    "mail.info,news.crit",
    "mail,news;kern.info",
    "mail,,news.info",
    "mail.info;;news.info",
    "mail.3abc",
    "mark.*",
    "invld.*",
    "*.*;mark.none",
    "*.=debug;*.=info;*.=notice;*.=warn",
    "*.info;*.!err",
    "auth.*;*.!=info;authpriv.=info",
]

REFUSED = [
    "mail.bogus",
    "bogus.info",
    "mail,news",
    "mail.info;",
    "mail.info;kern",
    "audit.*",
    "local8.*",
    "mail.9",
    "*.=",
    "mail.!",
    "bsd_security.*",
    "mail.=!info",
    "mail.info.debug",
    "ma*il.info",
    "kern,24,184.err",
]

# What each peer writes for a message: rsyslog through the "seltest"
# template below, relay the message as it came (the file output's "lines").
_RSYSLOG_LINE = re.compile(rb"^\d+ seltest (?:pri=(\d+)|nopri)$")
_RELAY_LINE = re.compile(rb"^(?:<\d+>Jan  1 00:00:00 host )?seltest: (?:pri=(\d+)|nopri)$")
_NOPRI = -1
_ERROR = re.compile(
    r"^relay: error: (.+):(\d+): output\.(\w+)\.filter: (.*) at position (\d+) of (.*)$"
)


def _messages() -> bytes:
    lines = [b"<%d>Jan  1 00:00:00 host seltest: pri=%d" % (p, p) for p in range(PRI_COUNT)]
    lines.append(b"seltest: nopri")
    return b"".join(line + b"\n" for line in lines)


def _selected(path: Path, line: re.Pattern[bytes] = _RSYSLOG_LINE) -> set[int]:
    """The messages a peer wrote to ``path``: their PRI, or -1 for the one without."""
    got = set()
    for text in path.read_bytes().splitlines() if path.exists() else []:
        m = line.match(text)
        if m is None:  # rsyslogd's own messages (facility syslog)
            continue
        got.add(_NOPRI if m.group(1) is None else int(m.group(1)))
    return got


def _parsed(selector: str) -> set[int]:
    """What relay.policy.selector selects, in-process."""
    parsed = parse_selector(selector)
    got = {p for p in range(PRI_COUNT) if parsed.matches(b"<%d>x" % p)}
    if parsed.matches(b"seltest: nopri"):
        got.add(_NOPRI)
    return got


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quote, backslash and control characters escaped."""
    escaped = re.sub(r'["\\\x00-\x1f\x7f]', lambda m: f"\\u{ord(m.group()):04x}", text)
    return f'"{escaped}"'


def _send(port: int, data: bytes) -> None:
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.sendall(data)


def _through_rsyslog(tmp_path: Path, data: bytes) -> dict[str, set[int]]:
    """What rsyslogd writes for each selector, read once it has stopped."""
    port = free_port("tcp")
    out = tmp_path / "rsyslog-out"
    out.mkdir()
    lines = [f"{sel}  {out}/{n};seltest" for n, sel in enumerate(SELECTORS)]
    config = "\n".join(
        [
            'template(name="seltest" type="string" string="%pri% seltest %msg:2:$%\\n")',
            'module(load="imtcp")',
            f'input(type="imtcp" address="{LOOPBACK}" port="{port}")',
            *lines,
            f"*.*  {out}/all;seltest",
            "",
        ]
    )
    with Rsyslog(tmp_path / "rsyslog", config) as rsyslog:
        rsyslog.wait_for_tcp(port)
        _send(port, data)
        wait_until(
            lambda: len(_selected(out / "all")) == PRI_COUNT + 1,
            15,
            message=lambda: (
                f"rsyslog wrote {len(_selected(out / 'all'))} messages; log:\n{rsyslog.log_tail()}"
            ),
        )
    # Stopped: every omfile has flushed.
    return {sel: _selected(out / str(n)) for n, sel in enumerate(SELECTORS)}


def _relay_config(tmp_path: Path, port: int, selectors: list[str]) -> Path:
    """One TCP input and, per selector, a file output out/N.log with it as filter."""
    out = tmp_path / "relay-out"
    out.mkdir(exist_ok=True)
    outputs = [
        f"[output.s{n}]\n"
        f'url = "file://{out}/{n}.log"\n'
        f"filter = {_toml_string(sel)}\n"
        "disk_max_bytes = 0\n"
        for n, sel in enumerate(selectors)
    ]
    path = tmp_path / f"relay-{port}.toml"
    path.write_text(
        f'[relay]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[input.feed]\nurl = "tcp://{LOOPBACK}:{port}"\n\n' + "\n".join(outputs)
    )
    read = tomllib.loads(path.read_text())["output"]
    assert [read[f"s{n}"]["filter"] for n in range(len(selectors))] == selectors
    return path


def _relay_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )


def _through_relay(
    tmp_path: Path, data: bytes, expected: dict[str, set[int]]
) -> dict[str, set[int]]:
    """What ``relay run`` writes for each selector (its filter), read once it
    has stopped; waits until each file holds as many messages as ``expected``
    (rsyslog's), or 20 s, so that a difference shows as one, not as a timeout."""
    port = free_port("tcp")
    config = _relay_config(tmp_path, port, SELECTORS)
    checked = _relay_check(config)
    assert checked.returncode == 0, checked.stderr
    assert ": ok: 1 input" in checked.stdout
    out = tmp_path / "relay-out"

    def written() -> dict[str, set[int]]:
        return {sel: _selected(out / f"{n}.log", _RELAY_LINE) for n, sel in enumerate(SELECTORS)}

    with RelayProcess(["-c", str(config)], tmp_path / "relay") as relay:
        relay.wait_for_tcp(port)
        _send(port, data)
        with contextlib.suppress(AssertionError):  # compared below, selector by selector
            wait_until(
                lambda: all(len(got) == len(expected[s]) for s, got in written().items()), 20
            )
        assert relay.terminate() == 0, relay.log_tail()
        assert "Traceback" not in relay.log()
    # Each message at most once in each file (a set would hide a duplicate).
    lines = {n: (out / f"{n}.log").read_bytes().count(b"\n") for n in range(len(SELECTORS))}
    final = written()
    assert {n: len(final[sel]) for n, sel in enumerate(SELECTORS)} == lines
    return final


def test_selectors_select_what_rsyslog_selects(tmp_path: Path) -> None:
    data = _messages()
    theirs = _through_rsyslog(tmp_path, data)
    ours = _through_relay(tmp_path, data, theirs)
    differ = {}
    for sel in SELECTORS:
        parsed = _parsed(sel)
        only = {
            "rsyslogd, not relay run": theirs[sel] - ours[sel],
            "relay run, not rsyslogd": ours[sel] - theirs[sel],
            "rsyslogd, not parse_selector": theirs[sel] - parsed,
            "parse_selector, not rsyslogd": parsed - theirs[sel],
        }
        if any(only.values()):
            differ[sel] = {k: sorted(v) for k, v in only.items() if v}
    assert differ == {}, "PRIs (-1: no PRI) selected by one and not the other"


@pytest.mark.parametrize("selector", REFUSED)
def test_a_selector_rsyslog_refuses_is_refused(tmp_path: Path, selector: str) -> None:
    rsyslogd = require_program("rsyslogd", "rsyslog")
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{tmp_path}")\n{selector}  {tmp_path}/out\n')
    result = subprocess.run(
        [rsyslogd, "-N1", "-f", str(conf)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0, (result.stdout + result.stderr).decode(errors="replace")
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_relay_check_refuses_what_rsyslog_refuses(tmp_path: Path) -> None:
    """One config with every refused selector as a filter: ``relay check`` fails
    with one line for each, at the line of its ``filter`` key, naming the
    position in the string where the selector goes wrong."""
    config = _relay_config(tmp_path, free_port("tcp"), REFUSED)
    result = _relay_check(config)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = config.read_text().splitlines()
    found = {}
    for line in result.stderr.splitlines():
        m = _ERROR.match(line)
        assert m is not None, f"not a one-line error naming a filter's position: {line!r}"
        path, lineno, name, _, position, quoted = m.groups()
        assert path == str(config)
        assert lines[int(lineno) - 1].startswith("filter = "), (line, lines[int(lineno) - 1])
        found[name] = (int(position), quoted)
    expected = {}
    for n, sel in enumerate(REFUSED):
        with pytest.raises(SelectorError) as caught:
            parse_selector(sel)
        expected[f"s{n}"] = (caught.value.position + 1, repr(sel))
    assert found == expected

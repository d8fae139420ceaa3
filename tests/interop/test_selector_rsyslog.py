"""Selectors, differential against rsyslogd: the same PRIs, the same refusals.

One rsyslogd reads every selector of ``SELECTORS`` as a legacy config line
(``SELECTOR  FILE;tpl``), each writing its own file, and is fed every PRI
(24 facilities x 8 severities) plus one message with no PRI over imtcp; each
message names its PRI in the text. ``relay.policy.selector`` reads the same
selectors; for each, the set of messages it selects must equal the set in
rsyslog's file. Every selector in ``REFUSED`` makes ``rsyslogd -N1`` fail and
our parser raise.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from relay.policy.selector import PRI_COUNT, SelectorError, parse_selector
from tests.interop.peers import LOOPBACK, Rsyslog, free_port, require_program
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

_LINE = re.compile(rb"^(\d+) seltest (pri=(\d+)|nopri)$")
_NOPRI = -1


def _messages() -> bytes:
    lines = [b"<%d>Jan  1 00:00:00 host seltest: pri=%d" % (p, p) for p in range(PRI_COUNT)]
    lines.append(b"seltest: nopri")
    return b"".join(line + b"\n" for line in lines)


def _selected(path: Path) -> set[int]:
    """The messages rsyslog wrote: their PRI, or -1 for the one without."""
    got = set()
    for line in path.read_bytes().splitlines() if path.exists() else []:
        m = _LINE.match(line)
        if m is None:  # rsyslogd's own messages (facility syslog)
            continue
        got.add(_NOPRI if m.group(2) == b"nopri" else int(m.group(3)))
    return got


def _ours(selector: str) -> set[int]:
    parsed = parse_selector(selector)
    got = {p for p in range(PRI_COUNT) if parsed.matches(b"<%d>x" % p)}
    if parsed.matches(b"seltest: nopri"):
        got.add(_NOPRI)
    return got


def test_selectors_select_what_rsyslog_selects(tmp_path: Path) -> None:
    port = free_port("tcp")
    out = tmp_path / "out"
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
    data = _messages()
    with Rsyslog(tmp_path / "rsyslog", config) as rsyslog:
        rsyslog.wait_for_tcp(port)
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(data)
        wait_until(
            lambda: len(_selected(out / "all")) == PRI_COUNT + 1,
            15,
            message=lambda: (
                f"rsyslog wrote {len(_selected(out / 'all'))} messages; log:\n{rsyslog.log_tail()}"
            ),
        )
    # Stopped: every omfile has flushed.
    differ = {}
    for n, sel in enumerate(SELECTORS):
        theirs = _selected(out / str(n))
        ours = _ours(sel)
        if theirs != ours:
            differ[sel] = (sorted(theirs - ours), sorted(ours - theirs))
    assert differ == {}, "selector: (only rsyslog, only relay)"


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

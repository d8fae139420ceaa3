"""relay/importer: rsyslog snippets, legacy and RainerScript, and what each
becomes. Every conversion is also loaded by relay's own config loader
(helpers.check), so the output is a config `relay check` takes."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.importer import MappingFiles, UnreadableConfig, convert
from relay.importer.selectors import ALL, table
from tests.importer.helpers import MAIN, loaded, problems, run

REPO = Path(__file__).resolve().parents[2]

SEED = """\
$ModLoad imuxsock
$ModLoad imklog
$ActionQueueType LinkedList
$ActionQueueFileName srvrfwd
$ActionResumeRetryCount -1
$ActionQueueSaveOnShutdown on
*.* @@(o)10.0.5.50:6514
"""


def get(data: dict[str, Any], dotted: str) -> Any:
    found: Any = data
    for part in dotted.split("."):
        found = found[part]
    return found


def pris(selector: str) -> frozenset[int]:
    return frozenset(p for p, on in enumerate(table(selector)) if on)


# (id, rsyslog text, {dotted key: value}, [(line, words in the reason)])
CASES: list[tuple[str, str, dict[str, Any], list[tuple[int, str]]]] = [
    (
        "seed",
        SEED,
        {"input.devlog.url": "unix:///dev/log", "output.fwd-10-0-5-50.url": "tcp://10.0.5.50:6514"},
        [(2, "kernel log input not supported")],
    ),
    (
        "legacy-file-odd-spacing",
        "mail.info\t\t  -/var/log/mail.info   \n$ModLoad imuxsock\n",
        {
            "output.file-mail.url": "file:///var/log/mail.info",
            "output.file-mail.filter": "mail.info",
            "output.file-mail.format": "rsyslog",
        },
        [],
    ),
    (
        "udp-default-port-and-ipv6",
        "$ModLoad imuxsock\n*.* @10.1.2.3\nkern.* @@[::1]:1514\n",
        {
            "output.fwd-10-1-2-3.url": "udp://10.1.2.3:514",
            "output.fwd-1.url": "tcp://[::1]:1514",
            "output.fwd-1.filter": "kern.*",
        },
        [],
    ),
    (
        "user-messages",
        "$ModLoad imuxsock\n*.emerg :omusrmsg:*\n*.alert root,admin\n*.crit *\n*.* /var/log/all\n",
        {"output.file-all.url": "file:///var/log/all"},
        [(2, "user-message actions"), (3, "user-message actions"), (4, "user-message")],
    ),
    (
        "pipe-and-program",
        "$ModLoad imuxsock\n*.* |/dev/xconsole\n*.* ^/bin/x\n*.* /var/log/all\n",
        {},
        [(2, "named-pipe"), (3, "program actions")],
    ),
    (
        "legacy-relp-and-forward-options",
        "$ModLoad imuxsock\n*.* :omrelp:relp.example.net:2514\n*.* @@(z9)h:1\n",
        {"output.relp-relp-example-net.url": "relp://relp.example.net:2514"},
        [(3, "compressed forwarding")],
    ),
    (
        "continuation-lines-and-comments",
        "# a comment\n$ModLoad imuxsock # trailing\n/* block\n comment */\n"
        "auth,authpriv.* \\\n    /var/log/auth.log # trailing comment\n",
        {
            "output.file-auth.url": "file:///var/log/auth.log",
            "output.file-auth.filter": "auth,authpriv.*",
        },
        [],
    ),
    (
        "ampersand-continuation",
        "$ModLoad imuxsock\nauth.* /var/log/a.log\n& @@collector:514\n&\t~\n",
        {"output.fwd-collector.filter": "auth.*", "output.file-a.filter": "auth.*"},
        [],
    ),
    (
        "rainerscript-inputs",
        'module(load="imudp")\ninput(type="imudp" port="514")\n'
        'module(load="imtcp" MaxSessions="200")\n'
        'input(type="imtcp" port=["514", "10514"] address="127.0.0.1")\n'
        'module(load="imrelp")\ninput(type="imrelp" port="2514")\n*.* /var/log/all\n',
        {
            "input.udp-514.url": "udp://0.0.0.0:514",
            "input.tcp-514.url": "tcp://127.0.0.1:514",
            "input.tcp-10514.url": "tcp://127.0.0.1:10514",
            "input.tcp-10514.max_connections": 200,
            "input.relp-2514.url": "relp://0.0.0.0:2514",
        },
        [],
    ),
    (
        "legacy-inputs",
        "$ModLoad imudp\n$UDPServerAddress 127.0.0.1\n$UDPServerRun 514\n"
        "$ModLoad imtcp.so\n$InputTCPMaxSessions 50\n$InputTCPServerRun 1514\n*.* /var/log/x\n",
        {
            "input.udp-514.url": "udp://127.0.0.1:514",
            "input.tcp-1514.url": "tcp://0.0.0.0:1514",
            "input.tcp-1514.max_connections": 50,
        },
        [],
    ),
    (
        "rainerscript-forward-with-queue",
        '$ModLoad imuxsock\naction(type="omfwd" target="10.0.0.1" port="6514" protocol="tcp"\n'
        '       TCP_Framing="octet-counted" queue.type="LinkedList" queue.filename="q"\n'
        '       queue.maxDiskSpace="1g" queue.size="50000" queue.saveOnShutdown="on"\n'
        '       action.resumeRetryCount="-1" queue.timeoutEnqueue="0")\n',
        {
            "output.fwd-10-0-0-1.url": "tcp://10.0.0.1:6514",
            "output.fwd-10-0-0-1.disk_max_bytes": "1 GiB",
            "output.fwd-10-0-0-1.queue_max_messages": 50000,
            "output.fwd-10-0-0-1.on_full": "drop_newest",
        },
        [],
    ),
    (
        "legacy-queue-applies-to-the-next-action-only",
        "$ModLoad imuxsock\n$ActionQueueType Disk\n$ActionQueueMaxDiskSpace 500M\n"
        "$ActionQueueSyncQueueFiles on\n*.* @@a:514\n*.* @@b:514\n",
        {
            "output.fwd-a.disk_max_bytes": 500_000_000,
            "output.fwd-a.durability": "fsync",
            "output.fwd-b": {"url": "tcp://b:514"},
        },
        [],
    ),
    (
        "omrelp-window-and-action-name",
        '$ModLoad imuxsock\naction(type="omrelp" name="central" target="c.example" port="2514"'
        ' windowSize="4096")\n',
        {"output.central.url": "relp://c.example:2514", "output.central.window": 4096},
        [],
    ),
    (
        "file-formats",
        "$ModLoad imuxsock\n*.* /var/log/a;RSYSLOG_TraditionalFileFormat\n"
        '*.* action(type="omfile" file="/var/log/b" template="RSYSLOG_SyslogProtocol23Format")\n'
        '$template copy,"%TIMESTAMP% %HOSTNAME% %syslogtag%%msg:::sp-if-no-1st-sp%'
        '%msg:::drop-last-lf%\\n"\n*.* /var/log/c;copy\n'
        "$ActionFileDefaultTemplate RSYSLOG_TraditionalFileFormat\n*.* /var/log/d\n",
        {
            "output.file-a.format": "traditional",
            "output.file-b.format": "rfc5424",
            "output.file-c.format": "traditional",
            "output.file-d.format": "traditional",
        },
        [],
    ),
    (
        "custom-file-template",
        '$ModLoad imuxsock\ntemplate(name="mine" type="string" string="%msg% %$!pid%\\n")\n'
        '*.* action(type="omfile" file="/var/log/m" template="mine")\n',
        {"output.file-m.format": "rsyslog"},
        [(3, 'template "mine"')],
    ),
    (
        "dynafile",
        'module(load="imtcp")\ninput(type="imtcp" port="514")\n'
        'template(name="per-host" type="string"\n'
        '  string="/var/log/hosts/%HOSTNAME:::secpath-replace%/%$YEAR%.log")\n'
        'template(name="list" type="list") {\n  constant(value="/var/log/app/")\n'
        '  property(name="programname")\n  constant(value=".log")\n}\n'
        '*.* action(type="omfile" dynaFile="per-host")\n*.* ?list\n'
        'template(name="bad" type="string" string="/var/log/%fromhost%/x")\n'
        '*.* action(type="omfile" dynaFile="bad")\n',
        {
            "output.file-per-host.url": "file:///var/log/hosts/{hostname}/{year}.log",
            "output.file-list.url": "file:///var/log/app/{app_name}.log",
        },
        [(13, "%fromhost%")],
    ),
    (
        "modes-owner-group-after-the-directives",
        "$ModLoad imuxsock\n*.* /var/log/before\n$FileOwner nobody\n$FileGroup adm\n"
        "$FileCreateMode 0666\n$DirCreateMode 0777\n$Umask 0027\n*.* -/var/log/after\n",
        {
            "output.file-before": {"url": "file:///var/log/before", "format": "rsyslog"},
            "output.file-after.owner": "nobody",
            "output.file-after.group": "adm",
            "output.file-after.file_mode": "0640",
            "output.file-after.dir_mode": "0750",
        },
        [],
    ),
    (
        "omfile-parameters",
        '$ModLoad imuxsock\naction(type="omfile" file="/var/log/p" fileCreateMode="0600"'
        ' fileOwner="root" sync="on" dirOwner="other")\n',
        {"output.file-p.file_mode": "0600", "output.file-p.fsync": True},
        [(2, "directory owner")],
    ),
    (
        "sync",
        "$ModLoad imuxsock\n$ActionFileEnableSync on\n*.* /var/log/synced\n*.* -/var/log/not\n",
        {
            "output.file-synced.fsync": True,
            "output.file-not": {"url": "file:///var/log/not", "format": "rsyslog"},
        },
        [],
    ),
    (
        "includes",
        "$ModLoad imuxsock\n$IncludeConfig /etc/rsyslog.d/*.conf\n"
        'include(file="/etc/missing.conf" mode="optional")\n'
        'include(file="/etc/absent.conf")\ninclude(text="*.* /var/log/inline")\n',
        {
            "output.file-inline.url": "file:///var/log/inline",
        },
        [(4, "cannot read included /etc/absent.conf")],
    ),
    (
        "imuxsock-parameters",
        'module(load="imuxsock" SysSock.Annotate="on" SysSock.RateLimit.Interval="5"\n'
        '       SysSock.RateLimit.Burst="500" SysSock.RateLimit.Severity="3")\n'
        'input(type="imuxsock" Socket="/var/lib/named/dev/log" HostName="named")\n'
        'global(localHostname="box")\n*.* /var/log/x\n',
        {
            "input.devlog.annotate": True,
            "input.devlog.hostname": "box",
            "input.devlog.rate_limit": {
                "rate": 100.0,
                "burst": 500,
                "key": "pid",
                "exempt_severity": "crit",
            },
            "input.unix-log.url": "unix:///var/lib/named/dev/log",
            "input.unix-log.hostname": "named",
        },
        [],
    ),
    (
        "syssock-off-and-journal",
        'module(load="imuxsock" SysSock.Use="off")\nmodule(load="imjournal" StateFile="s")\n'
        "*.* /var/log/x\n",
        {"input": {"journal": {"url": "unix:///run/systemd/journal/syslog"}}},
        [],
    ),
    (
        "legacy-unix-sockets",
        "$ModLoad imuxsock\n$SystemLogSocketName /run/systemd/journal/syslog\n"
        "$InputUnixListenSocketHostName jail\n$AddUnixListenSocket /jail/dev/log\n*.* /var/log/x\n",
        {
            "input.journal.url": "unix:///run/systemd/journal/syslog",
            "input.unix-log.hostname": "jail",
        },
        [],
    ),
    (
        "rulesets",
        'module(load="imtcp")\ninput(type="imtcp" port="10514" ruleset="remote")\n'
        'ruleset(name="remote") {\n  action(type="omfile" file="/var/log/remote")\n}\n'
        "$ModLoad imuxsock\n*.* /var/log/local\n"
        'ruleset(name="orphan") { action(type="omfile" file="/var/log/none") }\n',
        {
            "output.file-remote.inputs": ["tcp-10514"],
            "output.file-local.inputs": ["devlog"],
        },
        [(8, 'no input is bound to ruleset "orphan"')],
    ),
    (
        "if-then-is-listed-with-its-actions",
        '$ModLoad imuxsock\nif $programname == "x" then {\n'
        '  action(type="omfile" file="/var/log/x")\n'
        '} else {\n  stop\n}\nif $msg contains "y" then /var/log/y\n*.* /var/log/z\n',
        {"output": {"file-z": {"url": "file:///var/log/z", "format": "rsyslog"}}},
        [(2, "if ... then"), (7, "if ... then")],
    ),
    (
        "property-filters",
        '$ModLoad imuxsock\n:msg, contains, "error" /var/log/errors\n'
        ':programname, isequal, "sshd" /var/log/sshd\n'
        ':fromhost-ip, isequal, "10.0.0.9" /var/log/nine\n'
        ':msg, regex, "a.*b" /var/log/re\n:msg, contains, "x"\n',
        {
            "output.file-errors.match.contains": "error",
            "output.file-sshd.match.app_name": "sshd",
            "output.file-nine.match.source": "10.0.0.9",
        },
        [(5, "property filter"), (6, "without an action")],
    ),
    (
        "work-directory-and-globals",
        'global(workDirectory="/var/spool/rsyslog" maxMessageSize="64k")\n$ModLoad imuxsock\n'
        "*.* /var/log/x\n",
        {"relay.state_dir": "/var/spool/rsyslog", "input.devlog.max_message_size": 65536},
        [],
    ),
    (
        "unsupported-modules-and-directives",
        '$ModLoad imuxsock\nmodule(load="immark")\nmodule(load="ommail")\nmodule(load="mmanon")\n'
        "$RepeatedMsgReduction on\n$PrivDropToUser syslog\n$NoSuchThing 1\n*.* /var/log/x\n",
        {},
        [
            (2, "mark messages"),
            (3, "module ommail"),
            (4, "mmanon"),
            (5, "repeated-message"),
            (6, "User="),
            (7, "$nosuchthing"),
        ],
    ),
    (
        "bad-selector",
        "$ModLoad imuxsock\nmail.bogus /var/log/m\n& /var/log/n\n*.* /var/log/x\n",
        {},
        [(2, "unknown priority name"), (3, "continues no converted rule")],
    ),
    (
        "no-inputs-no-outputs",
        "# nothing\n",
        {},
        [(1, "no input"), (1, "no output")],
    ),
    (
        "forward-template",
        "$ModLoad imuxsock\n*.* @@c:514;RSYSLOG_ForwardFormat\n*.* @@d:514;custom\n",
        {"output.fwd-c.url": "tcp://c:514", "output.fwd-d.url": "tcp://d:514"},
        [(3, 'template "custom"')],
    ),
    (
        "unterminated-things",
        '$ModLoad imuxsock\naction(type="omfile" file="/var/log/x"\n*.* /var/log/y\n'
        'template(name="t" type="string" string="abc\n',
        {"output.file-y.url": "file:///var/log/y"},
        [(2, "in a parameter list"), (4, "a string is not closed")],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected", "listed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_snippet(text: str, expected: dict[str, Any], listed: list[tuple[int, str]]) -> None:
    conversion = run(text)
    found = problems(conversion)
    assert len(found) == len(listed), found
    for (source, line, why), (want_line, words) in zip(found, listed, strict=True):
        assert (source, line) == (MAIN, want_line), found
        assert words in why, found
    if any("no input" in why or "no output" in why for _, _, why in found):
        return
    data = loaded(conversion)
    for dotted, value in expected.items():
        assert get(data, dotted) == value, (dotted, conversion.toml)


def test_unterminated_statement_does_not_swallow_the_file() -> None:
    """A parenthesis never closed is one problem; the lines after it still count."""
    conversion = run('$ModLoad imuxsock\naction(type="omfile" file="/x"\n*.* /var/log/y\n')
    assert [line for _, line, _ in problems(conversion)] == [2]
    assert "file:///var/log/y" in conversion.toml


def test_every_table_names_its_file_and_line() -> None:
    conversion = run(SEED)
    lines = conversion.toml.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert headers
    for index in headers:
        assert lines[index - 1].startswith(f"# from {MAIN}:") or lines[index - 2].startswith(
            f"# from {MAIN}:"
        ), conversion.toml
    assert f"# from {MAIN}:7: *.* @@(o)10.0.5.50:6514" in lines


def test_stop_is_folded_into_the_filters_after_it() -> None:
    conversion = run(
        "$ModLoad imuxsock\nmail.* /var/log/mail\nmail.* stop\n"
        "*.info;auth.none /var/log/rest\n& @@c:514\nkern.* ~\n*.* /var/log/last\n"
    )
    data = loaded(conversion)
    outputs = data["output"]
    assert outputs["file-mail"]["filter"] == "mail.*"
    rest = pris("*.info;auth.none") - pris("mail.*")
    assert pris(outputs["file-rest"]["filter"]) == rest
    assert pris(outputs["fwd-c"]["filter"]) == rest
    assert pris(outputs["file-last"]["filter"]) == pris("*.*") - pris("mail.*") - pris("kern.*")
    assert problems(conversion) == []


def test_stop_inside_a_ruleset_stays_there() -> None:
    conversion = run(
        'module(load="imudp")\ninput(type="imudp" port="514" ruleset="r")\n'
        'ruleset(name="r") {\n *.* stop\n}\n$ModLoad imuxsock\n*.* /var/log/all\n'
    )
    assert "filter" not in loaded(conversion)["output"]["file-all"]


def test_stop_after_a_property_filter_is_listed() -> None:
    conversion = run('$ModLoad imuxsock\n:msg, contains, "noise" stop\n*.* /var/log/x\n')
    assert [
        (line, "stop after a property filter" in why) for _, line, why in problems(conversion)
    ] == [(2, True)]


def test_include_globs_are_read_sorted() -> None:
    conversion = run(
        "$ModLoad imuxsock\n$IncludeConfig /etc/rsyslog.d/*.conf\n$IncludeConfig /etc/dir/\n",
        {
            "/etc/rsyslog.d/20-b.conf": "*.* /var/log/b\n",
            "/etc/rsyslog.d/10-a.conf": "*.* /var/log/a\nbad line here\n",
            "/etc/rsyslog.d/ignored.txt": "*.* /var/log/no\n",
            "/etc/dir/x": "*.* /var/log/d\n",
        },
    )
    outputs = list(loaded(conversion)["output"])
    assert outputs == ["file-a", "file-b", "file-d"]
    assert [(s, n) for s, n, _ in problems(conversion)] == [("/etc/rsyslog.d/10-a.conf", 2)]
    assert "# from /etc/rsyslog.d/20-b.conf:1:" in conversion.toml


def test_an_include_loop_ends() -> None:
    conversion = run('$ModLoad imuxsock\ninclude(file="/etc/rsyslog.conf")\n*.* /var/log/x\n')
    assert any("nested more than" in why for _, _, why in problems(conversion))


def test_names_are_unique_and_readable() -> None:
    conversion = run("$ModLoad imuxsock\n*.* /var/log/syslog\n*.* /srv/syslog\n*.* @@h.example:1\n")
    assert list(loaded(conversion)["output"]) == ["file-syslog", "file-syslog-2", "fwd-h-example"]


def test_an_unreadable_main_file_raises_one_error() -> None:
    with pytest.raises(UnreadableConfig, match="cannot read /nope: no such file"):
        convert("/nope", MappingFiles({}))


def test_debian_12_stock_config() -> None:
    """The rsyslog package's own /etc/rsyslog.conf (Debian 12), as shipped."""
    text = Path("/etc/rsyslog.conf").read_text(encoding="utf-8")
    conversion = run(text)
    line_of = {line.strip(): n for n, line in enumerate(text.splitlines(), 1)}
    listed = [(line, why) for _, line, why in problems(conversion)]
    assert listed == [
        (
            line_of['module(load="imklog")   # provides kernel logging support'],
            "kernel log input not supported (imklog)",
        ),
        (
            line_of["*.emerg\t\t\t\t:omusrmsg:*"],
            "user-message actions (omusrmsg) have no relay equivalent",
        ),
    ]
    data = loaded(conversion)
    assert data["relay"] == {"state_dir": "/var/spool/rsyslog"}
    assert data["input"] == {"devlog": {"url": "unix:///dev/log"}}
    files = {name: (t["url"], t.get("filter")) for name, t in data["output"].items()}
    assert files == {
        "file-syslog": ("file:///var/log/syslog", "*.*;auth,authpriv.none"),
        "file-auth": ("file:///var/log/auth.log", "auth,authpriv.*"),
        "file-cron": ("file:///var/log/cron.log", "cron.*"),
        "file-kern": ("file:///var/log/kern.log", "kern.*"),
        "file-mail": ("file:///var/log/mail.log", "mail.*"),
        "file-user": ("file:///var/log/user.log", "user.*"),
    }
    for output in data["output"].values():
        assert (output["format"], output["owner"], output["group"]) == ("rsyslog", "root", "adm")
        assert (output["file_mode"], output["dir_mode"]) == ("0640", "0755")
        assert (
            "fsync" not in output
        )  # "-" or not, rsyslog 8 does not sync without $ActionFileEnableSync


_FRAGMENTS = [
    "$ModLoad imuxsock",
    "$ActionQueueType Disk",
    "$IncludeConfig /etc/rsyslog.conf",
    '$template t,"%msg%"',
    "*.*",
    "mail.info;auth.none",
    ':msg, contains, "x"',
    "&",
    "~",
    "stop",
    "@@(o)h:1",
    "@h",
    "-/var/log/x",
    "?t",
    ":omusrmsg:*",
    "action(",
    'type="omfile"',
    'file="/x"',
    'dynaFile="t"',
    'type="omfwd"',
    'target="h"',
    ")",
    "(",
    "{",
    "}",
    '"',
    "'",
    "#",
    "/*",
    "*/",
    "\\",
    "\n",
    " ",
    "\t",
    "if",
    "then",
    "else",
    'ruleset(name="r")',
    'input(type="imudp" port="514" ruleset="r")',
    "template(",
    'include(text="*.* /y")',
    'module(load="imtcp")',
    "[",
    "]",
    ",",
    "=",
    "$",
    'queue.size="x"',
    'port="99999"',
]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_converts_without_raising(text: str) -> None:
    _never_raises(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(" ".join))
def test_any_statements_convert_without_raising(text: str) -> None:
    _never_raises(text)


def _never_raises(text: str) -> None:
    conversion = convert(MAIN, MappingFiles({MAIN: text}))
    for problem in conversion.problems:
        assert problem.line >= 1 and "\n" not in problem.why
    data = tomllib.loads(conversion.toml)
    if not conversion.problems:
        loaded(conversion)
    assert set(data) <= {"relay", "input", "output"}


def test_selectors_table_covers_all() -> None:
    assert table("*.*") == ALL


def test_etc_relay_local_holds_what_debians_config_converts_to() -> None:
    """etc/relay-local.toml's file outputs are the conversion of Debian 12's
    stock /etc/rsyslog.conf (this machine's, shipped by the rsyslog package)."""
    stock = Path("/etc/rsyslog.conf")
    if not stock.exists():
        pytest.fail(f"{stock} is missing: apt-get install --reinstall rsyslog")
    text = stock.read_text(encoding="utf-8")
    converted = tomllib.loads(convert(str(stock), MappingFiles({str(stock): text})).toml)["output"]
    example = tomllib.loads((REPO / "etc" / "relay-local.toml").read_text())["output"]
    files = {name: out for name, out in example.items() if out["url"].startswith("file:")}
    assert set(files) == set(converted)
    for name, out in converted.items():
        assert {key: files[name][key] for key in out} == out, name

"""relay/config.py: TOML and endpoint URLs -> validated config."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from relay import config
from relay.config import Endpoint, parse_endpoint
from relay.errors import ConfigError, ConfigErrors
from relay.policy.redact import Redactor
from relay.protocol import relp
from relay.protocol.framing import Framing, OversizePolicy
from relay.spool.settings import Durability, OnFull
from relay.tls.context import load_files
from relay.tls.profile import TlsProfile
from tests.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("url", "role", "expected"),
    [
        ("udp://0.0.0.0:514", "input", Endpoint("udp", "0.0.0.0", 514)),
        ("udp://0.0.0.0", "input", Endpoint("udp", "0.0.0.0", 514)),
        ("tcp://[::1]:5514", "input", Endpoint("tcp", "::1", 5514)),
        (
            "TCP://collector.example.net:6000",
            "output",
            Endpoint("tcp", "collector.example.net", 6000),
        ),
        ("unix:///dev/log", "input", Endpoint("unix", path="/dev/log")),
        ("file:///var/log/all.log", "output", Endpoint("file", path="/var/log/all.log")),
        ("file:-", "output", Endpoint("file", path="-")),
    ],
)
def test_parse_endpoint(url: str, role: str, expected: Endpoint) -> None:
    assert parse_endpoint(url, role) == expected


@pytest.mark.parametrize(
    ("url", "role", "says"),
    [
        ("udpp://0.0.0.0:514", "input", "unknown input scheme"),
        ("file:///x", "input", "unknown input scheme"),
        ("tls://host:6514", "send", "not supported by relay send in this version yet"),
        ("relp+tls://host", "output", "has no default port"),
        ("relp://host:2514", "send", "not supported by relay send in this version yet"),
        ("file:///x", "send", "unknown scheme 'file'"),
        ("state_dir", "input", "not an endpoint URL"),
        ("tcp://host:99999", "output", "port must be a number"),
        ("tcp://host:abc", "output", "port must be a number"),
        ("tcp://:514", "output", "names no host"),
        ("tcp://host:0", "output", "needs a port"),
        ("file://relative", "output", "must be absolute"),
        ("0.0.0.0:514", "input", "unknown input scheme"),
        ("tcp://host:514/path", "output", "unexpected path"),
    ],
)
def test_parse_endpoint_errors(url: str, role: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_endpoint(url, role)


def test_full_config() -> None:
    cfg = config.loads(
        textwrap.dedent("""
        [relay]
        state_dir = "/tmp/relay-state"
        stop_timeout = 12

        [input.lan-udp]
        url = "udp://0.0.0.0:514"
        rcvbuf = "16 MiB"

        [input.lan-tcp]
        url = "tcp://0.0.0.0:514"
        max_connections = 100
        framing = "octet-counting"
        max_message_size = "8k"
        oversize = "drop"

        [output.central]
        url = "tcp://collector.example.net:514"
        queue_max_bytes = "1 GiB"
        """)
    )
    assert [i.name for i in cfg.inputs] == ["lan-udp", "lan-tcp"]
    udp, tcp = cfg.inputs
    assert udp.rcvbuf == 16 * 1024 * 1024
    assert (tcp.max_connections, tcp.framing, tcp.max_message_size, tcp.oversize) == (
        100,
        Framing.OCTET_COUNTING,
        8192,
        OversizePolicy.DROP,
    )
    assert cfg.outputs[0].queue_max_bytes == 1 << 30
    assert cfg.stop_timeout == 12.0
    assert str(cfg.state_dir) == "/tmp/relay-state"


BROKEN = """\
[relay]
stop_timeout = -1
colour = "blue"

[input.udp]
url = "udpp://0.0.0.0:514"

[input.tcp]
url = "tcp://0.0.0.0:514"
max_conections = 10

[output.central]
url = "tcp://collector:514"
queue_max_bytes = "lots"
"""


def test_every_mistake_is_reported_with_key_and_line() -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(BROKEN, source="relay.toml")
    found = {(e.key, e.line) for e in caught.value.errors}
    assert found == {
        ("relay.stop_timeout", 2),
        ("relay.colour", 3),
        ("input.udp.url", 6),
        ("input.tcp.max_conections", 10),
        ("output.central.queue_max_bytes", 14),
    }
    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("relay.toml:2: relay.stop_timeout: ")


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads('[input.x]\nurl = "udp://0.0.0.0:514\n', source="f.toml")
    (error,) = caught.value.errors
    assert error.line == 2
    assert "not valid TOML" in str(error)


def test_no_inputs_or_outputs() -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads("")
    assert {e.key for e in caught.value.errors} == {"input", "output"}


def test_setting_of_another_scheme_is_unknown() -> None:
    with pytest.raises(ConfigErrors, match="unknown setting for udp:// inputs"):
        config.loads(
            '[input.u]\nurl = "udp://0.0.0.0:514"\nmax_connections = 5\n'
            '[output.o]\nurl = "file:-"\n'
        )


def test_command_line_endpoints_replace_defaults_without_a_file() -> None:
    cfg = config.with_endpoints(config.default_config(), [], ["tcp://127.0.0.1:6000"], replace=True)
    assert [o.endpoint.url for o in cfg.outputs] == ["tcp://127.0.0.1:6000"]
    assert [i.endpoint.url for i in cfg.inputs] == ["udp://127.0.0.1:5514", "tcp://127.0.0.1:5514"]


def test_default_config_needs_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    cfg = config.default_config()
    assert str(cfg.state_dir) == "/home/u/.state/relay"
    assert all(i.endpoint.host == "127.0.0.1" and i.endpoint.port == 5514 for i in cfg.inputs)
    assert cfg.outputs[0].endpoint == Endpoint("file", path="-")


def test_default_state_dir_under_systemd_is_its_state_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 998)  # User=relay
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/relay:/var/lib/other")
    assert config.default_state_dir() == Path("/var/lib/relay")
    monkeypatch.setenv("STATE_DIRECTORY", "relative")  # not systemd's: ignored
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert config.default_state_dir() == Path("/home/u/.state/relay")


# relay-tls.toml names certificates under /etc/relay/tls/, which `relay check`
# loads: it is checked below with a copy pointing at minted certificates.
@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "etc").glob("*.toml") if p.name != "relay-tls.toml"),
    ids=lambda p: p.name,
)
def test_example_configs_are_valid(path: Path) -> None:
    config.load(path)


def test_spool_and_targets_settings() -> None:
    cfg = config.loads(
        textwrap.dedent("""
        [input.t]
        url = "tcp://0.0.0.0:514"
        [output.central]
        targets = ["tcp://a.example.net:514", "tcp://b.example.net:6514"]
        mode = "loadbalance"
        disk_max_bytes = "2 GiB"
        disk_reserve = "100 MiB"
        on_full = "drop_oldest"
        durability = "fsync"
        fsync_interval = 0.5
        """)
    )
    (out,) = cfg.outputs
    assert out.disk_reserve == 100 << 20
    assert [t.url for t in out.all_targets] == [
        "tcp://a.example.net:514",
        "tcp://b.example.net:6514",
    ]
    assert out.endpoint == out.all_targets[0]
    assert out.mode is config.TargetMode.LOADBALANCE
    assert (out.disk_max_bytes, out.on_full, out.durability, out.fsync_interval) == (
        2 << 30,
        OnFull.DROP_OLDEST,
        Durability.FSYNC,
        0.5,
    )


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('url = "tcp://a:514"\ntargets = ["tcp://b:514"]', "targets", "not both"),
        ('targets = "tcp://a:514"', "targets", "must be a list"),
        ('targets = ["tcp://a:514", "udp://b:514"]', "targets", "one scheme"),
        ('targets = ["file:///x"]', "targets", "one scheme"),
        ('url = "tcp://a:514"\nmode = "failover"', "mode", "only means something"),
        ('targets = ["tcp://a:514"]\nmode = "random"', "mode", "failover, loadbalance"),
        ('url = "tcp://a:514"\nfsync_interval = 1', "fsync_interval", 'durability = "fsync"'),
        (
            'url = "tcp://a:514"\ndurability = "disk"\ndisk_max_bytes = 0',
            "durability",
            "needs disk",
        ),
        ('url = "tcp://a:514"\non_full = "panic"', "on_full", "block, drop_oldest"),
        ('url = "tcp://a:514"\ndisk_reserve = "lots"', "disk_reserve", "size in bytes"),
        ('url = "tcp://a:514"\ndisk_reserve = -1', "disk_reserve", "between 0 and"),
        (
            'url = "tcp://a:514"\ndisk_max_bytes = 0\ndisk_reserve = "1 GiB"',
            "disk_reserve",
            "only applies with disk",
        ),
        (
            'url = "tcp://a:514"\ndurability = "fsync"\nfsync_interval = 61',
            "fsync_interval",
            "60 seconds",
        ),
    ],
)
def test_spool_and_targets_mistakes(table: str, key: str, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(f'[input.t]\nurl = "tcp://0.0.0.0:514"\n[output.o]\n{table}\n', source="f")
    (error,) = caught.value.errors
    assert error.key == f"output.o.{key}"
    assert says in error.message


def test_relp_endpoints_and_window() -> None:
    cfg = config.loads(
        '[input.r]\nurl = "relp://0.0.0.0:2514"\nmax_connections = 10\n'
        '[output.o]\nurl = "relp://collector:20514"\nwindow = 4096\n'
        '[output.d]\nurl = "relp://collector:20514"\n'
    )
    assert cfg.inputs[0].endpoint == Endpoint("relp", "0.0.0.0", 2514)
    assert cfg.inputs[0].max_connections == 10
    assert [o.window for o in cfg.outputs] == [4096, relp.DEFAULT_WINDOW]


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('[output.o]\nurl = "relp://h:2514"\nwindow = 0\n', "output.o.window", "between 1"),
        ('[output.o]\nurl = "relp://h:2514"\nwindow = 65537\n', "output.o.window", "65536"),
        ('[output.o]\nurl = "relp://h:2514"\nwindow = "big"\n', "output.o.window", "whole"),
        ('[output.o]\nurl = "tcp://h:514"\nwindow = 8\n', "output.o.window", "unknown setting"),
        ('[output.o]\nurl = "relp://h"\n', "output.o.url", "no default port"),
        ('[output.o]\nurl = "relp://h:1"\nframing = "lf"\n', "output.o.framing", "unknown"),
    ],
)
def test_relp_mistakes_name_the_key(table: str, key: str, says: str) -> None:
    text = '[input.i]\nurl = "relp://127.0.0.1:2514"\n' + table
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text)
    errors = {e.key: str(e) for e in caught.value.errors}
    assert key in errors, errors
    assert says in errors[key]


def test_http_input_settings() -> None:
    cfg = config.loads(
        '[input.a]\nurl = "http://127.0.0.1:8080"\n'
        '[input.b]\nurl = "http://[::1]:8081"\npath = "/ingest"\n'
        'token_file = "/etc/relay/token"\nmax_body_bytes = "1 MiB"\n'
        '[output.o]\nurl = "file:///tmp/x"\n'
    )
    a, b = cfg.inputs
    assert a.endpoint == Endpoint("http", "127.0.0.1", 8080)
    assert (a.path, a.token_file, a.max_body_bytes) == ("/v1/ingest", "", 10 * 1024 * 1024)
    assert (b.path, b.token_file, b.max_body_bytes) == ("/ingest", "/etc/relay/token", 1 << 20)


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('url = "http://h:99999"\n', "input.i.url", "port must be a number"),
        ('url = "https://h:443"\n', "input.i", "needs a certificate"),
        ('url = "http://h:80"\npath = "ingest"\n', "input.i.path", "URL path"),
        ('url = "http://h:80"\npath = "/a b"\n', "input.i.path", "URL path"),
        ('url = "http://h:80"\ntoken_file = "token"\n', "input.i.token_file", "absolute"),
        ('url = "http://h:80"\nmax_body_bytes = 10\n', "input.i.max_body_bytes", "1024"),
        ('url = "http://h:80"\nframing = "auto"\n', "input.i.framing", "unknown setting"),
        ('url = "tcp://h:80"\npath = "/x"\n', "input.i.path", "unknown setting"),
    ],
)
def test_http_input_mistakes_name_the_key(table: str, key: str, says: str) -> None:
    text = "[input.i]\n" + table + '[output.o]\nurl = "file:///tmp/x"\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text)
    errors = {e.key: str(e) for e in caught.value.errors}
    assert key in errors, errors
    assert says in errors[key]


def test_relay_send_does_not_speak_relp() -> None:
    with pytest.raises(ValueError, match="not supported by relay send"):
        parse_endpoint("relp://127.0.0.1:2514", "send")


# -- TLS profiles ------------------------------------------------------------

TLS_CONFIG = """\
[tls.server]
cert = "/etc/relay/tls/relay.pem"
key = "/etc/relay/tls/relay.key"
ca = "/etc/relay/tls/ca.pem"
permitted_peers = ["*.example.net", "sha256:{fp}"]
min_version = "1.3"
expiry_warning_days = 14

[input.in]
url = "relp+tls://0.0.0.0:20514"
tls = "server"

[output.up]
url = "tls://collector.example.net"
"""


def test_tls_profiles_inputs_and_outputs() -> None:
    cfg = config.loads(TLS_CONFIG.format(fp="ab" * 32))
    profile = cfg.tls["server"]
    assert profile.cert == Path("/etc/relay/tls/relay.pem")
    assert profile.min_version == "1.3" and profile.expiry_warning_days == 14
    assert cfg.inputs[0].tls == profile and cfg.inputs[0].tls_name == "server"
    assert cfg.inputs[0].endpoint == Endpoint("relp+tls", "0.0.0.0", 20514)
    # Without tls = "...": verify against the system CAs and the host name.
    assert cfg.outputs[0].tls == TlsProfile()
    assert cfg.outputs[0].endpoint.port == 6514


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (('url = "relp+tls://0.0.0.0:20514"\ntls = "server"', 'url = "tls://0.0.0.0"'),
         "input.in", "needs a certificate"),
        (('tls = "server"', 'tls = "nope"'), "input.in.tls", "no [tls.nope] table"),
        (('min_version = "1.3"', 'min_version = "1.1"'), "tls.server.min_version", '"1.2" or'),
        (('"/etc/relay/tls/ca.pem"', '"ca.pem"'), "tls.server.ca", "absolute path"),
        (('"*.example.net"', '"bad name!"'), "tls.server.permitted_peers", "neither a host"),
        (("expiry_warning_days = 14", "expiry_warning_days = 14\nverfiy = false"),
         "tls.server.verfiy", "unknown setting"),
    ],
)  # fmt: skip
def test_tls_mistakes_name_the_key_and_line(change: tuple[str, str], key: str, says: str) -> None:
    text = TLS_CONFIG.format(fp="ab" * 32).replace(*change)
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text)
    [error] = caught.value.errors
    assert error.key == key and says in error.message
    assert error.line is not None


def test_check_files_reports_each_missing_file() -> None:
    cfg = config.loads(TLS_CONFIG.format(fp="ab" * 32))
    problems = config.check_files(cfg, load_files)
    assert [p.key for p in problems] == ["tls.server.cert", "tls.server.key", "tls.server.ca"]
    assert all("no such file" in p.message for p in problems)


def test_check_files_points_at_the_file_line_with_command_line_endpoints(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(TLS_CONFIG.format(fp="ab" * 32))
    cfg = config.with_endpoints(config.load(path), ["udp://127.0.0.1:5514"], [], replace=False)
    problems = config.check_files(cfg, load_files)
    assert [p.source for p in problems] == [str(path)] * 3  # cert, key and ca
    assert all(p.line is not None for p in problems)


def test_example_tls_config_is_valid_with_its_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    relay = ca.issue("relay.example.net")
    text = (ROOT / "etc" / "relay-tls.toml").read_text()
    text = text.replace("/etc/relay/tls/relay.pem", str(relay.cert))
    text = text.replace("/etc/relay/tls/relay.key", str(relay.key))
    text = text.replace("/etc/relay/tls/ca.pem", str(relay.ca))
    copy = tmp_path / "relay-tls.toml"
    copy.write_text(text)
    cfg = config.load(copy)
    assert config.check_files(cfg, load_files) == []
    assert config.check_files(
        config.load(ROOT / "etc" / "relay-tls.toml"), load_files
    )  # no such files


def test_endpoint_address_brackets_ipv6() -> None:
    """The peer named in an output's messages (TLS failures, RELP)."""
    assert config.Endpoint("tls", "::1", 6514).address == "[::1]:6514"
    assert config.Endpoint("tls", "10.0.0.5", 6514).address == "10.0.0.5:6514"


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/var/lib/re\0lay", "NUL character"),
        ("/var/log/a\nb.log", "control characters ('\\n')"),
        ("/var/lib/" + "x" * 256, "NAME_MAX"),
        ("/" + "x/" * 2048, "PATH_MAX"),
        ("/" + "é" * 128, "NAME_MAX"),  # 256 bytes in UTF-8
    ],
    ids=["nul", "newline", "long-name", "long-path", "long-utf8-name"],
)
def test_check_path_refuses(path: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        config.check_path(path)
    assert "\n" not in str(caught.value) and "\0" not in str(caught.value)


def test_check_path_limits_are_the_kernels() -> None:
    longest = "/" + "/".join(["x" * 255] * 15) + "/" + "y" * 254  # 4095 bytes
    assert len(longest) == config.PATH_MAX - 1
    assert config.check_path(longest) == longest
    assert config.check_path("/run/" + "s" * 102, unix_socket=True)  # 107 bytes
    with pytest.raises(ValueError, match="sun_path"):
        config.check_path("/run/" + "s" * 103, unix_socket=True)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[relay]\nstate_dir = "/var/lib/\\u0000"\n', "relay.state_dir"),
        ('[tls.t]\ncert = "/etc/\\u0000.pem"\n', "tls.t.cert"),
        ('[tls.t]\ncert = "/etc/c.pem"\nkey = "/etc/\\u0000.key"\n', "tls.t.key"),
        ('[tls.t]\nca = "/etc/\\u0000.pem"\n', "tls.t.ca"),
        ('[input.u]\nurl = "unix:///run/\\u0000"\n', "input.u.url"),
        ('[output.f]\nurl = "file:///var/log/\\u0000"\n', "output.f.url"),
        ('[input.u]\nurl = "unix:///run/' + "s" * 103 + '"\n', "input.u.url"),
    ],
)
def test_every_configured_path_is_checked(toml: str, key: str) -> None:
    text = toml + '[input.i]\nurl = "udp://127.0.0.1:514"\n[output.o]\nurl = "file:-"\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text, source="relay.toml")
    [error] = caught.value.errors
    assert error.key == key and error.line == toml.count("\n")
    assert "\n" not in str(error) and "\0" not in str(error)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("tcp://a..b:514", "not a host name"),
        ("tcp://" + "a" * 64 + ".net:514", "not a host name"),
        ("tcp://" + "a." * 127 + "net:514", "not a host name"),
        ("tcp://a b:514", "spaces or control characters"),
        ("tcp://ho\nst:514", "spaces or control characters"),
        ("tcp://ho\0st:514", "spaces or control characters"),
        ("tcp://a%41:514", "not a host name"),
        ("tcp://münchen.example:514", "'xn--mnchen-3ya.example'"),
        ("tcp://user:pw@host:514", "user name or password"),
        ("tcp://[::1]x:514", "[brackets]"),
        ("tcp://[fe80::1%25a+b]:514", "not a network interface name"),
        ("tcp://[1.2.3.4]:514", "cannot be in brackets"),
        ("tcp://[fe80::1:514", "Invalid IPv6 URL"),
        ("tcp://[fe80::1%25eth0]:514/x", "unexpected path"),
    ],
)
def test_parse_endpoint_refuses_odd_hosts(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        parse_endpoint(url, "output")
    assert "\n" not in str(caught.value) and "\0" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("tcp://collector-1.example.net.:514", "collector-1.example.net."),
        ("tcp://_srv.example.net:514", "_srv.example.net"),
        ("tcp://xn--mnchen-3ya.example:514", "xn--mnchen-3ya.example"),
        ("tcp://[fe80::1%25eth0]:514", "fe80::1%eth0"),  # RFC 6874: %25 is the %
        ("tcp://10.0.0.5:514", "10.0.0.5"),
    ],
)
def test_parse_endpoint_hosts(url: str, host: str) -> None:
    assert parse_endpoint(url, "output").host == host


def test_a_newline_in_a_name_stays_one_line() -> None:
    text = '[input."a\\nb"]\nurl = "udp://127.0.0.1:514"\nrcvbuff = 1\n'
    text += '[output.o]\nurl = "tls://host"\ntls = "x\\ny"\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text)
    assert [e.key for e in caught.value.errors] == ["input.a\\nb.rcvbuff", "output.o.tls"]
    assert all("\n" not in str(e) for e in caught.value.errors)


def test_state_dir_argument() -> None:
    assert config.state_dir_argument("/var/lib/relay") == Path("/var/lib/relay")
    assert config.state_dir_argument("state").is_absolute()
    with pytest.raises(ConfigErrors) as caught:
        config.state_dir_argument("/var/\0")
    assert (
        str(caught.value)
        == "--state-dir: '/var/\\x00': a path cannot contain a NUL character (\\u0000)"
    )


def test_an_output_name_must_fit_its_spool_directory() -> None:
    text = '[input.i]\nurl = "udp://127.0.0.1:514"\n[output.{name}]\nurl = "tcp://h:514"\n'
    assert config.loads(text.format(name="o" * 255)).outputs[0].name == "o" * 255
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text.format(name="o" * 256))
    [error] = caught.value.errors
    assert error.key == "output." + "o" * 256 and error.line == 3
    assert "at most 255" in error.message
    # Without disk it has no spool directory.
    config.loads(text.format(name="o" * 256) + "disk_max_bytes = 0\n")


# -- routing: filter, inputs, [output.NAME.match], redaction -----------------

ROUTED = """\
[input.lan]
url = "udp://127.0.0.1:514"
[input.app]
url = "tcp://127.0.0.1:514"
[output.o]
url = "file:///var/log/o.log"
"""  # the output's own keys start on line 7


def routed(extra: str) -> config.OutputConfig:
    (output,) = config.loads(ROUTED + textwrap.dedent(extra)).outputs
    return output


def routing_error(extra: str) -> ConfigError:
    """The one mistake in ``extra``, as `relay check` would print it."""
    with pytest.raises(ConfigErrors) as caught:
        config.loads(ROUTED + textwrap.dedent(extra), source="r.toml")
    (error,) = caught.value.errors
    assert "\n" not in str(error)
    return error


def test_routing_keys_make_the_outputs_filter() -> None:
    out = routed("""\
        filter = "*.info;mail.none"
        inputs = ["app"]
        [output.o.match]
        source = ["10.0.0.0/8", "2001:db8::1"]
        hostname = "Web1.Example.NET"
        app_name = ["sshd", "cron"]
        msgid = "ID47"
        contains = ["error", "fail"]
        regex = "fail(ed|ure)"
        """)
    f = out.filter
    assert f.selector is not None and f.selector.text == "*.info;mail.none"
    # user.info (1*8+6) is selected, mail.info (2*8+6) and user.debug are not.
    assert (f.selector.table[14], f.selector.table[22], f.selector.table[15]) == (1, 0, 0)
    assert f.inputs == frozenset({"app"})
    assert [str(n) for n in f.sources] == ["10.0.0.0/8", "2001:db8::1/128"]
    assert f.hostnames == {"web1.example.net"}  # host names are case-insensitive
    assert (f.app_names, f.msgids) == (frozenset({"sshd", "cron"}), frozenset({"ID47"}))
    assert f.contains == (b"error", b"fail")
    assert f.regex is not None and f.regex.pattern == b"fail(ed|ure)"
    assert not f.takes_everything and f.per_message and f.per_message_fields
    assert out.redact == ()


def test_without_routing_keys_an_output_takes_everything() -> None:
    out = routed("")
    assert out.filter.takes_everything and not out.filter.per_message
    assert out.redact == ()
    # One input named as a string; "*.*" is no condition at all.
    out = routed('inputs = "lan"\nfilter = "*.*"\n')
    assert out.filter.inputs == frozenset({"lan"}) and not out.filter.per_message


def test_a_bad_selector_names_its_position() -> None:
    error = routing_error('filter = "mail.bogus"\n')
    assert str(error) == (
        "r.toml:7: output.o.filter: unknown priority name 'bogus' at position 6 of 'mail.bogus'"
    )


@pytest.mark.parametrize(
    ("extra", "key", "line", "says"),
    [
        ('filter = ""', "filter", 7, "empty selector at position 1 of ''"),
        ('filter = "mail.info "', "filter", 7, "unexpected character ' ' at position 10"),
        ('filter = "local8.*"', "filter", 7, "found '8' at position 6 of 'local8.*'"),
        ("filter = 5", "filter", 7, "must be a selector string, not a number"),
        ('filter = ["mail.*"]', "filter", 7, "must be a selector string, not a list"),
        ('inputs = ["lan", "nope"]', "inputs", 7, "no [input.nope] (known: app, lan)"),
        ("inputs = []", "inputs", 7, "is empty: the output would take nothing"),
        ("inputs = 3", "inputs", 7, "must be a list of strings"),
        ('match = "x"', "match", 7, "must be a table"),
        ('[output.o.match]\ncolour = "red"', "match.colour", 8, "unknown setting"),
        ('[output.o.match]\nsource = "10.0.0.300/8"', "match.source", 8, "not an IP address"),
        ('[output.o.match]\nsource = ["::1", "lan"]', "match.source", 8, "'lan' is not an IP"),
        ("[output.o.match]\nhostname = 5", "match.hostname", 8, "must be a list of strings"),
        ("[output.o.match]\napp_name = [1]", "match.app_name", 8, "must be a list of strings"),
        ("[output.o.match]\nmsgid = true", "match.msgid", 8, "must be a list of strings"),
        ('[output.o.match]\ncontains = ""', "match.contains", 8, "may not hold an empty"),
        ('[output.o.match]\ncontains = ["a", ""]', "match.contains", 8, "may not hold an empty"),
        (
            '[output.o.match]\nregex = "a(b"',
            "match.regex",
            8,
            "bad regular expression at position 2: missing ), unterminated subpattern",
        ),
        (
            '[output.o.match]\nregex = "é(b"',
            "match.regex",
            8,
            "at position 2:",
        ),  # characters, not bytes
        ("[output.o.match]\nregex = 5", "match.regex", 8, "must be a regular expression string"),
        ('redact = ["nope"]', "redact", 7, "unknown rule 'nope' (built-in: credentials"),
        ('redact = "card"\nredact_ipv4_bits = 24', "redact_ipv4_bits", 8, 'with "ipv4" in redact'),
        ("redact_ipv6_bits = 48", "redact_ipv6_bits", 7, 'only applies with "ipv6" in redact'),
        ('redact = "ipv4"\nredact_ipv4_bits = 33', "redact_ipv4_bits", 8, "between 0 and 32"),
        ('redact = "card"\nredact_structured_data = 1', "redact_structured_data", 8, "true or"),
        ('redact_rule = "x"', "redact_rule", 7, "must be tables ([[output.o.redact_rule]]"),
    ],
)
def test_routing_mistakes_name_key_and_line(extra: str, key: str, line: int, says: str) -> None:
    error = routing_error(extra + "\n")
    assert (error.key, error.line) == (f"output.o.{key}", line), str(error)
    assert says in error.message


def test_inputs_may_name_an_input_with_mistakes_of_its_own() -> None:
    # One mistake, in the input: not a second one saying it does not exist.
    text = ROUTED.replace("udp://127.0.0.1:514", "udpp://127.0.0.1:514") + 'inputs = "lan"\n'
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text)
    assert [e.key for e in caught.value.errors] == ["input.lan.url"]


def test_redaction_rules_in_order_with_their_options() -> None:
    out = routed("""\
        redact = ["ipv4", "email"]
        redact_ipv4_bits = 8
        [[output.o.redact_rule]]
        name = "session"
        pattern = "session=(\\\\w+)"
        replace = "session=***"
        [[output.o.redact_rule]]
        name = "pin"
        pattern = "pin: \\\\d+"
        replace = "pin: ****"
        structured_data = true
        """)
    # Built-in rules in their own order (BUILTIN), then the custom ones as written.
    assert [r.name for r in out.redact] == ["email", "ipv4", "session", "pin"]
    assert out.redact[2].pattern.pattern == rb"session=(\w+)"
    assert (out.redact[2].structured_data, out.redact[3].structured_data) == (False, True)
    assert Redactor(out.redact).redact_one(b"<13>h a: 10.1.2.3 session=abc") == (
        b"<13>h a: 10.1.2.0 session=***"  # the last 8 bits, as mmanon
    )


RULE = '[[output.o.redact_rule]]\nname = "{name}"\npattern = "{pattern}"\nreplace = "x"\n'


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        (
            '[[output.o.redact_rule]]\nname = "a"\npattern = "b"',
            "redact_rule",
            "rule 1 needs replace",
        ),
        ("[[output.o.redact_rule]]\nreplace = 'b'", "redact_rule", "rule 1 needs name, pattern"),
        (RULE.format(name="a", pattern="a(b"), "redact_rule.pattern", "rule 'a': bad regular"),
        (
            RULE.format(name="a", pattern="a") + RULE.format(name="a", pattern="b"),
            "redact_rule.name",
            "'a' is used twice",
        ),
        (
            'redact = "email"\n' + RULE.format(name="email", pattern="@"),
            "redact_rule.name",
            "'email' is used twice",
        ),
        (
            '[[output.o.redact_rule]]\nname = "a"\npattern = "b"\nreplace = "\\n"',
            "redact_rule.replace",
            "may not hold a newline",
        ),
        (
            '[[output.o.redact_rule]]\nname = "a"\npattern = "b"\nreplace = "\\\\2"',
            "redact_rule.replace",
            "rule 'a': bad replacement",
        ),
        (RULE.format(name="a", pattern="b") + "colour = 1", "redact_rule.colour", "unknown"),
    ],
)
def test_redaction_rule_mistakes(extra: str, key: str, says: str) -> None:
    error = routing_error(extra + "\n")
    assert error.key == f"output.o.{key}", str(error)
    assert says in error.message


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ('name = "a"\npattern = 123\nreplace = "x"', "pattern"),
        ('name = 5\npattern = "b"\nreplace = "x"', "name"),
        ('name = "a"\npattern = "b"\nreplace = true', "replace"),
    ],
)
def test_a_redaction_rule_takes_strings_only(item: str, key: str) -> None:
    # Not str(123): a pattern of digits the operator did not write as one.
    error = routing_error(f"[[output.o.redact_rule]]\n{item}\n")
    assert error.key == f"output.o.redact_rule.{key}"
    assert "must be a string" in error.message


def test_a_redaction_rule_mistake_points_at_its_own_line() -> None:
    text = """\
        [[output.o.redact_rule]]
        name = "a"
        pattern = "ok"
        replace = "x"

        [[output.o.redact_rule]]
        name = "b"
        replace = "x"
        pattern = "a(b"
        """
    error = routing_error(text)  # line 7 is the first [[output.o.redact_rule]]
    assert (error.key, error.line) == ("output.o.redact_rule.pattern", 15), str(error)
    # The same position a [output.NAME.match] regex names: the "(" is the 2nd character.
    assert error.message == (
        "rule 'b': bad regular expression at position 2: missing ), unterminated subpattern"
    )
    error = routing_error(text.replace('pattern = "a(b"\n', ""))  # rule 2 needs pattern
    assert (error.key, error.line) == ("output.o.redact_rule", 12), str(error)
    error = routing_error(text.replace("a(b", "a(b)") + "colour = 1\n")
    assert (error.key, error.line) == ("output.o.redact_rule.colour", 16), str(error)


def test_file_output_settings() -> None:
    cfg = config.loads(
        '[input.t]\nurl = "tcp://0.0.0.0:514"\n[output.f]\n'
        'url = "file:///var/log/hosts/{hostname}/{year}-{month}.log"\nformat = "traditional"\n'
        'file_mode = "0600"\ndir_mode = "0750"\nowner = "root"\ngroup = 0\n'
        "create_dirs = false\nflush_interval = 0.5\nfsync = true\nmax_open_files = 7\n",
        source="f",
    )
    settings = cfg.outputs[0].file
    assert settings.path == ("/var/log/hosts/", "hostname", "/", "year", "-", "month", ".log")
    assert (settings.file_mode, settings.dir_mode, settings.uid, settings.gid) == (
        0o600,
        0o750,
        0,
        0,
    )
    assert (settings.create_dirs, settings.flush_interval, settings.fsync) == (False, 0.5, True)
    assert settings.max_open_files == 7
    assert cfg.outputs[0].format == "traditional"


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('url = "file:///x"\nowner = "no-such-user-here"', "owner", "no such user"),
        ('url = "file:///x"\ngroup = "no-such-group-here"', "group", "no such group"),
        ('url = "file:///x"\nfile_mode = 640', "file_mode", "octal digits in quotes"),
        ('url = "file:///x"\ndir_mode = "0999"', "dir_mode", "octal digits"),
        ('url = "file:///x/{host}.log"', "url", "unknown placeholder {host}"),
        ('url = "file:///x"\nformat = "xml"', "format", "must be one of"),
        ('url = "file:///x"\nmax_open_files = 0', "max_open_files", "between 1 and"),
        ('url = "tcp://a:514"\nfsync = true', "fsync", "unknown setting"),
    ],
)
def test_file_output_mistakes(table: str, key: str, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(f'[input.t]\nurl = "tcp://0.0.0.0:514"\n[output.o]\n{table}\n', source="f")
    (error,) = caught.value.errors
    assert error.key == f"output.o.{key}"
    assert says in error.message


def test_relay_user_and_group() -> None:
    base = '[input.t]\nurl = "tcp://0.0.0.0:514"\n[output.o]\nurl = "file:///x"\n'
    cfg = config.loads(f'[relay]\nuser = "nobody"\ngroup = "nogroup"\n{base}', source="f")
    assert (cfg.user, cfg.group) == ("nobody", "nogroup")
    cfg = config.loads(f"[relay]\nuser = 65534\n{base}", source="f")
    assert (cfg.user, cfg.group) == ("65534", "")
    assert (config.loads(base, source="f").user, config.default_config().user) == ("", "")


@pytest.mark.parametrize(
    ("relay", "key", "says"),
    [
        ('user = "no-such-user-here"', "user", "no such user"),
        ('user = "nobody"\ngroup = "no-such-group-here"', "group", "no such group"),
        ("user = true", "user", "must be a user name or number"),
        ('group = "nogroup"', "group", "needs [relay] user"),
    ],
)
def test_relay_user_mistakes(relay: str, key: str, says: str) -> None:
    text = (
        f'[relay]\n{relay}\n[input.t]\nurl = "tcp://0.0.0.0:514"\n[output.o]\nurl = "file:///x"\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        config.loads(text, source="f")
    (error,) = caught.value.errors
    assert error.key == f"relay.{key}"
    assert error.line == (3 if key == "group" and "user" in relay else 2)
    assert says in error.message


OBSERVE = """\
[relay]
metrics = {metrics}
control_group = {group}
stats_interval = {interval}
[input.u]
url = "udp://127.0.0.1:5514"
[output.o]
url = "file:-"
"""


def test_metrics_control_group_and_stats_interval() -> None:
    cfg = config.loads(OBSERVE.format(metrics='"[::1]:9514"', group=0, interval=60))
    assert (cfg.metrics, cfg.control_group, cfg.stats_interval) == (("::1", 9514), 0, 60.0)
    cfg = config.loads(OBSERVE.format(metrics="9514", group='"root"', interval=0))
    assert (cfg.metrics, cfg.control_group, cfg.stats_interval) == (("127.0.0.1", 9514), 0, 0.0)
    plain = config.loads('[input.u]\nurl = "udp://127.0.0.1:5514"\n[output.o]\nurl = "file:-"\n')
    assert (plain.metrics, plain.control_group, plain.stats_interval) == (None, -1, 0.0)


@pytest.mark.parametrize(
    ("metrics", "group", "interval", "key", "message"),
    [
        ('"127.0.0.1:99999"', 0, 1, "relay.metrics", "port from 1 to 65535"),
        ('"no port"', 0, 1, "relay.metrics", "port from 1 to 65535"),
        ("true", 0, 1, "relay.metrics", 'must be "HOST:PORT"'),
        ('"a b:9514"', 0, 1, "relay.metrics", "IP address or host name"),
        ('"9514"', '"no-such-group-here"', 1, "relay.control_group", "no-such-group-here"),
        ('"9514"', 0, -1, "relay.stats_interval", "from 0 (never)"),
    ],
)
def test_observe_mistakes(
    metrics: str, group: object, interval: int, key: str, message: str
) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(
            OBSERVE.format(metrics=metrics, group=group, interval=interval), source="r.toml"
        )
    (error,) = caught.value.errors
    assert error.key == key
    assert message in str(error)
    assert len(str(error).splitlines()) == 1


# -- local sockets: unix:// and unix+stream:// ------------------------------

LOCAL = """\
[input.dev]
url = "unix:///run/relay/log"
[input.st]
url = "unix+stream:///run/relay/slog"
[input.lan]
url = "udp://127.0.0.1:514"
[output.o]
url = "file:///var/log/o.log"
"""  # the output's own keys start on line 9


def local_error(extra: str) -> ConfigError:
    """The one mistake in ``extra``, as `relay check` would print it."""
    with pytest.raises(ConfigErrors) as caught:
        config.loads(LOCAL + textwrap.dedent(extra), source="l.toml")
    (error,) = caught.value.errors
    assert "\n" not in str(error)
    return error


def test_local_input_keys_and_credential_conditions() -> None:
    text = LOCAL.replace(
        'url = "unix:///run/relay/log"\n',
        'url = "unix:///run/relay/log"\nmode = "0620"\nhostname = "web1"\nannotate = true\n'
        '[input.dev.rate_limit]\nrate = 10\nkey = "pid"\n',
    )
    loaded = config.loads(
        text + '[output.o.match]\npid = [1, 2]\nuid = 0\ngid = [4]\nprocess = "sshd"\n'
    )
    dev, st, _ = loaded.inputs
    assert (dev.socket_mode, dev.hostname, dev.annotate) == (0o620, "web1", True)
    assert dev.rate_limit is not None and dev.rate_limit.key is config.RateLimitKey.PID
    assert (st.endpoint, st.socket_mode, st.hostname, st.annotate) == (
        Endpoint("unix+stream", path="/run/relay/slog"),
        0o666,
        "",
        False,
    )
    f = loaded.outputs[0].filter
    assert (f.pids, f.uids, f.gids, f.processes) == (
        frozenset({1, 2}),
        frozenset({0}),
        frozenset({4}),
        frozenset({"sshd"}),
    )
    assert f.by_creds and not f.takes_everything and not f.per_message


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (
            ('"udp://127.0.0.1:514"', '"udp://127.0.0.1:514"\nmode = "0600"'),
            "input.lan.mode",
            "unknown setting for udp:// inputs",
        ),
        (
            ('"udp://127.0.0.1:514"', '"udp://127.0.0.1:514"\nannotate = true'),
            "input.lan.annotate",
            "unknown setting for udp:// inputs",
        ),
        (
            (
                '"udp://127.0.0.1:514"',
                '"udp://127.0.0.1:514"\n[input.lan.rate_limit]\nrate = 1\nkey = "pid"',
            ),
            "input.lan.rate_limit.key",
            '"pid" is the sender\'s pid from the kernel',
        ),
        (('log"\n', 'log"\nmode = 666\n'), "input.dev.mode", "a string of octal digits"),
        (('log"\n', 'log"\nmode = "0999"\n'), "input.dev.mode", "a string of octal digits"),
        (('log"\n', 'log"\nmode = "1777"\n'), "input.dev.mode", "at most 0777"),
        (('log"\n', 'log"\nhostname = "a b"\n'), "input.dev.hostname", "is not a host name"),
        (('log"\n', 'log"\nhostname = ""\n'), "input.dev.hostname", "must be a host name"),
        (('log"\n', 'log"\nannotate = "yes"\n'), "input.dev.annotate", "true or false"),
        (
            ('slog"\n', 'slog"\n[input.st.rate_limit]\nrate = 1\non_limit = "delay"\n'),
            "input.st.rate_limit.on_limit",
            "a local input never makes a sender wait",
        ),
        (
            ('slog"\n', 'slog"\nrcvbuf = 4096\n'),
            "input.st.rcvbuf",
            "unknown setting for unix+stream:// inputs",
        ),
    ],
)
def test_local_input_mistakes(change: tuple[str, str], key: str, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(LOCAL.replace(*change, 1), source="l.toml")
    (error,) = caught.value.errors
    assert error.key == key and says in error.message, str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("[output.o.match]\npid = 0", "match.pid", "between 1 and"),
        ("[output.o.match]\nuid = -1", "match.uid", "between 0 and"),
        ('[output.o.match]\ngid = ["wheel"]', "match.gid", "must be a number or a list"),
        ("[output.o.match]\npid = []", "match.pid", "is empty"),
        ("[output.o.match]\nuid = true", "match.uid", "must be a number or a list"),
        ('[output.o.match]\nprocess = ""', "match.process", "may not hold an empty"),
        # Only a local input's messages carry credentials:
        ('inputs = "lan"\n[output.o.match]\npid = 1', "match.pid", "the inputs it takes has none"),
        ('inputs = ["lan"]\n[output.o.match]\nprocess = "cron"', "match.process", "has none"),
    ],
)
def test_credential_condition_mistakes(extra: str, key: str, says: str) -> None:
    error = local_error(extra + "\n")
    assert error.key == f"output.o.{key}" and says in error.message, str(error)


def test_credential_conditions_need_a_local_input_in_the_config() -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(ROUTED + "[output.o.match]\nuid = 0\n", source="r.toml")
    (error,) = caught.value.errors
    assert str(error) == (
        "r.toml:8: output.o.match.uid: only messages from unix:// or unix+stream:// inputs "
        "carry the sender's credentials, and this config has none: it would take nothing"
    )


def test_proxy_protocol_settings() -> None:
    cfg = config.loads(
        '[input.r]\nurl = "relp://0.0.0.0:2514"\nproxy_protocol = true\n'
        'proxy_trusted = ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]\n'
        '[output.o]\nurl = "file:-"\n'
    )
    (given,) = cfg.inputs
    assert given.proxy_protocol
    assert [str(n) for n in given.proxy_trusted] == ["127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("lines", "key", "says"),
    [
        ("proxy_protocol = true", "proxy_protocol", "needs proxy_trusted"),
        ("proxy_protocol = true\nproxy_trusted = []", "proxy_trusted", "every connection"),
        ('proxy_trusted = ["10.0.0.1"]', "proxy_trusted", "proxy_protocol is not true"),
        ('proxy_protocol = true\nproxy_trusted = "10.0.0.300"', "proxy_trusted", "10.0.0.300"),
        ('proxy_protocol = "yes"\nproxy_trusted = "10.0.0.1"', "proxy_protocol", "true or false"),
    ],
)
def test_proxy_protocol_mistakes(lines: str, key: str, says: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(f'[input.t]\nurl = "tcp://0.0.0.0:514"\n{lines}\n[output.o]\nurl = "file:-"\n')
    (error,) = caught.value.errors
    assert error.key == f"input.t.{key}"
    assert says in error.message
    assert error.line == 3 + [line.split(" ")[0] for line in lines.splitlines()].index(key)


def test_proxy_protocol_is_for_stream_inputs() -> None:
    with pytest.raises(ConfigErrors, match="unknown setting for udp:// inputs"):
        config.loads(
            '[input.u]\nurl = "udp://0.0.0.0:514"\nproxy_protocol = true\n'
            '[output.o]\nurl = "file:-"\n'
        )


def test_an_http_input_takes_its_path_from_the_path_key_not_its_url() -> None:
    """The HTTP output's URL carries the request's path; an input's does not
    (``path`` does): a path there would be silently ignored otherwise."""
    with pytest.raises(ConfigErrors) as caught:
        config.loads(
            '[input.api]\nurl = "http://127.0.0.1:8080/v1/logs"\n'
            '[output.o]\nurl = "file:///tmp/relay-never-written"\n'
        )
    assert 'takes its path from path = "..."' in str(caught.value)
    cfg = config.loads(
        '[input.api]\nurl = "http://127.0.0.1:8080/"\npath = "/v1/logs"\n'
        '[output.o]\nurl = "file:///tmp/relay-never-written"\n'
    )
    assert cfg.inputs[0].path == "/v1/logs"


WORKERS = """\
[relay]
workers = {workers}
[input.t]
url = "tcp://127.0.0.1:{port}"
[input.dev]
url = "unix:///run/relay/log"
[output.o]
url = "file:-"
"""


def test_workers() -> None:
    assert config.loads(WORKERS.format(workers=4, port=514)).workers == 4
    auto = config.loads(WORKERS.format(workers='"auto"', port=514)).workers
    assert auto == len(os.sched_getaffinity(0))
    assert config.loads(WORKERS.format(workers=1, port=0)).workers == 1  # port 0 alone is fine


@pytest.mark.parametrize(
    ("workers", "port", "key", "message"),
    [
        (0, 514, "relay.workers", 'from 1 to 256 or "auto"'),
        ('"many"', 514, "relay.workers", 'a number of processes or "auto", not a string'),
        ("true", 514, "relay.workers", 'a number of processes or "auto"'),
        (2, 0, "input.t.url", "port 0 (any free port) cannot be shared"),
    ],
)
def test_workers_mistakes(workers: object, port: int, key: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        config.loads(WORKERS.format(workers=workers, port=port), source="r.toml")
    (error,) = caught.value.errors
    assert error.key == key
    assert message in str(error)
    assert error.line == (2 if key == "relay.workers" else 4)

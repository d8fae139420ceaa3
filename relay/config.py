"""Configuration: a TOML file and command-line endpoints -> one validated value.

The file has a ``[relay]`` table for process-wide settings and one table per
input and output, named by the operator::

    [relay]
    state_dir = "/var/lib/relay"

    [input.lan-udp]
    url = "udp://0.0.0.0:514"

    [output.central]
    url = "tcp://collector.example.net:514"

Every mistake is reported with the dotted key and the line it is on, all of
them in one pass (``relay check`` lists each). Unknown keys are errors: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import grp
import ipaddress
import os
import pwd
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from relay.errors import ConfigError, ConfigErrors
from relay.jsonsettings import JSON_KEYS, JsonSettings, json_settings
from relay.policy import redact
from relay.policy.filter import Filter
from relay.policy.http import HTTP_KEYS, HttpSettings, http_settings
from relay.policy.selector import SelectorError, parse_selector
from relay.protocol.framing import DEFAULT_MAX_FRAME, Framing, OversizePolicy
from relay.protocol.ingest import DEFAULT_MAX_BODY, DEFAULT_PATH
from relay.protocol.relp import DEFAULT_WINDOW
from relay.spool.settings import (
    DEFAULT_DISK_MAX_BYTES,
    DEFAULT_DISK_RESERVE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MESSAGES,
    Durability,
    OnFull,
)
from relay.tls.profile import TlsProfile

INPUT_SCHEMES = ("udp", "tcp", "unix", "unix+stream", "relp", "tls", "relp+tls", "http", "https")
OUTPUT_SCHEMES = ("tcp", "udp", "file", "relp", "tls", "relp+tls", "http", "https")
TLS_SCHEMES = ("tls", "relp+tls", "https")
# URLs with a path (and query) after host:port: the HTTP output (relay/policy/http.py).
HTTP_SCHEMES = ("http", "https")
SEND_SCHEMES = ("udp", "tcp", "unix")  # what `relay send` speaks
# Local sockets: the sender's credentials come from the kernel (relay/inputs/local.py).
LOCAL_SCHEMES = ("unix", "unix+stream")
# Schemes whose URL is a path, not host:port.
PATH_SCHEMES = ("file", *LOCAL_SCHEMES)
PLANNED_SCHEMES = ("tls", "relp", "relp+tls")  # named in "not supported ... yet"
# RELP has no IANA port (rsyslog's examples use 2514, others 20514): a
# relp:// or relp+tls:// URL must name one. tls:// is RFC 5425's 6514.
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514, "http": 80, "https": 443}

# A relay node takes in thousands of hosts; one connection each plus headroom.
# Past this many, the listener stops accepting until one closes (no unbounded
# file descriptors, no OOM under a connection storm).
DEFAULT_MAX_CONNECTIONS = 4096
# A stream connection that sends nothing for this long is closed (0: never).
# It frees what dead peers (a host that vanished, a NAT that forgot the flow)
# would hold for ever; a live sender reconnects when it has something to say
# (rsyslog's omfwd notices the close before its next send, omrelp gets
# serverclose). rsyslog's imtcp has no such timeout; syslog senders that stay
# quiet for longer are rare and lose nothing by reconnecting.
DEFAULT_IDLE_TIMEOUT = 600.0
# What the UDP input asks the kernel for (SO_RCVBUF). Linux caps an
# unprivileged request at net.core.rmem_max (208 KiB by default); as root we
# use SO_RCVBUFFORCE. 8 MiB holds about 25,000 typical datagrams: a few tenths
# of a second of a burst while the relay is busy elsewhere.
DEFAULT_RCVBUF = 8 * 1024 * 1024
# setsockopt takes a C int, and Linux doubles the value it stores.
MAX_RCVBUF = 1 << 30
# systemd's default TimeoutStopSec is 90 s; stopping must finish well inside it.
DEFAULT_STOP_TIMEOUT = 30.0
# The least disk a spool may have, when it has any.
MIN_DISK_BYTES = 1024 * 1024
# What the kernel takes as a path (Linux's limits.h and sys/un.h): at most
# PATH_MAX bytes counting the terminating NUL, each name in it at most NAME_MAX
# bytes, and a unix socket's address must fit sockaddr_un.sun_path (108 bytes,
# NUL included). A configured path is checked against them when the config is
# read, so `relay check` says what `relay run` would otherwise find out only at
# start (and a NUL would be a ValueError there, not an OSError).
PATH_MAX = 4096
NAME_MAX = 255
UNIX_PATH_MAX = 108
# A DNS name (RFC 1035 2.3.4): at most 253 characters, labels of 1 to 63.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
# Upper bound of every setting in seconds: a day.
MAX_SECONDS = 86400
# Longest wait between reconnect attempts to an upstream.
DEFAULT_RETRY_MAX = 30.0
LOG_LEVELS = ("debug", "info", "warning", "error")
RELAY_KEYS = (
    "state_dir",
    "stop_timeout",
    "log_level",
    "user",
    "group",
    "metrics",
    "control_group",
    "stats_interval",
    "workers",
)
# [relay] workers: at most this many processes (more than any machine's cores
# that a relay node would use; a typo such as 1000 is a mistake, not a plan).
MAX_WORKERS = 256
# [relay] metrics given as a port alone: served on loopback only. Metrics say
# much about a network (peers, certificates); exposing them is a choice.
DEFAULT_METRICS_HOST = "127.0.0.1"

_COMMON_INPUT = ("url", "max_message_size", "oversize", "rate_limit")
_LOCAL_INPUT = ("mode", "hostname", "annotate")
HTTP_INPUT_KEYS = ("path", "token_file", "max_body_bytes")
_STREAM_INPUT = ("max_connections", "idle_timeout", "proxy_protocol", "proxy_trusted")
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "udp": (*_COMMON_INPUT, "rcvbuf"),
    "unix": (*_COMMON_INPUT, "rcvbuf", *_LOCAL_INPUT),
    "unix+stream": (*_COMMON_INPUT, *_LOCAL_INPUT, "max_connections"),
    "tcp": (*_COMMON_INPUT, *_STREAM_INPUT, "framing"),
    "relp": (*_COMMON_INPUT, *_STREAM_INPUT),
    "tls": (*_COMMON_INPUT, *_STREAM_INPUT, "framing", "tls"),
    "relp+tls": (*_COMMON_INPUT, *_STREAM_INPUT, "tls"),
    # the HTTP ingest input (relay/inputs/http.py)
    "http": (*_COMMON_INPUT, "max_connections", "idle_timeout", *HTTP_INPUT_KEYS),
    "https": (*_COMMON_INPUT, "max_connections", "idle_timeout", "tls", *HTTP_INPUT_KEYS),
}
# file:// outputs (see FileSettings): modes and owner at creation, dynamic
# paths, buffering.
FILE_KEYS = (
    "file_mode",
    "dir_mode",
    "owner",
    "group",
    "create_dirs",
    "flush_interval",
    "fsync",
    "max_open_files",
)
FILE_FORMATS = ("lines", "octet-counted", "traditional", "rsyslog", "rfc5424", "json")
# {name} in a file:// path: per message (from the header, as rsyslog reads it)
# or per batch (the rest; the date is the reception's, local time).
PATH_PLACEHOLDERS = (
    "hostname",
    "app_name",
    "facility",
    "severity",
    "source",
    "input",
    "year",
    "month",
    "day",
)
_PLACEHOLDER = re.compile(r"\{([^{}/]*)\}")
# rsyslog's dynaFileCacheSize defaults to 10; a host directory tree for a
# regional relay has more, and a file descriptor is cheap next to reopening.
DEFAULT_MAX_OPEN_FILES = 100
# Every batch written as it comes, as rsyslog's omfile writes at the end of
# each batch: a 1 s default saved CPU at a trickle (12% -> 8% of a core at
# 5,000 msg/s) but let `tail -f` lag, and under the fuzz test's mixed load the
# relay then went seconds without accepting or reading (not understood yet):
# coalescing is asked for, not the default.
DEFAULT_FLUSH_INTERVAL = 0.0
_COMMON_OUTPUT = (
    "url",
    "queue_max_messages",
    "queue_max_bytes",
    "retry_max",
    "disk_max_bytes",
    "disk_reserve",
    "on_full",
    "durability",
    "fsync_interval",
    "filter",
    "inputs",
    "match",
    "redact",
    "redact_ipv4_bits",
    "redact_ipv6_bits",
    "redact_structured_data",
    "redact_rule",
)
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "tcp": (*_COMMON_OUTPUT, "targets", "mode"),
    "udp": _COMMON_OUTPUT,
    "file": (*_COMMON_OUTPUT, "format", *FILE_KEYS, *JSON_KEYS),
    "relp": (*_COMMON_OUTPUT, "window"),
    "tls": (*_COMMON_OUTPUT, "targets", "mode", "tls"),
    "relp+tls": (*_COMMON_OUTPUT, "window", "tls"),
    "http": (*_COMMON_OUTPUT, "targets", "mode", *HTTP_KEYS, *JSON_KEYS),
    "https": (*_COMMON_OUTPUT, "targets", "mode", "tls", *HTTP_KEYS, *JSON_KEYS),
}
# Schemes whose outputs may list several targets (failover / load balancing).
MULTI_TARGET_SCHEMES = ("tcp", "tls", "http", "https")
# The keys of a [tls.NAME] table (relay.tls.profile.TlsProfile's fields).
TLS_KEYS = (
    "cert",
    "key",
    "ca",
    "min_version",
    "require_client_cert",
    "permitted_peers",
    "verify",
    "ciphers",
    "expiry_warning_days",
)

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (RFC 3986)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an input listens or an output sends: ``scheme://host:port`` or a path."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def url(self) -> str:
        if self.scheme in PATH_SCHEMES:
            return (
                f"{self.scheme}:{self.path}" if self.path == "-" else f"{self.scheme}://{self.path}"
            )
        if self.scheme in HTTP_SCHEMES:
            return f"{self.scheme}://{self.address}{self.path}"
        return f"{self.scheme}://{self.address}"

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), for messages about a network peer."""
        return host_port(self.host, self.port)


class RateLimitKey(enum.StrEnum):
    SOURCE = "source"  # the sender's IP address (a socket path for a unix input)
    HOSTNAME = "hostname"  # the message's HOSTNAME (a parse per message)
    APP_NAME = "app_name"  # the message's APP-NAME (a parse per message)
    PID = "pid"  # the sender's pid as the kernel reports it (unix inputs only)


class OnLimit(enum.StrEnum):
    DROP = "drop"  # drop what is over the rate, count it
    DELAY = "delay"  # stop reading that connection until the bucket refills (streams only)


RATE_LIMIT_KEYS = ("rate", "burst", "key", "on_limit", "exempt_severity", "max_keys", "interval")
# rsyslog's severity names (and numbers 0-7) for exempt_severity.
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SEVERITY_ALIASES = {"panic": 0, "error": 3, "warn": 4}
DEFAULT_RATE_LIMIT_MAX_KEYS = 20_000
DEFAULT_RATE_LIMIT_INTERVAL = 10.0
MATCH_KEYS = ("source", "hostname", "app_name", "msgid", "contains", "regex")
# [output.NAME.match] conditions on a local sender's credentials (Batch.creds).
CREDS_MATCH_KEYS = ("pid", "uid", "gid", "process")
# A local socket's mode when none is configured: every local program may log,
# as with /dev/log.
DEFAULT_SOCKET_MODE = 0o666
REDACT_RULE_KEYS = ("name", "pattern", "replace", "structured_data")


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``[input.NAME.rate_limit]``: a token bucket of ``burst`` refilled at ``rate``/s per key."""

    rate: float
    burst: int
    key: RateLimitKey = RateLimitKey.SOURCE
    on_limit: OnLimit = OnLimit.DROP
    exempt_severity: int | None = None  # this severity and more severe ones pass uncharged
    max_keys: int = DEFAULT_RATE_LIMIT_MAX_KEYS
    interval: float = DEFAULT_RATE_LIMIT_INTERVAL  # one log line per key per interval


@dataclasses.dataclass(frozen=True, slots=True)
class InputConfig:
    name: str
    endpoint: Endpoint
    max_message_size: int = DEFAULT_MAX_FRAME
    oversize: OversizePolicy = OversizePolicy.TRUNCATE
    framing: Framing = Framing.AUTO
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # stream inputs; 0 = never
    rcvbuf: int = DEFAULT_RCVBUF
    tls: TlsProfile | None = None  # tls:// and relp+tls:// only
    tls_name: str = ""  # the [tls.NAME] it came from, for messages
    rate_limit: RateLimitConfig | None = None
    # unix:// and unix+stream:// only:
    socket_mode: int = DEFAULT_SOCKET_MODE  # the key "mode"
    hostname: str = ""  # filled in for messages without one; "": the local host name
    annotate: bool = False  # append the sender's credentials to MSG, as imuxsock does
    # http:// and https:// only (relay/inputs/http.py):
    path: str = DEFAULT_PATH  # what clients POST to
    token_file: str = ""  # the bearer token clients must send; "": none asked
    max_body_bytes: int = DEFAULT_MAX_BODY  # compressed and inflated alike
    # tcp://, tls://, relp://, relp+tls://: a PROXY protocol header (v1 or v2)
    # starts every connection, which must come from one of proxy_trusted.
    proxy_protocol: bool = False
    proxy_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Not a key: set for each worker process ([relay] workers > 1), so that
    # they all bind the address (SO_REUSEPORT) and the kernel spreads the load.
    reuse_port: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class FileSettings:
    """A file:// output's files: how they are created, named and written.

    ``path`` is the path with its ``{placeholders}`` cut out: literal text at
    even indexes, placeholder names at odd ones (one element: a fixed path).
    Mode, owner and group apply when a file or directory is created, as
    rsyslog's $FileCreateMode, $DirCreateMode, $FileOwner and $FileGroup.
    """

    path: tuple[str, ...] = ()
    file_mode: int = 0o640
    dir_mode: int = 0o755
    uid: int = -1  # -1: the relay's own
    gid: int = -1
    create_dirs: bool = True
    flush_interval: float = DEFAULT_FLUSH_INTERVAL  # 0: write every batch at once
    fsync: bool = False
    max_open_files: int = DEFAULT_MAX_OPEN_FILES

    @property
    def dynamic(self) -> bool:
        return len(self.path) > 1


def split_path_template(path: str) -> tuple[str, ...]:
    """``path`` cut at its ``{placeholders}`` (see FileSettings.path); ValueError
    names an unknown one."""
    parts = tuple(_PLACEHOLDER.split(path))
    for name in parts[1::2]:
        if name not in PATH_PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} in {_shorten(path)} "
                f"(known: {', '.join('{' + p + '}' for p in PATH_PLACEHOLDERS)})"
            )
    return parts


class TargetMode(enum.StrEnum):
    FAILOVER = "failover"  # the first healthy target; back to the first when it returns
    LOADBALANCE = "loadbalance"  # round-robin over the healthy targets


@dataclasses.dataclass(frozen=True, slots=True)
class OutputConfig:
    name: str
    endpoint: Endpoint  # the first (or only) target
    queue_max_messages: int = DEFAULT_MAX_MESSAGES
    queue_max_bytes: int = DEFAULT_MAX_BYTES
    retry_max: float = DEFAULT_RETRY_MAX
    format: str = "lines"  # file outputs: one of FILE_FORMATS
    file: FileSettings = FileSettings()  # file outputs
    targets: tuple[Endpoint, ...] = ()  # every target, in order; () means (endpoint,)
    mode: TargetMode = TargetMode.FAILOVER
    disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES
    disk_reserve: int = DEFAULT_DISK_RESERVE  # free space the spool leaves on its file system
    on_full: OnFull = OnFull.BLOCK
    durability: Durability = Durability.MEMORY
    fsync_interval: float = 0.0  # with durability "fsync": 0 = every batch
    window: int = DEFAULT_WINDOW  # relp outputs: messages sent but not yet acknowledged
    # tls:// and relp+tls:// only; without a tls key, TlsProfile(): the system's
    # CAs and the target's host name.
    tls: TlsProfile | None = None
    tls_name: str = ""
    http: HttpSettings | None = None  # http:// and https:// outputs
    filter: Filter = dataclasses.field(default_factory=Filter)  # which messages it takes
    redact: tuple[redact.Rule, ...] = ()  # applied in this order before the spool
    json: JsonSettings = dataclasses.field(default_factory=JsonSettings)  # JSON outputs

    @property
    def all_targets(self) -> tuple[Endpoint, ...]:
        return self.targets or (self.endpoint,)

    @property
    def writes_json(self) -> bool:
        """Whether it writes the JSON form, which carries the senders' credentials."""
        return self.format == "json" or self.endpoint.scheme in HTTP_SCHEMES


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    inputs: tuple[InputConfig, ...]
    outputs: tuple[OutputConfig, ...]
    state_dir: Path
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    log_level: str = "info"
    source: str = "<built-in default>"
    tls: Mapping[str, TlsProfile] = dataclasses.field(default_factory=dict)  # [tls.NAME]
    path: Path | None = None  # the file it was read from (``source`` may say more)
    # Started as root, become this user (and group: default the user's) once
    # every input is bound: relay/service/privileges.py. "": stay who we are.
    user: str = ""
    group: str = ""
    metrics: tuple[str, int] | None = None  # [relay] metrics: where /metrics is served
    control_group: int = -1  # gid that may use state_dir/control.sock (-1: owner only)
    stats_interval: float = 0.0  # seconds between stats lines in the log (0: never)
    workers: int = 1  # [relay] workers: processes sharing the inputs (relay/workers.py)


def default_state_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY`` (``StateDirectory=``), else ``/var/lib/relay``
    for root, else ``$XDG_STATE_HOME/relay`` (~/.local/state)."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]  # the first, if several
    if os.path.isabs(given):
        return Path(given)
    if os.geteuid() == 0:
        return Path("/var/lib/relay")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "relay"


def default_config() -> Config:
    """What ``relay run`` does with no arguments: works for a new user without root."""
    return Config(
        inputs=(
            InputConfig("udp", Endpoint("udp", "127.0.0.1", 5514)),
            InputConfig("tcp", Endpoint("tcp", "127.0.0.1", 5514)),
        ),
        outputs=(OutputConfig("stdout", Endpoint("file", path="-")),),
        state_dir=default_state_dir(),
    )


# -- endpoint URLs ---------------------------------------------------------


def parse_endpoint(url: str, role: str) -> Endpoint:
    """Parse an endpoint URL for an ``input`` or ``output``; ValueError says why."""
    schemes = {"output": OUTPUT_SCHEMES, "send": SEND_SCHEMES}.get(role, INPUT_SCHEMES)
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ValueError(f"{url!r} is not an endpoint URL (try udp://0.0.0.0:514)")
    if scheme in PLANNED_SCHEMES and scheme not in schemes:
        what = "relay send" if role == "send" else f"{role}s"
        raise ValueError(f"{scheme}:// is not supported by {what} in this version yet")
    if scheme not in schemes:
        raise ValueError(
            f"unknown {'' if role == 'send' else role + ' '}scheme {scheme!r}; use one of: "
            + ", ".join(f"{s}://" for s in schemes)
        )
    if scheme in PATH_SCHEMES:
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ValueError(f"{url!r} names no path (try {scheme}:///var/run/example)")
        if path != "-" and not path.startswith("/"):
            raise ValueError(f"{url!r}: the path must be absolute")
        if path == "-" and scheme != "file":
            raise ValueError(f"{url!r}: '-' (standard output) is only for file outputs")
        if path != "-":
            check_path(path, unix_socket=scheme in LOCAL_SCHEMES)
        return Endpoint(scheme, path=path)
    if not rest.startswith("//"):
        raise ValueError(f"{url!r} is not an endpoint URL (try {scheme}://host:port)")
    if _control_character(url) is not None or " " in url:
        # urlsplit would silently drop a tab or newline and keep a NUL.
        raise ValueError(f"{_shorten(url)}: a URL cannot contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL", "An IPv4 address cannot be in brackets"
        raise ValueError(f"{url!r}: {exc}") from None
    path = ""
    if scheme in HTTP_SCHEMES and role == "input":
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f'{url!r}: an http input takes its path from path = "...", not its url'
            )
    elif scheme in HTTP_SCHEMES:  # the request's path and query: kept as written
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.fragment:
            raise ValueError(f"{url!r}: a #fragment is never sent to a server")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: unexpected path or query after host:port")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r}: a user name or password (user@host) means nothing here")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if port is None:
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"{url!r}: {scheme}:// has no default port; name one")
        port = DEFAULT_PORTS[scheme]
    if port == 0 and role != "input":
        raise ValueError(f"{url!r}: an output needs a port from 1 to 65535")
    if "[" in parts.netloc:
        host = _ipv6_host(url, parts.netloc, host)
    else:
        _check_host_name(url, host)
    return Endpoint(scheme, host, port, path)


def _ipv6_host(url: str, netloc: str, host: str) -> str:
    """The address in ``[...]``, its zone's ``%25`` decoded (RFC 6874); ValueError if none."""
    if not re.fullmatch(r"\[[^\[\]]*\](:[^:]*)?", netloc):
        raise ValueError(f"{url!r}: only an IPv6 address goes in [brackets], then :port")
    address, percent, zone = host.partition("%")
    if percent:
        zone = zone.removeprefix("25")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", zone):  # IFNAMSIZ - 1
            raise ValueError(f"{url!r}: {zone!r} is not a network interface name")
        host = f"{address}%{zone}"
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"{url!r}: {address!r} is not an IPv6 address") from None
    return host


def _check_host_name(url: str, host: str) -> None:
    """ValueError unless ``host`` is an IPv4 address or a DNS name the resolver can take."""
    if not host.isascii():
        try:
            ascii_form = f" (its ASCII form is {host.encode('idna').decode('ascii')!r})"
        except UnicodeError:
            ascii_form = ""
        raise ValueError(f"{url!r}: write an international host name in its ASCII form{ascii_form}")
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"{_shorten(url)}: {_shorten(host)} is not a host name or an IP address "
            "(labels of letters, digits and '-', 1 to 63 long, separated by dots)"
        )


# -- the file --------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigErrors listing every mistake."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("no such file", source=source)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigErrors([ConfigError(f"cannot read: {reason}", source=source)]) from None
    return dataclasses.replace(loads(text, source=source), path=Path(source))


def loads(text: str, *, source: str = "<string>") -> Config:
    """Validate config text; raises ConfigErrors listing every mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _toml_error_line(str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigErrors(
            [ConfigError(f"not valid TOML: {msg}", source=source, line=line)]
        ) from None
    return _Validator(text, source).config(data)


def _toml_error_line(message: str) -> int | None:
    found = re.search(r"at line (\d+)", message)
    return int(found.group(1)) if found else None


class _Validator:
    """Walks the parsed TOML, collecting one ConfigError per mistake."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.errors: list[ConfigError] = []
        self.profiles: dict[str, TlsProfile | None] = {}
        # While one table of an array of tables is read: its key and index.
        self._array_table: tuple[str, int] | None = None

    def error(self, key: str, message: str) -> None:
        # A table name or a value quoted back may hold a newline ("\n" in TOML):
        # escaped, so that each mistake stays one line.
        self.errors.append(
            ConfigError(
                _escape_controls(message),
                key=_escape_controls(key),
                source=self.source,
                line=self.line_of(key),
            )
        )

    @contextlib.contextmanager
    def array_table(self, key: str, index: int) -> Iterator[None]:
        """Mistakes under ``key`` point at the ``index``-th ``[[key]]`` table."""
        self._array_table = (key, index)
        try:
            yield
        finally:
            self._array_table = None

    def line_of(self, key: str) -> int | None:
        """Best-effort line of a dotted key: its table header, then the key under it."""
        in_array = self._line_in_array_table(key)
        if in_array is not None:
            return in_array
        parts = key.split(".")
        for split in range(len(parts), 0, -1):
            table, leaf = parts[:split], parts[split:]
            header = _find_header(self.lines, table)
            if header is None:
                continue
            if not leaf:
                return header + 1
            found = _find_key(self.lines, header + 1, leaf[0])
            return (found if found is not None else header) + 1
        if parts:
            found = _find_key(self.lines, 0, parts[-1])
            if found is not None:
                return found + 1
        return None

    def _line_in_array_table(self, key: str) -> int | None:
        """The line of ``key`` in the ``[[table]]`` being read, if it is under it."""
        if self._array_table is None:
            return None
        array, index = self._array_table
        if key != array and not key.startswith(f"{array}."):
            return None
        header = _find_array_table(self.lines, array, index)
        if header is None:  # written inline: redact_rule = [{...}]
            return None
        leaf = key[len(array) + 1 :].split(".")[0]
        found = _find_key(self.lines, header + 1, leaf) if leaf else None
        return (found if found is not None else header) + 1

    def config(self, data: dict[str, Any]) -> Config:
        for key in data:
            if key not in ("relay", "input", "output", "tls"):
                self.error(
                    key, "unknown table (expected [relay], [tls.NAME], [input.NAME], [output.NAME])"
                )
        relay = self.table(data, "relay")
        state_dir = self.get(relay, "relay.state_dir", _absolute_path, str(default_state_dir()))
        stop_timeout = self.get(relay, "relay.stop_timeout", _seconds, DEFAULT_STOP_TIMEOUT)
        log_level = self.get(relay, "relay.log_level", _choice(LOG_LEVELS), "info")
        user = self.get(relay, "relay.user", _user_name, "")
        group = self.get(relay, "relay.group", _group_name, "")
        if group and not user and "user" not in relay:
            self.error("relay.group", "needs [relay] user: the group is the one the user runs with")
        metrics = self.get(relay, "relay.metrics", _listen_address, None)
        control_group = self.get(relay, "relay.control_group", _group, -1)
        stats_interval = self.get(relay, "relay.stats_interval", _seconds_or_off, 0.0)
        workers = self.get(relay, "relay.workers", _workers, 1)
        self.unknown(relay, "relay", RELAY_KEYS)
        self.profiles = self.tls_profiles(data)
        inputs = tuple(self.endpoints(data, "input", self.input))
        outputs = tuple(self.endpoints(data, "output", self.output))
        # Every [input.NAME] written, even one with mistakes (reported already).
        input_names = set(self.table(data, "input"))
        for output in outputs:
            self.spool_name(output)
            self.routed_inputs(output, input_names)
            self.creds_inputs(output, inputs)
        if workers > 1:
            self.shared_ports(inputs)
        if not self.table(data, "input"):
            self.error("input", "no inputs: add at least one [input.NAME] table with a url")
        if not self.table(data, "output"):
            self.error("output", "no outputs: add at least one [output.NAME] table with a url")
        if self.errors:
            raise ConfigErrors(self.errors)
        return Config(
            inputs=inputs,
            outputs=outputs,
            state_dir=Path(state_dir),
            stop_timeout=stop_timeout,
            log_level=log_level,
            source=self.source,
            tls={k: v for k, v in self.profiles.items() if v is not None},
            user=user,
            group=group,
            metrics=metrics,
            control_group=control_group,
            stats_interval=stats_interval,
            workers=workers,
        )

    def shared_ports(self, inputs: Sequence[InputConfig]) -> None:
        """With workers, every worker binds each input's port: port 0 would give
        each worker a port of its own, which no sender could know."""
        for item in inputs:
            if item.endpoint.scheme not in LOCAL_SCHEMES and item.endpoint.port == 0:
                self.error(
                    f"input.{item.name}.url",
                    "port 0 (any free port) cannot be shared by [relay] workers; give a port",
                )

    def routed_inputs(self, output: OutputConfig, names: set[str]) -> None:
        """An output's ``inputs`` must name inputs that exist."""
        for name in sorted((output.filter.inputs or set()) - names):
            known = ", ".join(sorted(names)) or "none"
            self.error(f"output.{output.name}.inputs", f"no [input.{name}] (known: {known})")

    def spool_name(self, output: OutputConfig) -> None:
        """The output's name makes its spool's directory name (one byte a character)."""
        if output.disk_max_bytes and len(output.name) > NAME_MAX:
            self.error(
                f"output.{output.name}",
                f"the name is {len(output.name)} characters long; it names the spool's "
                f"directory (state_dir/spool/NAME), so at most {NAME_MAX}",
            )

    def tls_profiles(self, data: Mapping[str, Any]) -> dict[str, TlsProfile | None]:
        """Every [tls.NAME] table; None for one with mistakes (reported once, here)."""
        profiles: dict[str, TlsProfile | None] = {}
        for name, table in self.table(data, "tls").items():
            key = f"tls.{name}"
            if not isinstance(table, dict):
                self.error(key, f"must be a table ([{key}]), not {_kind(table)}")
                profiles[name] = None
                continue
            self.unknown(table, key, TLS_KEYS)
            before = len(self.errors)
            values = {
                "cert": self.get(table, f"{key}.cert", _optional_path, None),
                "key": self.get(table, f"{key}.key", _optional_path, None),
                "ca": self.get(table, f"{key}.ca", _optional_path, None),
                "min_version": self.get(table, f"{key}.min_version", str, "1.2"),
                "require_client_cert": self.get(table, f"{key}.require_client_cert", _bool, False),
                "permitted_peers": self.get(table, f"{key}.permitted_peers", _strings, ()),
                "verify": self.get(table, f"{key}.verify", _bool, True),
                "ciphers": self.get(table, f"{key}.ciphers", str, None),
                "expiry_warning_days": self.get(
                    table, f"{key}.expiry_warning_days", _count(0, 3650), 30
                ),
            }
            if len(self.errors) > before:
                profiles[name] = None
                continue
            try:
                profiles[name] = TlsProfile(**values)
            except ConfigError as exc:
                self.error(f"{key}.{exc.key}" if exc.key else key, exc.message)
                profiles[name] = None
        return profiles

    def tls_setting(
        self, key: str, table: Mapping[str, Any], scheme: str, role: str
    ) -> tuple[TlsProfile | None, str]:
        """The profile a tls:// or relp+tls:// endpoint names with ``tls = "NAME"``."""
        if scheme not in TLS_SCHEMES:
            return None, ""
        if "tls" not in table:
            if role == "input":
                self.error(
                    key,
                    f'a {scheme}:// listener needs a certificate: add tls = "NAME" naming a '
                    "[tls.NAME] table with cert and key",
                )
            return (None, "") if role == "input" else (TlsProfile(), "")
        name = table["tls"]
        if not isinstance(name, str) or name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none defined"
            self.error(f"{key}.tls", f"no [tls.{name}] table (known: {known})")
            return None, ""
        profile = self.profiles[name]  # None: its own mistakes are reported already
        if profile is not None and role == "input" and profile.cert is None:
            self.error(f"{key}.tls", f"[tls.{name}] has no cert: a listener needs one")
        return profile, name

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.error(key, f"must be a table ([{key}]), not {_kind(value)}")
            return {}
        return value

    def endpoints(
        self, data: Mapping[str, Any], role: str, build: Callable[[str, dict[str, Any]], Any]
    ) -> list[Any]:
        out = []
        for name, table in self.table(data, role).items():
            key = f"{role}.{name}"
            if not isinstance(table, dict):
                self.error(key, f"must be a table ([{key}]) with a url, not {_kind(table)}")
                continue
            if role == "output" and "targets" in table:
                item = self.multi_target(key, {**table, "_name": name})
                if item is not None:
                    out.append(item)
                continue
            if "url" not in table:
                self.error(key, 'has no url (e.g. url = "udp://0.0.0.0:514")')
                continue
            url = self.get(table, f"{key}.url", str, "")
            try:
                endpoint = parse_endpoint(url, role)
            except ValueError as exc:
                self.error(f"{key}.url", str(exc))
                self.unknown(table, key, INPUT_KEYS if role == "input" else OUTPUT_KEYS)
                continue
            item = build(key, {**table, "_endpoint": endpoint, "_name": name})
            if item is not None:
                out.append(item)
        return out

    def input(self, key: str, table: dict[str, Any]) -> InputConfig | None:
        endpoint: Endpoint = table["_endpoint"]
        self.unknown(table, key, INPUT_KEYS[endpoint.scheme], endpoint.scheme)
        profile, profile_name = self.tls_setting(key, table, endpoint.scheme, "input")
        return InputConfig(
            tls=profile,
            tls_name=profile_name,
            name=table["_name"],
            endpoint=endpoint,
            max_message_size=self.get(
                table, f"{key}.max_message_size", _size(16, 1 << 30), DEFAULT_MAX_FRAME
            ),
            oversize=self.get(
                table, f"{key}.oversize", _enum(OversizePolicy), OversizePolicy.TRUNCATE
            ),
            framing=self.get(table, f"{key}.framing", _enum(Framing), Framing.AUTO),
            max_connections=self.get(
                table, f"{key}.max_connections", _count(1, 1 << 20), DEFAULT_MAX_CONNECTIONS
            ),
            idle_timeout=self.get(
                table, f"{key}.idle_timeout", _seconds_or_off, DEFAULT_IDLE_TIMEOUT
            ),
            rcvbuf=self.get(table, f"{key}.rcvbuf", _size(4096, MAX_RCVBUF), DEFAULT_RCVBUF),
            rate_limit=self.rate_limit(key, table, endpoint.scheme),
            **self.local_input(key, table, endpoint.scheme),
            **self.http_input(key, table, endpoint.scheme),
            **self.proxy_protocol(key, table),
        )

    def http_input(self, key: str, table: Mapping[str, Any], scheme: str) -> dict[str, Any]:
        """``path``, ``token_file`` and ``max_body_bytes`` of an http:// or https:// input."""
        if scheme not in ("http", "https"):
            return {}
        return {
            "path": self.get(table, f"{key}.path", _url_path, DEFAULT_PATH),
            "token_file": self.get(table, f"{key}.token_file", _absolute_path, ""),
            "max_body_bytes": self.get(
                table, f"{key}.max_body_bytes", _size(1024, 1 << 31), DEFAULT_MAX_BODY
            ),
        }

    def proxy_protocol(self, key: str, table: Mapping[str, Any]) -> dict[str, Any]:
        """``proxy_protocol`` and ``proxy_trusted`` of a stream input (the
        balancers whose PROXY header is believed: required with it, and only
        with it)."""
        enabled = self.get(table, f"{key}.proxy_protocol", _bool, False)
        trusted = self.get(table, f"{key}.proxy_trusted", _networks, ())
        if enabled and not trusted and "proxy_trusted" not in table:
            self.error(
                f"{key}.proxy_protocol",
                "needs proxy_trusted, the balancers' addresses or networks "
                '(e.g. proxy_trusted = ["10.0.0.0/8"]): a header from anyone else is refused',
            )
        elif enabled and table.get("proxy_trusted") == []:
            self.error(f"{key}.proxy_trusted", "is empty: every connection would be refused")
        elif trusted and not enabled and isinstance(table.get("proxy_protocol", False), bool):
            self.error(f"{key}.proxy_trusted", "is set but proxy_protocol is not true")
        return {"proxy_protocol": enabled, "proxy_trusted": trusted}

    def local_input(self, key: str, table: Mapping[str, Any], scheme: str) -> dict[str, Any]:
        """``mode``, ``hostname`` and ``annotate`` of a unix:// or unix+stream:// input."""
        if scheme not in LOCAL_SCHEMES:
            return {}
        return {
            "socket_mode": self.get(table, f"{key}.mode", _octal_mode, DEFAULT_SOCKET_MODE),
            "hostname": self.get(table, f"{key}.hostname", _local_hostname, ""),
            "annotate": self.get(table, f"{key}.annotate", _bool, False),
        }

    def rate_limit(self, key: str, table: Mapping[str, Any], scheme: str) -> RateLimitConfig | None:
        """``[input.NAME.rate_limit]``, or None without one."""
        if "rate_limit" not in table:
            return None
        key = f"{key}.rate_limit"
        limit = table["rate_limit"]
        if not isinstance(limit, dict):
            self.error(key, f"must be a table ([{key}]) with rate and burst, not {_kind(limit)}")
            return None
        self.unknown(limit, key, RATE_LIMIT_KEYS)
        if "rate" not in limit:
            self.error(key, "needs rate (messages a second per key), e.g. rate = 1000")
            return None
        before = len(self.errors)
        rate = self.get(limit, f"{key}.rate", _rate, 1.0)
        on_limit = self.get(limit, f"{key}.on_limit", _enum(OnLimit), OnLimit.DROP)
        if on_limit is OnLimit.DELAY and scheme in ("udp", *LOCAL_SCHEMES):
            why = (
                "a local input never makes a sender wait"
                if scheme in LOCAL_SCHEMES
                else "needs a connection to stop reading"
            )
            self.error(f"{key}.on_limit", f'"delay" {why}; a {scheme}:// input can only "drop"')
        limit_key = self.get(limit, f"{key}.key", _enum(RateLimitKey), RateLimitKey.SOURCE)
        if limit_key is RateLimitKey.PID and scheme not in LOCAL_SCHEMES:
            self.error(
                f"{key}.key",
                f'"pid" is the sender\'s pid from the kernel: only unix:// and unix+stream:// '
                f"inputs have one, not {scheme}://",
            )
        config = RateLimitConfig(
            rate=rate,
            burst=self.get(limit, f"{key}.burst", _count(1, 1 << 40), max(1, round(rate))),
            key=limit_key,
            on_limit=on_limit,
            exempt_severity=self.get(limit, f"{key}.exempt_severity", _severity, None),
            max_keys=self.get(
                limit, f"{key}.max_keys", _count(1, 1 << 24), DEFAULT_RATE_LIMIT_MAX_KEYS
            ),
            interval=self.get(
                limit, f"{key}.interval", _interval_positive, DEFAULT_RATE_LIMIT_INTERVAL
            ),
        )
        return config if len(self.errors) == before else None

    def multi_target(self, key: str, table: dict[str, Any]) -> OutputConfig | None:
        if "url" in table:
            self.error(f"{key}.targets", "give url or targets, not both")
            return None
        urls = table["targets"]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            self.error(
                f"{key}.targets", 'must be a list of URLs, e.g. ["tcp://a:514", "tcp://b:514"]'
            )
            self.unknown(table, key, OUTPUT_KEYS)
            return None
        targets = []
        for url in urls:
            try:
                targets.append(parse_endpoint(url, "output"))
            except ValueError as exc:
                self.error(f"{key}.targets", str(exc))
        if len(targets) != len(urls):
            return None
        schemes = {t.scheme for t in targets}
        if len(schemes) > 1 or not schemes <= set(MULTI_TARGET_SCHEMES):
            self.error(
                f"{key}.targets",
                "all targets must share one scheme, one of: "
                + ", ".join(f"{s}://" for s in MULTI_TARGET_SCHEMES),
            )
            return None
        return self.output(key, {**table, "_endpoint": targets[0], "_targets": tuple(targets)})

    def output(self, key: str, table: dict[str, Any]) -> OutputConfig | None:
        endpoint: Endpoint = table["_endpoint"]
        self.unknown(table, key, OUTPUT_KEYS[endpoint.scheme], endpoint.scheme)
        profile, profile_name = self.tls_setting(key, table, endpoint.scheme, "output")
        if "mode" in table and "targets" not in table:
            self.error(f"{key}.mode", "only means something with targets = [...]")
        durability = self.get(table, f"{key}.durability", _enum(Durability), Durability.MEMORY)
        if "fsync_interval" in table and durability is not Durability.FSYNC:
            self.error(f"{key}.fsync_interval", 'only applies with durability = "fsync"')
        disk_max_bytes = self.get(
            table, f"{key}.disk_max_bytes", _size(0, 1 << 50), DEFAULT_DISK_MAX_BYTES
        )
        if 0 < disk_max_bytes < MIN_DISK_BYTES:
            # One record holds one read's batch (up to 256 KiB): below this no
            # batch may fit, and a blocking spool would never move again.
            self.error(
                f"{key}.disk_max_bytes",
                f"must be 0 (no disk) or at least 1 MiB, not {disk_max_bytes} bytes",
            )
        if disk_max_bytes == 0 and durability is not Durability.MEMORY:
            self.error(f"{key}.durability", f'"{durability}" needs disk: disk_max_bytes is 0')
        disk_reserve = self.get(
            table, f"{key}.disk_reserve", _size(0, 1 << 50), DEFAULT_DISK_RESERVE
        )
        if "disk_reserve" in table and disk_max_bytes == 0:
            self.error(f"{key}.disk_reserve", "only applies with disk: disk_max_bytes is 0")
        return OutputConfig(
            tls=profile,
            tls_name=profile_name,
            name=table["_name"],
            endpoint=endpoint,
            targets=table.get("_targets", ()),
            mode=self.get(table, f"{key}.mode", _enum(TargetMode), TargetMode.FAILOVER),
            disk_max_bytes=disk_max_bytes,
            disk_reserve=disk_reserve,
            on_full=self.get(table, f"{key}.on_full", _enum(OnFull), OnFull.BLOCK),
            durability=durability,
            fsync_interval=self.get(table, f"{key}.fsync_interval", _interval, 0.0),
            queue_max_messages=self.get(
                table, f"{key}.queue_max_messages", _count(1, 1 << 40), DEFAULT_MAX_MESSAGES
            ),
            queue_max_bytes=self.get(
                table, f"{key}.queue_max_bytes", _size(1024, 1 << 50), DEFAULT_MAX_BYTES
            ),
            retry_max=self.get(table, f"{key}.retry_max", _seconds, DEFAULT_RETRY_MAX),
            format=(fmt := self.get(table, f"{key}.format", _choice(FILE_FORMATS), "lines")),
            file=self.file_settings(key, table, endpoint),
            json=json_settings(
                table,
                key,
                get=self.get,
                error=self.error,
                allowed=OUTPUT_KEYS[endpoint.scheme],
                writes_json=endpoint.scheme != "file" or fmt == "json",
            ),
            window=self.get(table, f"{key}.window", _count(1, 65536), DEFAULT_WINDOW),
            http=(
                http_settings(
                    self,
                    key,
                    table,
                    size=_size(1024, 1 << 30),
                    interval=_interval,
                    seconds=_seconds,
                )
                if endpoint.scheme in HTTP_SCHEMES
                else None
            ),
            filter=self.filter(key, table),
            redact=self.redaction(key, table),
        )

    def file_settings(self, key: str, table: Mapping[str, Any], endpoint: Endpoint) -> FileSettings:
        """The file:// keys (FILE_KEYS); an unknown user or group is an error here,
        so that ``relay check`` finds it."""
        if endpoint.scheme != "file":
            return FileSettings()
        path: tuple[str, ...] = (endpoint.path,)
        try:
            path = split_path_template(endpoint.path)
        except ValueError as exc:
            self.error(f"{key}.url", str(exc))
        return FileSettings(
            path=path,
            file_mode=self.get(table, f"{key}.file_mode", _mode, 0o640),
            dir_mode=self.get(table, f"{key}.dir_mode", _mode, 0o755),
            uid=self.get(table, f"{key}.owner", _user, -1),
            gid=self.get(table, f"{key}.group", _group, -1),
            create_dirs=self.get(table, f"{key}.create_dirs", _bool, True),
            flush_interval=self.get(
                table, f"{key}.flush_interval", _interval, DEFAULT_FLUSH_INTERVAL
            ),
            fsync=self.get(table, f"{key}.fsync", _bool, False),
            max_open_files=self.get(
                table, f"{key}.max_open_files", _count(1, 65536), DEFAULT_MAX_OPEN_FILES
            ),
        )

    def filter(self, key: str, table: Mapping[str, Any]) -> Filter:
        """``filter``, ``inputs`` and ``[output.NAME.match]``: which messages it takes."""
        selector = None
        if "filter" in table:
            text = table["filter"]
            if not isinstance(text, str):
                self.error(f"{key}.filter", f"must be a selector string, not {_kind(text)}")
            else:
                try:
                    selector = parse_selector(text)
                except SelectorError as exc:
                    self.error(
                        f"{key}.filter",
                        f"{exc.message} at position {exc.position + 1} of {_shorten(text)}",
                    )
        inputs = None
        if "inputs" in table:
            names = self.get(table, f"{key}.inputs", _string_or_list, ())
            if not names and isinstance(table["inputs"], list):
                self.error(f"{key}.inputs", "is empty: the output would take nothing")
            inputs = frozenset(names)
        match = table.get("match", {})
        if not isinstance(match, dict):
            self.error(f"{key}.match", f"must be a table ([{key}.match]), not {_kind(match)}")
            match = {}
        self.unknown(match, f"{key}.match", MATCH_KEYS + CREDS_MATCH_KEYS)
        at = f"{key}.match"
        regex = None
        if "regex" in match:
            regex = self.get(match, f"{at}.regex", _regex, None)
        return Filter(
            selector=selector,
            inputs=inputs,
            sources=self.get(match, f"{at}.source", _networks, ()),
            hostnames=frozenset(
                h.lower() for h in self.get(match, f"{at}.hostname", _string_or_list, ())
            ),
            app_names=frozenset(self.get(match, f"{at}.app_name", _string_or_list, ())),
            msgids=frozenset(self.get(match, f"{at}.msgid", _string_or_list, ())),
            contains=tuple(
                c.encode("utf-8") for c in self.get(match, f"{at}.contains", _nonempty_strings, ())
            ),
            regex=regex,
            pids=frozenset(self.get(match, f"{at}.pid", _ids(1), ())),
            uids=frozenset(self.get(match, f"{at}.uid", _ids(0), ())),
            gids=frozenset(self.get(match, f"{at}.gid", _ids(0), ())),
            processes=frozenset(self.get(match, f"{at}.process", _nonempty_strings, ())),
        )

    def creds_inputs(self, output: OutputConfig, inputs: Sequence[InputConfig]) -> None:
        """An output matching on credentials must take from a local socket input."""
        if not output.filter.by_creds:
            return
        local = [i.name for i in inputs if i.endpoint.scheme in LOCAL_SCHEMES]
        taken = output.filter.inputs
        if any(taken is None or name in taken for name in local):
            return
        f = output.filter
        sets = {"pid": f.pids, "uid": f.uids, "gid": f.gids, "process": f.processes}
        condition = next(k for k, values in sets.items() if values)
        where = "the inputs it takes" if taken is not None else "this config"
        self.error(
            f"output.{output.name}.match.{condition}",
            f"only messages from unix:// or unix+stream:// inputs carry the sender's "
            f"credentials, and {where} has none: it would take nothing",
        )

    def redaction(self, key: str, table: Mapping[str, Any]) -> tuple[redact.Rule, ...]:
        """``redact``, its options and ``[[output.NAME.redact_rule]]``, as rules in order."""
        names = self.get(table, f"{key}.redact", _string_or_list, ())
        for name in names:
            if name not in redact.BUILTIN:
                self.error(
                    f"{key}.redact",
                    f"unknown rule {name!r} (built-in: {', '.join(redact.BUILTIN)}; "
                    "add your own with [[output.NAME.redact_rule]])",
                )
        ipv4_bits = self.get(table, f"{key}.redact_ipv4_bits", _count(0, 32), None)
        ipv6_bits = self.get(table, f"{key}.redact_ipv6_bits", _count(0, 128), None)
        sd = self.get(table, f"{key}.redact_structured_data", _bool, False)
        for option, rule, value in (
            ("redact_ipv4_bits", "ipv4", ipv4_bits),
            ("redact_ipv6_bits", "ipv6", ipv6_bits),
        ):
            if value is not None and rule not in names:
                self.error(f"{key}.{option}", f'only applies with "{rule}" in redact')
        rules = [
            redact.builtin_rule(
                name,
                ipv4_bits=redact.DEFAULT_IPV4_BITS if ipv4_bits is None else ipv4_bits,
                ipv6_bits=redact.DEFAULT_IPV6_BITS if ipv6_bits is None else ipv6_bits,
                structured_data=sd,
            )
            for name in redact.BUILTIN
            if name in names
        ]
        custom = table.get("redact_rule", [])
        if not isinstance(custom, list) or not all(isinstance(c, dict) for c in custom):
            self.error(
                f"{key}.redact_rule",
                f"must be tables ([[{key}.redact_rule]] with name, pattern and replace)",
            )
            custom = []
        at = f"{key}.redact_rule"
        for index, item in enumerate(custom):
            with self.array_table(at, index):
                made = self.redaction_rule(at, index, item, names, rules, sd)
            if made is not None:
                rules.append(made)
        return tuple(rules)

    def redaction_rule(
        self,
        at: str,
        index: int,
        item: Mapping[str, Any],
        names: Collection[str],
        rules: list[redact.Rule],
        sd: bool,
    ) -> redact.Rule | None:
        """One ``[[output.NAME.redact_rule]]`` table (the ``index``-th)."""
        self.unknown(item, at, REDACT_RULE_KEYS)
        missing = [k for k in ("name", "pattern", "replace") if k not in item]
        if missing:
            self.error(at, f"rule {index + 1} needs {', '.join(missing)}")
            return None
        before = len(self.errors)
        name = self.get(item, f"{at}.name", _text, "")
        pattern = self.get(item, f"{at}.pattern", _text, "")
        replace = self.get(item, f"{at}.replace", _text, "")
        structured_data = self.get(item, f"{at}.structured_data", _bool, sd)
        if len(self.errors) > before:
            return None
        if name in names or any(r.name == name for r in rules):
            self.error(f"{at}.name", f"{name!r} is used twice: each rule needs its own name")
            return None
        if "\n" in replace or "\0" in replace:
            self.error(f"{at}.replace", "may not hold a newline or NUL (it splits a message)")
            return None
        try:
            return redact.custom_rule(name, pattern, replace, structured_data=structured_data)
        except ConfigError as exc:
            self.error(f"{at}.{exc.key}", f"rule {name!r}: {exc.message}")
            return None

    def unknown(
        self,
        table: Mapping[str, Any],
        key: str,
        allowed: Collection[str] | Mapping[str, Collection[str]],
        scheme: str = "",
    ) -> None:
        if isinstance(allowed, Mapping):  # any scheme's settings (the url was bad)
            allowed = sorted({k for keys in allowed.values() for k in keys})
        for name in table:
            if name.startswith("_") or name in allowed:
                continue
            where = f" for {scheme}:// {key.split('.')[0]}s" if scheme else ""
            self.error(f"{key}.{name}", f"unknown setting{where} (known: {', '.join(allowed)})")

    def get(
        self, table: Mapping[str, Any], key: str, convert: Callable[[Any], Any], default: Any
    ) -> Any:
        leaf = key.rsplit(".", 1)[-1]
        if leaf not in table:
            return default
        try:
            return convert(table[leaf])
        except (TypeError, ValueError) as exc:
            self.error(key, str(exc))
            return default


def _kind(value: object) -> str:
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _find_header(lines: list[str], table: list[str]) -> int | None:
    want = ".".join(table)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):  # [table], or [[array.of.tables]]: its first
            name = stripped.lstrip("[").split("]", 1)[0].strip()
            name = ".".join(p.strip().strip('"').strip("'") for p in name.split("."))
            if name == want:
                return i
    return None


def _find_array_table(lines: list[str], table: str, index: int) -> int | None:
    """The line of the ``index``-th (0-based) ``[[table]]`` header, if there is one."""
    seen = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[["):
            name = stripped[2:].split("]]", 1)[0]
            name = ".".join(p.strip().strip('"').strip("'") for p in name.split("."))
            if name == table:
                if seen == index:
                    return i
                seen += 1
    return None


def _find_key(lines: list[str], start: int, key: str) -> int | None:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for i in range(start, len(lines)):
        if i > start and lines[i].lstrip().startswith("["):
            return None
        if pattern.match(lines[i]):
            return i
    return None


def parse_size(value: object) -> int:
    """A byte count: an integer, or a string such as ``"64 MiB"``, ``"512k"``."""
    if isinstance(value, bool):
        raise TypeError("must be a size in bytes, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        found = _SIZE.match(value)
        if found:
            unit = (found.group(2) or "").lower()[:1]
            return int(found.group(1)) * _UNITS[unit]
    raise ValueError(f'must be a size in bytes such as 65536 or "64 KiB", not {value!r}')


def _size(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        size = parse_size(value)
        if not low <= size <= high:
            raise ValueError(f"must be between {low} and {high} bytes, not {size}")
        return size

    return convert


def _count(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"must be a whole number, not {_kind(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, not {value}")
        return value

    return convert


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number of seconds, not {_kind(value)}")
    if not 0 <= value <= 60:
        raise ValueError(f"must be from 0 (every batch) to 60 seconds, not {value}")
    return float(value)


def _absolute_path(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a path in quotes, not {_kind(value)}")
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, not {_shorten(value)}")
    return check_path(value)


def check_path(path: str, *, unix_socket: bool = False) -> str:
    """``path``, if the kernel can take it as a path (a unix socket's, with
    ``unix_socket``); else ValueError saying why, in one line.

    A control character is refused too: the kernel takes any but NUL, but a
    newline or an escape in a configured path is a mistake, and would break the
    one-line messages that name the path.
    """
    bad = _control_character(path)
    if bad == "\0":
        raise ValueError(f"{_shorten(path)}: a path cannot contain a NUL character (\\u0000)")
    if bad is not None:
        raise ValueError(f"{_shorten(path)}: a path cannot contain control characters ({bad!r})")
    try:
        data = os.fsencode(path)
    except UnicodeError:  # a lone surrogate, only from Python
        raise ValueError(f"{_shorten(path)}: not a path the file system can encode") from None
    limit = UNIX_PATH_MAX if unix_socket else PATH_MAX
    if len(data) >= limit:
        what = "a unix socket path (sun_path)" if unix_socket else "a path (PATH_MAX)"
        raise ValueError(
            f"{_shorten(path)}: {len(data)} bytes long; {what} is at most {limit - 1} bytes"
        )
    for name in data.split(b"/"):
        if len(name) > NAME_MAX:
            raise ValueError(
                f"{_shorten(path)}: a name in it is {len(name)} bytes long; a file name "
                f"(NAME_MAX) is at most {NAME_MAX} bytes"
            )
    return path


def _control_character(text: str) -> str | None:
    """The first C0 control character or DEL in ``text``, if any."""
    found = re.search(r"[\x00-\x1f\x7f]", text)
    return found.group() if found else None


def _escape_controls(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", lambda found: repr(found.group())[1:-1], text)


def _shorten(text: str, width: int = 60) -> str:
    """``text`` quoted for a one-line message (control characters escaped), cut to ``width``."""
    return repr(text) if len(text) <= width else repr(text[: width - 3]) + "..."


def _url_path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or not all(33 <= ord(c) < 127 for c in text) or "?" in text:
        raise ValueError(f"must be a URL path such as /v1/ingest, not {_shorten(repr(text))}")
    return text


def _optional_path(value: Any) -> Path:
    return Path(_absolute_path(value))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string in quotes, not {_kind(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {_kind(value)}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError('must be a list of strings, e.g. ["client.example.net"]')
    return tuple(value)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of messages a second, not {_kind(value)}")
    if not 0.001 <= value <= 1e9:
        raise ValueError(f"must be between 0.001 and 1000000000 messages a second, not {value}")
    return float(value)


def _interval_positive(value: Any) -> float:
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


def _severity(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    if isinstance(value, str):
        name = value.lower()
        if name in SEVERITIES:
            return SEVERITIES.index(name)
        if name in _SEVERITY_ALIASES:
            return _SEVERITY_ALIASES[name]
    raise ValueError(f"must be a severity ({', '.join(SEVERITIES)}) or 0-7, not {value!r}")


def _string_or_list(value: Any) -> tuple[str, ...]:
    """One string, or a list of them (any of which may match)."""
    return (value,) if isinstance(value, str) else _strings(value)


def _nonempty_strings(value: Any) -> tuple[str, ...]:
    strings = _string_or_list(value)
    if any(not s for s in strings):
        raise ValueError("may not hold an empty string (it would match every message)")
    return strings


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for text in _string_or_list(value):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IP address or network (e.g. 10.0.0.0/8, 2001:db8::/32)"
            ) from None
    return tuple(networks)


def _ids(low: int) -> Callable[[Any], tuple[int, ...]]:
    """One number, or a list of them, each at least ``low`` (a pid, uid or gid)."""

    def convert(value: Any) -> tuple[int, ...]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("is empty: the output would take nothing")
        for item in values:
            if not isinstance(item, int) or isinstance(item, bool):
                raise ValueError(f"must be a number or a list of numbers, not {_kind(item)}")
            if not low <= item <= 0xFFFFFFFF:
                raise ValueError(f"must be between {low} and {0xFFFFFFFF}, not {item}")
        return tuple(values)

    return convert


def _octal_mode(value: Any) -> int:
    """A file mode written as a string of octal digits: "0666", "660"."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-7]{3,4}", value):
        raise ValueError(f'must be a string of octal digits such as "0660", not {value!r}')
    mode = int(value, 8)
    if mode > 0o777:
        raise ValueError(f"must be a permission mode (at most 0777), not {value}")
    return mode


def _local_hostname(value: Any) -> str:
    """A host name to fill in: one word of printable ASCII."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a host name, not {_kind(value)}")
    if len(value) > 255 or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(
            f"{_shorten(value)!r} is not a host name (at most 255 printable ASCII "
            "characters, no spaces)"
        )
    return value


def _regex(value: Any) -> re.Pattern[bytes]:
    if not isinstance(value, str):
        raise ValueError(f"must be a regular expression string, not {_kind(value)}")
    return redact.compile_pattern(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number of seconds, not {_kind(value)}")
    if not 0 < value <= MAX_SECONDS:
        raise ValueError(f"must be more than 0 and at most {MAX_SECONDS} seconds, not {value}")
    return float(value)


def _seconds_or_off(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"must be a number of seconds (0: never), not {_kind(value)}")
    if not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"must be from 0 (never) to {MAX_SECONDS} seconds, not {value}")
    return float(value)


def _workers(value: Any) -> int:
    """A number of processes, or "auto": as many as this process may use cores."""
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'must be a number of processes or "auto", not {_kind(value)}')
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f'must be from 1 to {MAX_WORKERS} or "auto", not {value}')
    return value


def _listen_address(value: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``) or a port alone (loopback) to listen on."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f'must be "HOST:PORT" or a port number, not {_kind(value)}')
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = DEFAULT_METRICS_HOST, value
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f'must be "HOST:PORT" with a port from 1 to 65535, not {value!r}')
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            raise ValueError(
                f'must be "HOST:PORT" with an IP address or host name, not {value!r}'
            ) from None
    return host, int(port)


def _mode(value: Any) -> int:
    """A file mode as octal digits in a string ("0640"), as chmod takes it."""
    if not isinstance(value, str):
        raise TypeError(f'must be octal digits in quotes, e.g. "0640", not {_kind(value)}')
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f'must be octal digits, e.g. "0640", not {value!r}') from None
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"must be at most 7777, not {value!r}")
    return mode


def _user(value: Any) -> int:
    """A user name or number: its uid (an unknown name is an error)."""
    return _account(value, "user", lambda name: pwd.getpwnam(name).pw_uid)


def _group(value: Any) -> int:
    """A group name or number: its gid (an unknown name is an error)."""
    return _account(value, "group", lambda name: grp.getgrnam(name).gr_gid)


def _user_name(value: Any) -> str:
    """A user that exists, by name or number, kept as written ([relay] user)."""
    _user(value)
    return str(value)


def _group_name(value: Any) -> str:
    _group(value)
    return str(value)


def _account(value: Any, what: str, lookup: Callable[[str], int]) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32 - 1:
        return value
    if not isinstance(value, str) or not value:
        raise TypeError(f"must be a {what} name or number, not {_kind(value)}")
    if value.isdigit():
        return _account(int(value), what, lookup)
    try:
        return lookup(value)
    except KeyError:
        raise ValueError(f"no such {what} {value!r} on this host") from None


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; not {value!r}")
        return str(value)

    return convert


def _enum(kind: type[Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            options = ", ".join(m.value for m in kind)
            raise ValueError(f"must be one of {options}; not {value!r}") from None

    return convert


def with_endpoints(
    config: Config, inputs: list[str], outputs: list[str], *, replace: bool
) -> Config:
    """Add command-line endpoints (``--input URL``) to a config.

    With ``replace`` (no config file given) they take the place of the built-in
    default's inputs / outputs of the same role. Raises ConfigErrors.
    """
    errors = []
    new_inputs, new_outputs = [], []
    for url in inputs:
        try:
            endpoint = parse_endpoint(url, "input")
        except ValueError as exc:
            errors.append(ConfigError(str(exc), key="--input"))
            continue
        if endpoint.scheme in TLS_SCHEMES:
            # A listener needs a certificate, and the command line has no way to
            # name one: that takes a [tls.NAME] profile in a config file.
            errors.append(
                ConfigError(
                    f"{url!r}: a {endpoint.scheme}:// listener needs a certificate; give it in "
                    f'a config file ([tls.NAME] with cert and key, and tls = "NAME")',
                    key="--input",
                )
            )
            continue
        new_inputs.append(InputConfig(url, endpoint))
    for url in outputs:
        try:
            new_outputs.append(OutputConfig(url, parse_endpoint(url, "output")))
        except ValueError as exc:
            errors.append(ConfigError(str(exc), key="--output"))
    if errors:
        raise ConfigErrors(errors)
    keep_in = () if (replace and new_inputs) else config.inputs
    keep_out = () if (replace and new_outputs) else config.outputs
    return dataclasses.replace(
        config,
        inputs=(*keep_in, *new_inputs),
        outputs=(*keep_out, *new_outputs),
        source=config.source if not (inputs or outputs) else f"{config.source} + command line",
    )


def state_dir_argument(value: str) -> Path:
    """``--state-dir``, made absolute and checked as a path; ConfigErrors if unusable."""
    try:
        return Path(check_path(str(Path(value).absolute())))
    except ValueError as exc:
        raise ConfigErrors([ConfigError(str(exc), key="--state-dir")]) from None


def check_files(
    config: Config, load: Callable[[TlsProfile], list[ConfigError]]
) -> list[ConfigError]:
    """Every TLS profile's files loaded by ``load`` (``relay check`` passes
    :func:`relay.tls.context.load_files`), one error per problem, each with
    the file and line of its key. Parsing the config reads no certificate.
    """
    source = os.fspath(config.path) if config.path else config.source
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    lines = _Validator(text, source)
    errors = []
    for name, profile in config.tls.items():
        for problem in load(profile):
            key = f"tls.{name}.{problem.key}"
            errors.append(
                ConfigError(problem.message, key=key, source=source, line=lines.line_of(key))
            )
    return errors

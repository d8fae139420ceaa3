"""rsyslog actions (omfwd, omrelp, omfile) and their queues -> relay outputs.

Legacy action text (``-/var/log/syslog``, ``@@(o)host:port;TEMPLATE``,
``:omrelp:host:port``) is first read into the module and parameters the
RainerScript ``action()`` would have (:func:`legacy_action`), so both forms
take one path. Templates are resolved once the whole configuration is read
(rsyslog too allows a template after the action that names it):
:func:`file_format` and :func:`dynamic_path`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from relay.importer import values
from relay.importer.toml import Table, Value, size
from relay.importer.values import ValueProblem

# rsyslog's built-in templates for files, and the file format relay writes
# for each (relay.toml(5), file output "format"). The text is each template's
# definition in rsyslog 8 (runtime/template.c), to recognise a copy of one.
FILE_FORMATS = {
    "RSYSLOG_TraditionalFileFormat": "traditional",
    "RSYSLOG_FileFormat": "rsyslog",
    "RSYSLOG_SyslogProtocol23Format": "rfc5424",
}
_TAIL = "%syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\n"
FILE_FORMAT_TEXTS = {
    "%timestamp% %hostname% " + _TAIL: "traditional",
    "%timestamp:::date-rfc3339% %hostname% " + _TAIL: "rsyslog",
    "<%pri%>1 %timestamp:::date-rfc3339% %hostname% %app-name% %procid% %msgid% "
    "%structured-data% %msg%\n": "rfc5424",
}
# What relay forwards is each message as it arrived; these are the templates
# that mean "the message, as syslog" to omfwd and omrelp.
FORWARD_TEMPLATES = frozenset(
    {
        "",
        "RSYSLOG_TraditionalForwardFormat",
        "RSYSLOG_ForwardFormat",
        "RSYSLOG_SyslogProtocol23Format",
    }
)
DEFAULT_FILE_TEMPLATE = "RSYSLOG_FileFormat"  # omfile's default in rsyslog 8

# rsyslog properties a dynamic file name may use, and relay's placeholder.
PATH_PROPERTIES = {
    "hostname": "hostname",
    "source": "hostname",
    "fromhost-ip": "source",
    "programname": "app_name",
    "app-name": "app_name",
    "syslogfacility-text": "facility",
    "syslogseverity-text": "severity",
    "$year": "year",
    "$month": "month",
    "$day": "day",
}
# A value that would escape the directory is replaced by relay as
# secpath-replace does, so that option (and none) converts.
_PATH_OPTIONS = frozenset({"", "secpath-replace"})

# Parameters that tune how rsyslog does its work and have no bearing on what
# reaches the upstream or the file: relay decides these itself.
_TUNING = frozenset(
    {
        "name",
        "type",
        "template",
        "action.resumeinterval",
        "action.reportsuspension",
        "action.reportsuspensioncontinuation",
        "queue.workerthreads",
        "queue.workerthreadminimummessages",
        "queue.dequeuebatchsize",
        "queue.mindequeuebatchsize",
        "queue.mindequeuebatchsize.timeout",
        "queue.highwatermark",
        "queue.lowwatermark",
        "queue.fulldelaymark",
        "queue.lightdelaymark",
        "queue.maxfilesize",
        "queue.checkpointinterval",
        "queue.timeoutshutdown",
        "queue.timeoutactioncompletion",
        "queue.timeoutworkerthreadshutdown",
        "queue.dequeueslowdown",
        "queue.spooldirectory",
        "queue.filename",
        "queue.saveonshutdown",
        "queue.type",
        "queue.size",
        "queue.maxdiskspace",
        "queue.syncqueuefiles",
        "queue.timeoutenqueue",
        "queue.discardmark",
        "queue.discardseverity",
        "action.resumeretrycount",
    }
)
_MODULE_PARAMS = {
    "omfwd": frozenset(
        {
            "target",
            "port",
            "protocol",
            "tcp_framing",
            "rebindinterval",
            "keepalive",
            "keepalive.probes",
            "keepalive.interval",
            "keepalive.time",
            "udp.senddelay",
            "udp.sendtoall",
            "conerrskip",
            "address",
        }
    ),
    "omrelp": frozenset(
        {"target", "port", "windowsize", "timeout", "conn.timeout", "rebindinterval"}
    ),
    "omfile": frozenset(
        {
            "file",
            "dynafile",
            "dircreatemode",
            "filecreatemode",
            "fileowner",
            "filegroup",
            "dirowner",
            "dirgroup",
            "createdirs",
            "sync",
            "flushinterval",
            "dynafilecachesize",
            "asyncwriting",
            "iobuffersize",
            "flushontxend",
            "closetimeout",
            "failonchownfailure",
            "fileownernum",
            "filegroupnum",
            "dirownernum",
            "dirgroupnum",
        }
    ),
}
_USERS = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*(,[A-Za-z_][A-Za-z0-9_.-]*)*")


@dataclasses.dataclass(slots=True)
class FileDefaults:
    """What legacy directives (and ``module(load="builtin:omfile" ...)``) set
    for the file actions after them."""

    owner: str | None = None
    group: str | None = None
    dir_owner: str | None = None
    dir_group: str | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    umask: int | None = None
    create_dirs: bool | None = None
    template: str | None = None
    sync: bool = False  # $ActionFileEnableSync


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A template as read: its text (a list template joined into one), or why not."""

    name: str
    text: str | None
    why: str = ""


def legacy_action(text: str, sync_default: bool) -> tuple[str, dict[str, str]]:
    """A legacy action as ``(module, RainerScript parameters)``; ValueProblem if
    relay has no equivalent."""
    action = text.strip()
    if action.startswith(":omusrmsg:") or action == "*" or _USERS.fullmatch(action):
        raise ValueProblem("user-message actions (omusrmsg) have no relay equivalent")
    if action.startswith(":omrelp:"):
        body, _, template = action[len(":omrelp:") :].partition(";")
        host, port = _host_port(body, "514")
        return "omrelp", {"target": host, "port": port, "template": template.strip()}
    if action.startswith(":"):
        module = action[1:].split(":", 1)[0]
        raise ValueProblem(f"module {module} has no relay equivalent")
    if action.startswith("|"):
        raise ValueProblem("named-pipe actions (ompipe) have no relay equivalent")
    if action.startswith("^"):
        raise ValueProblem("program actions (^program) have no relay equivalent")
    if action.startswith("@"):
        return "omfwd", _forward(action)
    sync = not action.startswith("-") and sync_default
    body, _, template = action.lstrip("-").partition(";")
    params = {"sync": "on" if sync else "off", "template": template.strip()}
    if body.startswith("/"):
        return "omfile", {**params, "file": body.strip()}
    if body.startswith("?"):
        return "omfile", {**params, "dynafile": body[1:].strip()}
    raise ValueProblem(f"cannot read the action {_short(action)!r}")


def _forward(action: str) -> dict[str, str]:
    """``@host``, ``@@host:port``, ``@@(o,z9)[::1]:port;TEMPLATE``."""
    tcp = action.startswith("@@")
    body, _, template = action[2 if tcp else 1 :].partition(";")
    options: list[str] = []
    if body.startswith("("):
        close = body.find(")")
        if close < 0:
            raise ValueProblem("forwarding options '(' are not closed")
        options = [o.strip() for o in body[1:close].split(",")]
        body = body[close + 1 :]
    for option in options:
        if option.startswith("z") and option != "z0":
            raise ValueProblem("compressed forwarding (z) has no relay equivalent")
        if option not in ("o", "z0", ""):
            raise ValueProblem(f"forwarding option {option!r} is not converted")
    host, port = _host_port(body.strip(), "514")
    return {
        "target": host,
        "port": port,
        "protocol": "tcp" if tcp else "udp",
        "tcp_framing": "octet-counted" if "o" in options else "traditional",
        "template": template.strip(),
    }


def _host_port(body: str, default: str) -> tuple[str, str]:
    if body.startswith("["):
        host, _, rest = body[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else default
    else:
        host, colon, port = body.partition(":")
        port = port if colon else default
    if not host or not port:
        raise ValueProblem(f"no host or port in {body!r}")
    return host, port


def unknown_params(module: str, params: dict[str, str]) -> list[str]:
    known = _MODULE_PARAMS.get(module, frozenset())
    return [p for p in params if p not in known and p not in _TUNING]


def url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def forward_output(module: str, params: dict[str, str], table: Table) -> None:
    """The url (and window) of an omfwd or omrelp output."""
    host = params.get("target", "")
    if not host:
        raise ValueProblem(f"{module} without a target")
    port = values.number(params.get("port", "514"))
    if not 0 < port < 65536:
        raise ValueProblem(f"port {port} is not 1-65535")
    if module == "omrelp":
        table.keys["url"] = f"relp://{url_host(host)}:{port}"
        if "windowsize" in params:
            table.keys["window"] = values.number(params["windowsize"])
        return
    protocol = params.get("protocol", "udp").lower()
    if protocol not in ("udp", "tcp"):
        raise ValueProblem(f"omfwd protocol {protocol!r} is not converted")
    table.keys["url"] = f"{protocol}://{url_host(host)}:{port}"
    framing = params.get("tcp_framing", "traditional").lower()
    if protocol == "tcp" and framing != "octet-counted":
        table.notes.append(
            "relay frames TCP octet-counted (RFC 6587 3.4.1); rsyslog's imtcp and relay read both"
        )


def forward_template(params: dict[str, str]) -> str | None:
    """Why the action's template cannot be kept, or None."""
    template = params.get("template", "")
    if template in FORWARD_TEMPLATES:
        return None
    return f'template "{template}" is not converted: relay forwards each message as it arrived'


def queue(params: dict[str, str], table: Table) -> None:
    """An action queue's settings as the output's spool keys (relay.toml(5))."""
    kind = params.get("queue.type", "direct").lower()
    if kind not in ("direct", "linkedlist", "fixedarray", "disk"):
        raise ValueProblem(f"queue.type {kind!r} is not Direct, LinkedList, FixedArray or Disk")
    if "queue.size" in params:
        table.keys["queue_max_messages"] = max(1, values.number(params["queue.size"]))
    if "queue.maxdiskspace" in params:
        disk = values.size(params["queue.maxdiskspace"])
        if disk < 1024 * 1024:
            table.notes.append(f"disk_max_bytes raised from {disk} bytes to relay's least, 1 MiB")
            disk = 1024 * 1024
        table.keys["disk_max_bytes"] = size(disk)
    durability = None
    if kind == "disk":
        durability = "disk"
    if values.boolean(params.get("queue.syncqueuefiles", "off")):
        durability = "fsync"
    if durability:
        table.keys["durability"] = durability
    if values.number(params.get("queue.timeoutenqueue", "2000")) == 0:
        table.keys["on_full"] = "drop_newest"
    if "queue.filename" in params:
        table.notes.append(
            f"rsyslog's queue file {params['queue.filename']!r}: relay's spool is "
            "state_dir/spool/<output name>, kept across a stop"
        )
    retries = values.number(params.get("action.resumeretrycount", "-1"))
    if retries >= 0 and (kind != "direct" or "action.resumeretrycount" in params):
        table.notes.append(
            f"rsyslog gave up after {retries} retries; relay retries for ever and never drops"
        )


def file_output(params: dict[str, str], defaults: FileDefaults, table: Table) -> list[str]:
    """Modes, owner, group and fsync of an omfile output (the path comes later);
    returns what could not be kept."""
    umask = defaults.umask or 0
    file_mode = _mode(params, "filecreatemode", defaults.file_mode)
    dir_mode = _mode(params, "dircreatemode", defaults.dir_mode)
    if file_mode is None and defaults.umask is not None:
        file_mode = 0o644  # omfile's default, then the umask
    if dir_mode is None and defaults.umask is not None:
        dir_mode = 0o700
    if file_mode is not None:
        table.keys["file_mode"] = values.mode_text(file_mode & ~umask)
    if dir_mode is not None:
        table.keys["dir_mode"] = values.mode_text(dir_mode & ~umask)
    owner = params.get("fileowner", params.get("fileownernum", defaults.owner))
    group = params.get("filegroup", params.get("filegroupnum", defaults.group))
    dir_owner = params.get("dirowner", params.get("dirownernum", defaults.dir_owner))
    dir_group = params.get("dirgroup", params.get("dirgroupnum", defaults.dir_group))
    if owner:
        table.keys["owner"] = owner
    if group:
        table.keys["group"] = group
    if values.boolean(params.get("sync", "off")):
        table.keys["fsync"] = True
    create = params.get("createdirs")
    if not (values.boolean(create) if create is not None else defaults.create_dirs is not False):
        table.keys["create_dirs"] = False
    if "flushinterval" in params:
        table.keys["flush_interval"] = values.number(params["flushinterval"])
    if "dynafilecachesize" in params:
        table.keys["max_open_files"] = values.number(params["dynafilecachesize"])
    return [
        f"directory {what} {mine!r} differs from the files' {files or 'default'!r}: "
        f"relay gives new directories the files' {what}"
        for what, mine, files in (("owner", dir_owner, owner), ("group", dir_group, group))
        if mine and mine != files
    ]


def _mode(params: dict[str, str], name: str, default: int | None) -> int | None:
    return values.mode(params[name]) if name in params else default


def file_format(template: str, templates: dict[str, Template]) -> tuple[Value, str | None]:
    """relay's ``format`` for a file template, and why it is not exact (or None)."""
    if template in FILE_FORMATS:
        return FILE_FORMATS[template], None
    found = templates.get(template)
    if found is None:
        return "rsyslog", f'template "{template}" is not defined; written as RSYSLOG_FileFormat'
    if found.text is not None and found.text.lower() in FILE_FORMAT_TEXTS:
        return FILE_FORMAT_TEXTS[found.text.lower()], None
    shown = found.why or f"{_short(found.text or '')!r}"
    return "rsyslog", (
        f'template "{template}" ({shown}) has no relay file format (relay writes '
        "RSYSLOG_TraditionalFileFormat, RSYSLOG_FileFormat or RSYSLOG_SyslogProtocol23Format); "
        "written as RSYSLOG_FileFormat"
    )


_PROPERTY = re.compile(r"%([^%]*)%")


def dynamic_path(template: str, templates: dict[str, Template]) -> str:
    """A dynaFile template as a relay path with {placeholders}; ValueProblem if
    it uses what relay's paths lack."""
    found = templates.get(template)
    if found is None:
        raise ValueProblem(f'dynaFile template "{template}" is not defined')
    if found.text is None:
        raise ValueProblem(f'dynaFile template "{template}": {found.why}')
    out, last = [], 0
    for match in _PROPERTY.finditer(found.text):
        out.append(_literal(found.text[last : match.start()], template))
        name, _, options = match.group(1).partition(":")
        if options.strip(":").lower() not in _PATH_OPTIONS or name.lower() not in PATH_PROPERTIES:
            raise ValueProblem(
                f'dynaFile template "{template}" uses %{match.group(1)}%, which relay\'s '
                f"file paths lack (they have {', '.join('%' + p + '%' for p in PATH_PROPERTIES)})"
            )
        out.append("{" + PATH_PROPERTIES[name.lower()] + "}")
        last = match.end()
    out.append(_literal(found.text[last:], template))
    path = "".join(out)
    if not path.startswith("/"):
        raise ValueProblem(f'dynaFile template "{template}" is not an absolute path')
    return path


def _literal(text: str, template: str) -> str:
    if "{" in text or "}" in text or "\n" in text or "\0" in text:
        raise ValueProblem(
            f'dynaFile template "{template}" has a brace, newline or NUL in its text'
        )
    return text


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."

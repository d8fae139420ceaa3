"""``relay import-rsyslog``: an rsyslog configuration -> relay.toml text and
the list of what could not be converted.

:func:`convert` is pure: files are read through the :class:`Files` given
(the CLI passes the disk, tests a dict, :class:`MappingFiles`). It walks the
statements (``relay.importer.lexer``) in order, as rsyslog does, because
legacy directives are state: ``$FileOwner`` applies to the file actions
after it, ``$ActionQueue*`` to the next action only, a ``stop`` to the
actions after it in its ruleset.

What becomes what:

* inputs: imuxsock's system socket (``devlog``) and its extra sockets,
  imjournal (journald's forwarding socket), imudp, imtcp/imptcp, imrelp;
* outputs: omfwd (UDP, TCP), omrelp, omfile (a path, or a dynaFile template
  of properties relay's paths have), each with its action queue as spool
  settings, its selector or property filter as ``filter``/``match``, and
  the inputs bound to its ruleset as ``inputs``;
* ``[relay]``: ``state_dir`` from $WorkDirectory.

Everything else is a :class:`Problem` (``FILE:LINE: why``); the result
still holds what was converted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
from collections.abc import Callable, Mapping
from typing import Protocol

from relay.errors import RelayError
from relay.importer import actions, lexer, selectors, values
from relay.importer.lexer import Statement
from relay.importer.toml import Table, Value, render, unique_name
from relay.importer.values import Origin, Problem, ValueProblem
from relay.policy.selector import SelectorError

DEFAULT_RULESET = "RSYSLOG_DefaultRuleset"
SYSTEM_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/syslog"
# rsyslog itself stops at this depth of nested includes.
MAX_INCLUDE_DEPTH = 16
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

# Modules whose whole purpose relay does not have, and why.
_UNSUPPORTED_MODULES = {
    "imklog": "kernel log input not supported (imklog)",
    "immark": "mark messages (immark) are not supported",
    "imfile": "file input (imfile) is not supported",
    "impstats": "rsyslog's own statistics (impstats): relay logs its counters at stop",
}
# Parameters of a unix socket read elsewhere (or naming it).
_UNIX_HANDLED = frozenset(
    {"ratelimit.interval", "ratelimit.burst", "ratelimit.severity", "socket", "type", "ruleset"}
    | {"use", "name"}
)
_OUTPUT_MODULES = frozenset({"omfwd", "omfile", "omrelp", "builtin:omfwd", "builtin:omfile"})
_INPUT_MODULES = frozenset({"imuxsock", "imudp", "imtcp", "imptcp", "imrelp", "imjournal"})
# imuxsock parameters that change nothing relay does (rsyslog's own tuning).
_IMUXSOCK_QUIET = frozenset(
    {
        "syssock.ignoreownmessages",
        "syssock.flowcontrol",
        "syssock.unlink",
        "syssock.usesystimestamp",
        "syssock.ignoretimestamp",
        "syssock.usepidfromsystem",
        "syssock.usespecialparser",
        "syssock.parsehostname",
        "syssock.parsetrusted",
        "ignoreownmessages",
        "flowcontrol",
        "unlink",
        "usesystimestamp",
        "ignoretimestamp",
        "usepidfromsystem",
        "usespecialparser",
        "parsehostname",
        "parsetrusted",
        "createpath",
    }
)
# Legacy directives that are the action queue of the next action.
_QUEUE_DIRECTIVES = {
    "actionqueuetype": "queue.type",
    "actionqueuefilename": "queue.filename",
    "actionqueuemaxdiskspace": "queue.maxdiskspace",
    "actionqueuesize": "queue.size",
    "actionqueuesaveonshutdown": "queue.saveonshutdown",
    "actionqueuesyncqueuefiles": "queue.syncqueuefiles",
    "actionqueuetimeoutenqueue": "queue.timeoutenqueue",
    "actionqueuediscardmark": "queue.discardmark",
    "actionqueuediscardseverity": "queue.discardseverity",
    "actionqueuehighwatermark": "queue.highwatermark",
    "actionqueuelowwatermark": "queue.lowwatermark",
    "actionqueueworkerthreads": "queue.workerthreads",
    "actionqueuedequeuebatchsize": "queue.dequeuebatchsize",
    "actionqueuemaxfilesize": "queue.maxfilesize",
    "actionqueuecheckpointinterval": "queue.checkpointinterval",
    "actionqueuetimeoutshutdown": "queue.timeoutshutdown",
    "actionqueuetimeoutactioncompletion": "queue.timeoutactioncompletion",
    "actionresumeretrycount": "action.resumeretrycount",
    "actionresumeinterval": "action.resumeinterval",
}
# Legacy directives relay does not need: they tune rsyslog itself.
_QUIET_DIRECTIVES = frozenset(
    {
        "preservefqdn",
        "maxopenfiles",
        "systemlogsocketignoremsgtimestamp",
        "systemlogsocketflowcontrol",
        "systemlogusepidfromsystem",
        "systemlogparsetrusted",
        "escapecontrolcharactersonreceive",
        "actionsendtcprebindinterval",
        "actionsendudprebindinterval",
        "inputunixlistensocketcreatepath",
        "inputunixlistensocketignoremsgtimestamp",
        "inputunixlistensocketflowcontrol",
    }
)


class Files(Protocol):
    """How the converter reads files: ``read`` raises OSError (or
    UnicodeDecodeError) for a file it cannot read; ``glob`` returns the
    paths matching a shell pattern, sorted."""

    def read(self, path: str) -> str: ...

    def glob(self, pattern: str) -> list[str]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class MappingFiles:
    """Files held in a mapping of path -> text (for tests, and for text given inline)."""

    files: Mapping[str, str]

    def read(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in self.files if fnmatch.fnmatchcase(p, pattern))


@dataclasses.dataclass(frozen=True, slots=True)
class Conversion:
    """The relay.toml text and what could not be converted (empty: everything was)."""

    toml: str
    problems: tuple[Problem, ...]


class UnreadableConfig(RelayError):
    """The file named on the command line cannot be read at all."""


@dataclasses.dataclass(slots=True)
class _Filter:
    """Which messages a rule takes: PRIs (None: all) and match conditions."""

    pris: bytes | None = None
    text: str = ""
    match: dict[str, Value] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Output:
    table: Table
    ruleset: str
    module: str
    template: str = ""
    dynamic: str = ""


@dataclasses.dataclass(slots=True)
class _Imuxsock:
    origin: Origin | None = None
    use: bool = True
    path: str = SYSTEM_SOCKET
    params: dict[str, str] = dataclasses.field(default_factory=dict)


def convert(path: str, files: Files) -> Conversion:
    """Convert the configuration at ``path``; raise UnreadableConfig if that file
    cannot be read."""
    try:
        text = files.read(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UnreadableConfig(f"cannot read {path}: {_reason(exc)}") from None
    converter = _Converter(files)
    converter.text(path, text, depth=0)
    return converter.finish(path)


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)


class _Converter:
    def __init__(self, files: Files) -> None:
        self.files = files
        self.problems: list[Problem] = []
        self.inputs: list[tuple[Table, str]] = []
        self.outputs: list[_Output] = []
        self.names: set[str] = set()
        self.relay: Table | None = None
        self.imuxsock = _Imuxsock()
        self.unix_next: dict[str, str] = {}  # $InputUnixListenSocket* for the next socket
        self.file_defaults = actions.FileDefaults()
        self.templates: dict[str, actions.Template] = {}
        self.action_queue: dict[str, str] = {}
        self.stopped: dict[str, tuple[bytes, Origin]] = {}
        self.previous: _Filter | None = None
        self.ruleset = DEFAULT_RULESET
        self.udp_address = "0.0.0.0"
        self.bind_ruleset: dict[str, str] = {}  # module -> ruleset for legacy inputs
        self.max_sessions: dict[str, int] = {}
        self.global_input: dict[str, Value] = {}
        self.hostname: str | None = None
        self.tls_modules: set[str] = set()
        self.order: dict[str, int] = {}

    # -- reading --------------------------------------------------------

    def problem(self, origin: Origin, why: str) -> None:
        self.problems.append(Problem(origin.source, origin.line, why))

    def text(self, source: str, text: str, depth: int) -> None:
        self.order.setdefault(source, len(self.order))
        for statement in lexer.read(text):
            self.statement(source, statement, depth)

    def include(self, origin: Origin, pattern: str, depth: int, optional: bool = False) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            self.problem(origin, f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
            return
        if pattern.endswith("/"):
            pattern += "*"
        paths = self.files.glob(pattern) if any(c in pattern for c in "*?[") else [pattern]
        for path in paths:
            try:
                text = self.files.read(path)
            except (OSError, UnicodeDecodeError) as exc:
                if not optional:
                    self.problem(origin, f"cannot read included {path}: {_reason(exc)}")
                continue
            self.text(path, text, depth + 1)

    def statement(self, source: str, st: Statement, depth: int) -> None:
        origin = Origin(source, st.line, st.text)
        try:
            if st.kind == "directive":
                self.directive(origin, st.name, st.value, depth)
            elif st.kind == "object":
                self.object(origin, st, depth)
            elif st.kind == "rule":
                self.rule(origin, st)
            else:
                self.problem(origin, _error_reason(st.value))
        except ValueProblem as exc:
            self.problem(origin, str(exc))

    # -- legacy directives ------------------------------------------------

    def directive(self, origin: Origin, name: str, value: str, depth: int) -> None:
        handler = _DIRECTIVES.get(name)
        if handler is not None:
            handler(self, origin, value)
        elif name in _QUEUE_DIRECTIVES:
            self.action_queue[_QUEUE_DIRECTIVES[name]] = value
        elif name == "includeconfig":
            self.include(origin, value, depth)
        elif name == "modload":
            self.module(origin, posixpath.basename(value).removesuffix(".so"), {})
        elif name not in _QUIET_DIRECTIVES:
            self.problem(origin, f"directive ${name} is not converted")

    def work_directory(self, origin: Origin, value: str) -> None:
        self.relay = Table("relay", "relay", origin.source, origin.line, origin.text)
        self.relay.keys["state_dir"] = value
        self.relay.notes.append("rsyslog's work directory holds relay's lock and spools")

    def template_directive(self, origin: Origin, value: str) -> None:
        name, _, rest = value.partition(",")
        text = lexer.unquote(rest)
        why = "" if text is not None else "its string cannot be read"
        self.templates[name.strip()] = actions.Template(name.strip(), text, why)

    # -- RainerScript objects -------------------------------------------

    def object(self, origin: Origin, st: Statement, depth: int) -> None:
        params = {k: v if isinstance(v, str) else ",".join(v) for k, v in st.params.items()}
        if st.name == "module":
            self.module(origin, params.pop("load", ""), params)
        elif st.name == "input":
            self.input(origin, st.params)
        elif st.name == "action":
            self.action_rule(origin, _Filter(), st)
        elif st.name == "template":
            self.template(st)
        elif st.name == "global":
            self.global_(origin, params)
        elif st.name == "include":
            self.include_object(origin, params, depth)
        elif st.name == "ruleset":
            self.ruleset_block(origin, params, st, depth)
        else:
            self.problem(origin, f"{st.name}() is not converted")

    def include_object(self, origin: Origin, params: dict[str, str], depth: int) -> None:
        optional = params.get("mode", "required").lower() == "optional"
        if "text" in params:
            self.text(origin.source, params["text"], depth + 1)
        elif "file" in params:
            self.include(origin, params["file"], depth, optional)
        else:
            self.problem(origin, "include() without file or text")

    def ruleset_block(self, origin: Origin, params: dict[str, str], st: Statement, d: int) -> None:
        name = params.get("name", "")
        if not name:
            self.problem(origin, "ruleset() without a name")
            return
        if set(params) - {"name"}:
            others = ", ".join(sorted(set(params) - {"name"}))
            self.problem(origin, f"ruleset parameters ({others}) are not converted")
        saved, self.ruleset, self.previous = self.ruleset, name, None
        for inner in st.body:
            self.statement(origin.source, inner, d)
        self.ruleset, self.previous = saved, None

    def template(self, st: Statement) -> None:
        params = {k: v if isinstance(v, str) else ",".join(v) for k, v in st.params.items()}
        name = params.get("name", "")
        kind = params.get("type", "").lower()
        if kind == "string":
            self.templates[name] = actions.Template(name, params.get("string", ""))
        elif kind == "list":
            self.templates[name] = _list_template(name, st.body)
        else:
            self.templates[name] = actions.Template(name, None, f"a template of type {kind!r}")

    def global_(self, origin: Origin, params: dict[str, str]) -> None:
        for name, value in params.items():
            if name == "workdirectory":
                self.work_directory(origin, value)
            elif name == "maxmessagesize":
                self.max_message_size(origin, value)
            elif name == "localhostname":
                self.hostname = value
            elif name in ("preservefqdn", "processinternalmessages") or name.startswith("parser."):
                continue
            else:
                self.problem(origin, f"global parameter {name} is not converted")

    def max_message_size(self, origin: Origin, value: str) -> None:
        count = values.size(value)
        if not 16 <= count <= 1 << 30:
            raise ValueProblem(f"message size {count} is outside relay's 16 bytes to 1 GiB")
        self.global_input["max_message_size"] = count

    # -- modules and inputs ---------------------------------------------

    def module(self, origin: Origin, name: str, params: dict[str, str]) -> None:
        if name in _UNSUPPORTED_MODULES:
            self.problem(origin, _UNSUPPORTED_MODULES[name])
        elif name == "imuxsock":
            self.imuxsock.origin = origin
            self.imuxsock.params.update(params)
        elif name == "imjournal":
            table = self.new_input(origin, "journal", f"unix://{JOURNAL_SOCKET}", DEFAULT_RULESET)
            table.notes.append(
                "imjournal read the journal; relay reads what journald forwards "
                "(ForwardToSyslog=yes in journald.conf)"
            )
        elif name in ("imtcp", "imptcp", "imrelp", "imudp"):
            self.module_params(origin, name, params)
        elif name == "builtin:omfile" or name == "omfile":
            self.omfile_module(params)
        elif name in _OUTPUT_MODULES or not name:
            pass
        elif name.startswith("mm"):
            self.problem(origin, f"message modification module {name} has no relay equivalent")
        else:
            self.problem(origin, f"module {name} has no relay equivalent")

    def module_params(self, origin: Origin, name: str, params: dict[str, str]) -> None:
        for key, value in params.items():
            if key == "maxsessions":
                self.max_sessions[name] = values.number(value)
            elif key.startswith("streamdriver") or key.startswith("tls"):
                self.tls_modules.add(name)
                self.problem(origin, f"{name} over TLS is not converted (add a [tls.NAME] table)")
            elif key not in ("threads", "workerthreads", "permittednonstandardframing"):
                self.problem(origin, f"{name} parameter {key} is not converted")

    def omfile_module(self, params: dict[str, str]) -> None:
        defaults = self.file_defaults
        for key, value in params.items():
            if key == "template":
                defaults.template = value
            elif key == "fileowner":
                defaults.owner = value
            elif key == "filegroup":
                defaults.group = value
            elif key == "dirowner":
                defaults.dir_owner = value
            elif key == "dirgroup":
                defaults.dir_group = value
            elif key == "filecreatemode":
                defaults.file_mode = values.mode(value)
            elif key == "dircreatemode":
                defaults.dir_mode = values.mode(value)

    def new_input(self, origin: Origin, name: str, url: str, ruleset: str) -> Table:
        table = Table(
            "input", unique_name(name, self.names), origin.source, origin.line, origin.text
        )
        table.keys["url"] = url
        self.inputs.append((table, ruleset))
        return table

    def input(self, origin: Origin, raw: lexer.Params) -> None:
        params = {k: v for k, v in raw.items() if isinstance(v, str)}
        kind = params.get("type", "").lower()
        ruleset = params.get("ruleset", DEFAULT_RULESET)
        ports = raw.get("port", "514")
        port_list = [ports] if isinstance(ports, str) else ports
        if kind == "imuxsock":
            self.unix_input(origin, params, ruleset)
            return
        if kind not in ("imudp", "imtcp", "imptcp", "imrelp"):
            why = _UNSUPPORTED_MODULES.get(kind, f"input type {kind or '(none)'} is not converted")
            self.problem(origin, why)
            return
        if kind in self.tls_modules or params.get("tls", "off").lower() == "on":
            self.problem(origin, f"{kind} over TLS is not converted (add a [tls.NAME] table)")
            return
        known = {"type", "port", "address", "ruleset", "name", "rcvbufsize", "maxsessions"}
        for key in sorted(set(raw) - known):
            self.problem(origin, f"{kind} parameter {key} is not converted")
        for port in port_list:
            table = self.network_input(origin, kind, params.get("address", ""), port, ruleset)
            if "rcvbufsize" in params and kind == "imudp":
                table.keys["rcvbuf"] = values.size(params["rcvbufsize"])
            if "maxsessions" in params:
                table.keys["max_connections"] = values.number(params["maxsessions"])

    def network_input(self, origin: Origin, kind: str, host: str, port: str, rs: str) -> Table:
        number = values.number(port)
        if not 0 < number < 65536:
            raise ValueProblem(f"port {port} is not 1-65535")
        scheme = {"imudp": "udp", "imtcp": "tcp", "imptcp": "tcp", "imrelp": "relp"}[kind]
        address = actions.url_host(host if host and host != "*" else "0.0.0.0")
        table = self.new_input(origin, f"{scheme}-{number}", f"{scheme}://{address}:{number}", rs)
        if not host or host == "*":
            table.notes.append("rsyslog listened on every address; this is IPv4's")
        if kind in self.max_sessions:
            table.keys["max_connections"] = self.max_sessions[kind]
        return table

    def unix_input(self, origin: Origin, params: dict[str, str], ruleset: str) -> None:
        path = params.get("socket", "")
        if not path.startswith("/"):
            raise ValueProblem("imuxsock input without an absolute Socket path")
        table = self.new_input(origin, _socket_name(path), f"unix://{path}", ruleset)
        self.unix_settings(origin, table, params, "")

    def unix_settings(self, origin: Origin, table: Table, params: dict[str, str], pre: str) -> None:
        """Annotate, HostName and RateLimit.* of a unix socket (``pre``: "syssock.")."""
        for key, value in params.items():
            bare = key.removeprefix(pre)
            if bare == "annotate":
                # With ParseTrusted, rsyslog makes JSON properties of them
                # instead of appending them to MSG (imuxsock's documentation).
                trusted = params.get(f"{pre}parsetrusted", "off")
                if values.boolean(value) and not values.boolean(trusted):
                    table.keys["annotate"] = True
            elif bare == "hostname":
                table.keys["hostname"] = value
            elif key not in _IMUXSOCK_QUIET and bare not in _UNIX_HANDLED:
                self.problem(origin, f"imuxsock parameter {key} is not converted")
        interval = values.number(params.get(f"{pre}ratelimit.interval", "0"))
        if interval > 0:
            burst = max(1, values.number(params.get(f"{pre}ratelimit.burst", "200")))
            severity = values.number(params.get(f"{pre}ratelimit.severity", "1"))
            limit: dict[str, Value] = {"rate": burst / interval, "burst": burst, "key": "pid"}
            if severity > 0:
                # rsyslog limits this severity and every less severe one.
                limit["exempt_severity"] = _SEVERITIES[min(severity, 8) - 1]
            table.subtables["rate_limit"] = limit

    def add_unix_socket(self, origin: Origin, path: str) -> None:
        table = self.new_input(origin, _socket_name(path), f"unix://{path}", DEFAULT_RULESET)
        params, self.unix_next = self.unix_next, {}
        self.unix_settings(origin, table, params, "")

    # -- rules ----------------------------------------------------------

    def rule(self, origin: Origin, st: Statement) -> None:
        rule_filter = self.filter(origin, st.selector)
        self.previous = rule_filter
        if rule_filter is None:
            self.action_queue = {}
            return
        if st.action == "stop":
            self.stop(origin, rule_filter)
        elif st.body:
            self.action_rule(origin, rule_filter, st.body[0])
        else:
            try:
                module, params = actions.legacy_action(st.action, self.file_defaults.sync)
            except ValueProblem as exc:
                self.action_queue = {}
                self.problem(origin, str(exc))
                return
            self.action(origin, rule_filter, module, params)

    def filter(self, origin: Origin, selector: str) -> _Filter | None:
        if selector == "&":
            if self.previous is None:
                self.problem(origin, "'&' continues no converted rule")
            return self.previous
        if selector.startswith(":"):
            return self.property_filter(origin, selector)
        if not selector:
            return _Filter()
        try:
            pris = selectors.table(selector)
        except SelectorError as exc:
            self.problem(origin, f"{exc}")
            return None
        return _Filter(pris=None if pris == selectors.ALL else pris, text=selector)

    def property_filter(self, origin: Origin, text: str) -> _Filter | None:
        prop, _, rest = text[1:].partition(",")
        operation, _, quoted = rest.partition(",")
        literal = lexer.unquote(quoted)
        key = _PROPERTY_MATCH.get((prop.strip().lower(), operation.strip().lower()))
        if key is None or not literal:
            self.problem(origin, f"property filter {text!r} has no relay equivalent")
            return None
        return _Filter(text=text, match={key: literal})

    def stop(self, origin: Origin, rule_filter: _Filter) -> None:
        if rule_filter.match:
            self.problem(
                origin,
                "stop after a property filter is not converted: the outputs after it "
                "also take these messages",
            )
            return
        pris = rule_filter.pris if rule_filter.pris is not None else selectors.ALL
        before, _ = self.stopped.get(self.ruleset, (bytes(len(pris)), origin))
        self.stopped[self.ruleset] = (selectors.union(before, pris), origin)

    def action_rule(self, origin: Origin, rule_filter: _Filter, st: Statement) -> None:
        params = {k: v if isinstance(v, str) else ",".join(v) for k, v in st.params.items()}
        module = params.get("type", "").lower()
        self.action(origin, rule_filter, module, params)

    def action(
        self, origin: Origin, rule_filter: _Filter, module: str, params: dict[str, str]
    ) -> None:
        queue, self.action_queue = self.action_queue, {}
        params = {**queue, **params}
        if module not in ("omfwd", "omrelp", "omfile"):
            self.problem(
                origin,
                "user-message actions (omusrmsg) have no relay equivalent"
                if module == "omusrmsg"
                else f"action type {module or '(none)'} has no relay equivalent",
            )
            return
        for key in actions.unknown_params(module, params):
            self.problem(origin, f"{module} parameter {key} is not converted")
        if module != "omfile" and any(k.startswith(("streamdriver", "tls")) for k in params):
            self.problem(origin, f"{module} over TLS is not converted (add a [tls.NAME] table)")
            return
        name = params.get("name") or _output_name(module, params)
        table = Table(
            "output", unique_name(name, self.names), origin.source, origin.line, origin.text
        )
        output = _Output(table, self.ruleset, module)
        if module == "omfile":
            for lost in actions.file_output(params, self.file_defaults, table):
                self.problem(origin, lost)
            output.dynamic = params.get("dynafile", "")
            output.template = params.get("template") or self.file_defaults.template or ""
            if not output.dynamic and not params.get("file", "").startswith("/"):
                raise ValueProblem("omfile without an absolute file or a dynaFile")
        else:
            actions.forward_output(module, params, table)
            dropped = actions.forward_template(params)
            if dropped:
                self.problem(origin, dropped)
        actions.queue(params, table)
        if module == "omfile" and not output.dynamic:
            table.keys = {"url": f"file://{params['file']}", **table.keys}
        self.apply_filter(origin, table, rule_filter)
        self.outputs.append(output)

    def apply_filter(self, origin: Origin, table: Table, rule_filter: _Filter) -> None:
        stopped = self.stopped.get(self.ruleset)
        pris = rule_filter.pris
        if stopped is not None:
            removed, where = stopped
            wanted = selectors.minus(pris if pris is not None else selectors.ALL, removed)
            if wanted != (pris if pris is not None else selectors.ALL):
                table.notes.append(
                    f"filter: {rule_filter.text or '*.*'} less what the stop at "
                    f"{where.source}:{where.line} took"
                )
                table.keys["filter"] = selectors.render(wanted)
                pris = None
        if pris is not None:
            table.keys["filter"] = rule_filter.text
        if rule_filter.match:
            table.subtables["match"] = dict(rule_filter.match)

    # -- the end --------------------------------------------------------

    def finish(self, path: str) -> Conversion:
        self.system_socket()
        self.routes()
        for output in self.outputs:
            self.resolve_template(output)
        tables = [self.relay] if self.relay is not None else []
        tables += [t for t, _ in self.inputs] + [o.table for o in self.outputs]
        if not self.inputs:
            self.problems.append(Problem(path, 1, "no input converted: relay needs at least one"))
        if not self.outputs:
            self.problems.append(Problem(path, 1, "no output converted: relay needs at least one"))
        problems = sorted(self.problems, key=lambda p: (self.order.get(p.source, 0), p.line))
        header = f"relay.toml converted by `relay import-rsyslog` from {path}"
        return Conversion(render(tables, header), tuple(problems))

    def system_socket(self) -> None:
        socket = self.imuxsock
        if socket.origin is None:
            return
        params = {**socket.params}
        use = params.pop("syssock.use", "on")
        if not values.boolean(use) or not socket.use:
            return
        path = params.pop("syssock.name", socket.path)
        name = "journal" if path == JOURNAL_SOCKET else "devlog"
        table = self.new_input(socket.origin, name, f"unix://{path}", DEFAULT_RULESET)
        # The system socket is the first input, as rsyslog lists it.
        self.inputs.insert(0, self.inputs.pop())
        if path == SYSTEM_SOCKET:
            table.notes.append(
                f"on a systemd host rsyslog is handed journald's {JOURNAL_SOCKET} instead: "
                "use that url there"
            )
        self.unix_settings(socket.origin, table, params, "syssock.")
        if self.hostname and "hostname" not in table.keys:
            table.keys["hostname"] = self.hostname

    def routes(self) -> None:
        """``inputs`` of each output: the inputs bound to its ruleset."""
        for table, _ in self.inputs:
            for key, value in self.global_input.items():
                table.keys.setdefault(key, value)
        bound: dict[str, list[str]] = {}
        for table, ruleset in self.inputs:
            bound.setdefault(ruleset, []).append(table.name)
        if set(bound) <= {DEFAULT_RULESET}:
            return
        kept = []
        for output in self.outputs:
            names = bound.get(output.ruleset, [])
            if not names:
                origin = Origin(output.table.source, output.table.line, output.table.text)
                self.problem(origin, f'no input is bound to ruleset "{output.ruleset}"')
                continue
            output.table.keys["inputs"] = names
            kept.append(output)
        self.outputs = kept

    def resolve_template(self, output: _Output) -> None:
        table = output.table
        if output.module != "omfile":
            return
        origin = Origin(table.source, table.line, table.text)
        try:
            if output.dynamic:
                path = actions.dynamic_path(output.dynamic, self.templates)
                table.keys = {"url": f"file://{path}", **table.keys}
        except ValueProblem as exc:
            self.problem(origin, str(exc))
            self.outputs = [o for o in self.outputs if o is not output]
            return
        file_format, why = actions.file_format(
            output.template or actions.DEFAULT_FILE_TEMPLATE, self.templates
        )
        table.keys = {"url": table.keys.pop("url"), "format": file_format, **table.keys}
        if why:
            self.problem(origin, why)


# (property, operation) of a property filter -> relay's [output.NAME.match] key.
_PROPERTY_MATCH = {
    ("msg", "contains"): "contains",
    ("rawmsg", "contains"): "contains",
    ("programname", "isequal"): "app_name",
    ("app-name", "isequal"): "app_name",
    ("hostname", "isequal"): "hostname",
    ("source", "isequal"): "hostname",
    ("fromhost-ip", "isequal"): "source",
    ("msgid", "isequal"): "msgid",
}


def _error_reason(value: str) -> str:
    if value == "if":
        return "RainerScript conditions (if ... then) are not converted; nor the actions in them"
    if value == "block":
        return "a filter with a { ... } block is not converted"
    if value.startswith("script:"):
        return f"RainerScript statement {value[7:]!r} is not converted"
    return f"cannot read: {value}"


def _table(kind: str, name: str, origin: Origin) -> Table:
    return Table(kind, name, origin.source, origin.line, origin.text)


def _socket_name(path: str) -> str:
    if path == JOURNAL_SOCKET:
        return "journal"
    if path == SYSTEM_SOCKET:
        return "devlog"
    return "unix-" + posixpath.basename(path.rstrip("/"))


def _output_name(module: str, params: dict[str, str]) -> str:
    if module == "omfile":
        if params.get("dynafile"):
            return f"file-{params['dynafile']}"
        base = posixpath.basename(params.get("file", "").rstrip("/"))
        return "file-" + (base.rsplit(".", 1)[0] if "." in base[1:] else base)
    prefix = "relp" if module == "omrelp" else "fwd"
    return f"{prefix}-{params.get('target', '').replace('.', '-').replace(':', '-')}"


def _list_template(name: str, body: tuple[Statement, ...]) -> actions.Template:
    parts = []
    for item in body:
        params = {k: v for k, v in item.params.items() if isinstance(v, str)}
        if item.kind == "object" and item.name == "constant":
            parts.append(params.get("value", ""))
        elif item.kind == "object" and item.name == "property" and set(params) <= {"name"}:
            parts.append(f"%{params.get('name', '')}%")
        else:
            return actions.Template(name, None, "a list template with property options")
    return actions.Template(name, "".join(parts))


Handler = Callable[[_Converter, Origin, str], None]
Params = dict[str, str]


def _unix_next(field: str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        self.unix_next[field] = value

    return handler


def _imuxsock(field: str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        self.imuxsock.params[field] = value

    return handler


def _file_default(field: str, parse: Callable[[str], object]) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        setattr(self.file_defaults, field, parse(value))

    return handler


def _legacy_input(module: str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        host = self.udp_address if module == "imudp" else ""
        ruleset = self.bind_ruleset.get(module, DEFAULT_RULESET)
        self.network_input(origin, module, host, value, ruleset)

    return handler


def _set_attr(field: str, parse: Callable[[str], object] = str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        setattr(self, field, parse(value))

    return handler


def _bind(module: str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        self.bind_ruleset[module] = value

    return handler


def _problem(why: str) -> Handler:
    def handler(self: _Converter, origin: Origin, value: str) -> None:
        self.problem(origin, why)

    return handler


def _omit_local(self: _Converter, origin: Origin, value: str) -> None:
    self.imuxsock.use = not values.boolean(value)


def _max_sessions(self: _Converter, origin: Origin, value: str) -> None:
    self.max_sessions["imtcp"] = values.number(value)


def _ruleset(self: _Converter, origin: Origin, value: str) -> None:
    self.ruleset, self.previous = value.strip(), None


def _repeated(self: _Converter, origin: Origin, value: str) -> None:
    if values.boolean(value):
        self.problem(origin, "repeated-message reduction is not done by relay")


def _sync(self: _Converter, origin: Origin, value: str) -> None:
    self.file_defaults.sync = values.boolean(value)


_TLS = "TLS (netstream drivers) is not converted: add a [tls.NAME] table"
_DIRECTIVES: dict[str, Handler] = {
    "workdirectory": _Converter.work_directory,
    "template": _Converter.template_directive,
    "maxmessagesize": _Converter.max_message_size,
    "localhostname": _set_attr("hostname"),
    "fileowner": _file_default("owner", str),
    "filegroup": _file_default("group", str),
    "dirowner": _file_default("dir_owner", str),
    "dirgroup": _file_default("dir_group", str),
    "filecreatemode": _file_default("file_mode", values.mode),
    "dircreatemode": _file_default("dir_mode", values.mode),
    "umask": _file_default("umask", values.mode),
    "createdirs": _file_default("create_dirs", values.boolean),
    "actionfiledefaulttemplate": _file_default("template", str),
    "actionfileenablesync": _sync,
    "actionforwarddefaulttemplate": _problem(
        "a default forwarding template is not converted: relay forwards each message as it arrived"
    ),
    "omitlocallogging": _omit_local,
    "systemlogsocketname": _imuxsock("syssock.name"),
    "systemlogsocketannotate": _imuxsock("syssock.annotate"),
    "systemlogratelimitinterval": _imuxsock("syssock.ratelimit.interval"),
    "systemlogratelimitburst": _imuxsock("syssock.ratelimit.burst"),
    "systemlogratelimitseverity": _imuxsock("syssock.ratelimit.severity"),
    "imuxsockratelimitinterval": _unix_next("ratelimit.interval"),
    "imuxsockratelimitburst": _unix_next("ratelimit.burst"),
    "imuxsockratelimitseverity": _unix_next("ratelimit.severity"),
    "inputunixlistensockethostname": _unix_next("hostname"),
    "inputunixlistensocketannotate": _unix_next("annotate"),
    "addunixlistensocket": _Converter.add_unix_socket,
    "udpserveraddress": _set_attr("udp_address"),
    "udpserverrun": _legacy_input("imudp"),
    "inputtcpserverrun": _legacy_input("imtcp"),
    "inputptcpserverrun": _legacy_input("imptcp"),
    "inputrelpserverrun": _legacy_input("imrelp"),
    "inputudpserverbindruleset": _bind("imudp"),
    "inputtcpserverbindruleset": _bind("imtcp"),
    "inputptcpserverbindruleset": _bind("imptcp"),
    "inputtcpmaxsessions": _max_sessions,
    "ruleset": _ruleset,
    "repeatedmsgreduction": _repeated,
    "privdroptouser": _problem("run relay as that user instead (User= in relay.service)"),
    "privdroptogroup": _problem("run relay as that group instead (Group= in relay.service)"),
    "privdroptouserid": _problem("run relay as that user instead (User= in relay.service)"),
    "privdroptogroupid": _problem("run relay as that group instead (Group= in relay.service)"),
    "defaultnetstreamdriver": _problem(_TLS),
    "defaultnetstreamdrivercafile": _problem(_TLS),
    "defaultnetstreamdrivercertfile": _problem(_TLS),
    "defaultnetstreamdriverkeyfile": _problem(_TLS),
    "inputtcpserverstreamdrivermode": _problem(_TLS),
    "actionsendstreamdrivermode": _problem(_TLS),
}

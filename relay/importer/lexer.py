"""rsyslog configuration text -> a list of statements, each with its line.

rsyslog 8 reads one language with two faces (grammar/lexer.l): legacy
``$Directive value`` lines and ``SELECTOR ACTION`` lines, and RainerScript
objects (``module(...)``, ``input(...)``, ``action(...)``, ``template(...)``,
``global(...)``, ``include(...)``, ``ruleset(...) { ... }``). This module
only cuts the text into :class:`Statement` values; what they mean is
``relay.importer.rsyslog``'s business.

The reader is tolerant by design: any text gives a list of statements and
never raises. What it cannot read becomes a statement of kind ``"error"``
with the reason, so the converter can list it and go on with the next line.

Comments are ``#`` to the end of the line (at the start of a statement, or
after white space inside a legacy action) and ``/* ... */``. A legacy line
ending in ``\\`` continues on the next one.
"""

from __future__ import annotations

import bisect
import dataclasses

# Statements the converter knows as RainerScript objects: NAME(...).
OBJECTS = frozenset(
    {
        "module",
        "input",
        "action",
        "template",
        "global",
        "include",
        "ruleset",
        "main_queue",
        "parser",
        "timezone",
        "lookup_table",
        "dyn_stats",
        "percentile_stats",
        "constant",
        "property",
    }
)
# RainerScript statements that are not objects: read to where they end.
SCRIPT_WORDS = frozenset({"set", "unset", "reset", "call", "call_indirect", "foreach", "continue"})

Params = dict[str, str | list[str]]


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """One statement. ``kind`` says which fields mean something:

    * ``"directive"``: ``name`` (lower case, without ``$``) and ``value``;
    * ``"object"``: ``name`` (module, input, ...), ``params`` (names in lower
      case) and ``body`` (the statements in ``{ ... }`` after it, if any);
    * ``"rule"``: ``selector`` (a legacy selector, ``":prop, op, value"`` for
      a property filter, ``"&"`` for a continuation, "" for none) and
      ``action``: the legacy action text, ``"stop"``, or one ``object``
      statement in ``body``;
    * ``"error"``: ``value`` says why the text could not be read.

    ``text`` is the statement's first line as written, for comments.
    """

    kind: str
    line: int
    text: str
    name: str = ""
    value: str = ""
    params: Params = dataclasses.field(default_factory=dict)
    body: tuple[Statement, ...] = ()
    selector: str = ""
    action: str = ""


class _Unreadable(Exception):
    """Internal: the statement at hand cannot be read (caught in this module)."""


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def line_text(self, pos: int) -> str:
        start = self.starts[self.line_of(pos) - 1]
        end = self.text.find("\n", start)
        return self.text[start : end if end >= 0 else len(self.text)].strip()

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self, newlines: bool = True) -> None:
        """Skip white space and comments (``#`` lines and ``/* */``)."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r\f\v" or (newlines and c == "\n"):
                self.pos += 1
            elif c == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                self.pos = len(text) if end < 0 else end + 2
            else:
                return

    def rest_of_line(self, continuation: bool = False) -> str:
        """The text to the end of the line (joined over ``\\`` ends if asked)."""
        parts: list[str] = []
        while True:
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            piece = self.text[self.pos : end].rstrip("\r")
            self.pos = min(end + 1, len(self.text))
            if continuation and piece.endswith("\\") and not self.at_end():
                parts.append(piece[:-1])
                continue
            parts.append(piece)
            return "".join(parts)

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "_.-"
        ):
            self.pos += 1
        return self.text[start : self.pos]

    def string(self) -> str:
        """A quoted string (``"`` or ``'``) with rsyslog's backslash escapes."""
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and self.pos < len(self.text):
                nxt = self.text[self.pos]
                self.pos += 1
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            else:
                out.append(c)
        raise _Unreadable("a string is not closed")

    def value(self) -> str | list[str]:
        self.skip_space()
        c = self.peek()
        if c in ('"', "'"):
            return self.string()
        if c == "[":
            self.pos += 1
            items: list[str] = []
            while True:
                self.skip_space()
                if self.peek() == "]":
                    self.pos += 1
                    return items
                if self.peek() == ",":
                    self.pos += 1
                    continue
                if self.at_end():
                    raise _Unreadable("an array is not closed with ']'")
                item = self.value()
                items.append(item if isinstance(item, str) else " ".join(item))
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in " \t\r\n)":
            self.pos += 1
        if self.pos == start:
            raise _Unreadable("a parameter has no value")
        return self.text[start : self.pos]

    def params(self) -> Params:
        """``name="value" ...)`` after the opening parenthesis."""
        out: Params = {}
        while True:
            self.skip_space()
            if self.at_end():
                raise _Unreadable("a parenthesis is not closed")
            if self.peek() == ")":
                self.pos += 1
                return out
            name = self.word()
            if not name:
                raise _Unreadable(f"unexpected {self.peek()!r} in a parameter list")
            self.skip_space()
            if self.peek() != "=":
                raise _Unreadable(f"parameter {name!r} has no '='")
            self.pos += 1
            out[name.lower()] = self.value()

    def skip_block(self) -> None:
        """Skip a ``{ ... }`` block (the reader is on the ``{``)."""
        depth = 0
        while not self.at_end():
            self.skip_space()
            c = self.peek()
            if c in ('"', "'"):
                self.string()
                continue
            self.pos += 1
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return
        raise _Unreadable("a '{' block is not closed")


def read(text: str) -> list[Statement]:
    """Every statement of ``text``, in order. Never raises."""
    reader = _Reader(text)
    return _statements(reader, nested=False)


def _statements(reader: _Reader, nested: bool) -> list[Statement]:
    out: list[Statement] = []
    while True:
        reader.skip_space()
        if reader.at_end():
            if nested:
                out.append(_error(reader, reader.pos, "a '{' block is not closed"))
            return out
        if reader.peek() == "}":
            reader.pos += 1
            if nested:
                return out
            out.append(_error(reader, reader.pos - 1, "'}' without a '{'"))
            continue
        start = reader.pos
        try:
            out.append(_statement(reader))
        except _Unreadable as exc:
            out.append(_error(reader, start, str(exc)))
            reader.pos = start
            reader.rest_of_line()
        if reader.pos <= start:  # always move on
            reader.pos = start + 1


def _error(reader: _Reader, pos: int, why: str) -> Statement:
    return Statement(kind="error", line=reader.line_of(pos), text=reader.line_text(pos), value=why)


def _statement(reader: _Reader) -> Statement:
    start = reader.pos
    line, text = reader.line_of(start), reader.line_text(start)
    c = reader.peek()
    if c == "$":
        body = _strip_comment(reader.rest_of_line()).strip()[1:]
        name, _, value = body.partition(" ") if " " in body else body.partition("\t")
        return Statement(
            kind="directive", line=line, text=text, name=name.lower(), value=value.strip()
        )
    if c == "&":
        reader.pos += 1
        return _rule(reader, "&", line, text)
    if c == ":":
        return _rule(reader, _property_filter(reader), line, text)
    if c == "~":
        reader.pos += 1
        return Statement(kind="rule", line=line, text=text, action="stop")
    word = reader.word()
    lower = word.lower()
    after = reader.pos
    reader.skip_space()
    if lower in OBJECTS and reader.peek() == "(":
        return _object(reader, lower, line, text)
    if lower == "stop":
        return Statement(kind="rule", line=line, text=text, action="stop")
    if lower == "if":
        _skip_condition(reader)
        return Statement(kind="error", line=line, text=text, value="if")
    if lower in SCRIPT_WORDS:
        _skip_script(reader)
        return Statement(kind="error", line=line, text=text, value=f"script:{lower}")
    reader.pos = start
    selector = _selector_text(reader)
    if not selector:
        reader.pos = after if after > start else start + 1
        raise _Unreadable(f"cannot read {text[:40]!r}")
    return _rule(reader, selector, line, text)


def _selector_text(reader: _Reader) -> str:
    start = reader.pos
    while reader.pos < len(reader.text) and reader.text[reader.pos] not in " \t\r\n":
        reader.pos += 1
    return reader.text[start : reader.pos]


def _property_filter(reader: _Reader) -> str:
    """``:property, [!]operation, "value"`` (the reader is on the ``:``)."""
    start = reader.pos
    reader.pos += 1
    for _ in range(2):
        comma = reader.text.find(",", reader.pos)
        newline = reader.text.find("\n", reader.pos)
        if comma < 0 or (0 <= newline < comma):
            raise _Unreadable("a property filter needs ':property, operation, \"value\"'")
        reader.pos = comma + 1
    reader.skip_space(newlines=False)
    if reader.peek() != '"':
        raise _Unreadable('a property filter\'s value must be quoted ("...")')
    reader.string()
    return reader.text[start : reader.pos]


def _rule(reader: _Reader, selector: str, line: int, text: str) -> Statement:
    reader.skip_space(newlines=False)
    if reader.at_end() or reader.peek() in ("\n", "#"):
        raise _Unreadable("a filter without an action")
    start = reader.pos
    word = reader.word().lower()
    reader.skip_space(newlines=False)
    if word == "action" and reader.peek() == "(":
        action = _object(reader, "action", line, text)
        return Statement(kind="rule", line=line, text=text, selector=selector, body=(action,))
    if word == "stop" and reader.peek() in ("", "\n", "#"):
        return Statement(kind="rule", line=line, text=text, selector=selector, action="stop")
    reader.pos = start
    if reader.peek() == "{":
        reader.skip_block()
        return Statement(kind="error", line=line, text=text, value="block")
    legacy = _strip_comment(reader.rest_of_line(continuation=True)).strip()
    if legacy == "~":
        legacy = "stop"
    return Statement(kind="rule", line=line, text=text, selector=selector, action=legacy)


def _strip_comment(line: str) -> str:
    """A legacy line ends where a ``#`` after white space, outside quotes,
    starts a comment."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif c == "#" and not quoted and i > 0 and line[i - 1] in " \t":
            return line[:i]
    return line


def _object(reader: _Reader, name: str, line: int, text: str) -> Statement:
    reader.pos += 1  # the "("
    params = reader.params()
    body: tuple[Statement, ...] = ()
    if name in ("ruleset", "template"):
        save = reader.pos
        reader.skip_space()
        if reader.peek() == "{":
            reader.pos += 1
            body = tuple(_statements(reader, nested=True))
        else:
            reader.pos = save
    return Statement(kind="object", line=line, text=text, name=name, params=params, body=body)


def _skip_condition(reader: _Reader) -> None:
    """Skip ``if EXPR then STATEMENT [else STATEMENT]``: the reader is after ``if``."""
    while not reader.at_end():
        reader.skip_space()
        c = reader.peek()
        if c in ('"', "'"):
            reader.string()
        elif c.isalpha():
            if reader.word().lower() == "then":
                break
        else:
            reader.pos += 1
    _skip_one(reader)
    save = reader.pos
    reader.skip_space()
    if reader.word().lower() == "else":
        _skip_one(reader)
    else:
        reader.pos = save


def _skip_one(reader: _Reader) -> None:
    """Skip what follows ``then`` or ``else``: a block, an action() or a legacy action."""
    reader.skip_space()
    start = reader.pos
    if reader.peek() == "{":
        reader.skip_block()
        return
    word = reader.word().lower()
    reader.skip_space(newlines=False)
    if word == "action" and reader.peek() == "(":
        reader.pos += 1
        reader.params()
        return
    reader.pos = start
    reader.rest_of_line(continuation=True)


def _skip_script(reader: _Reader) -> None:
    """Skip a ``set``/``call``/... statement: to its ``;``, or the end of the line."""
    while not reader.at_end():
        c = reader.peek()
        if c in ('"', "'"):
            reader.string()
        elif c in (";", "\n"):
            reader.pos += 1
            return
        elif c == "{":
            reader.skip_block()
            return
        else:
            reader.pos += 1


def unquote(text: str) -> str | None:
    """The quoted string that ``text`` starts with (escapes read), or None."""
    reader = _Reader(text.strip())
    if reader.peek() not in ('"', "'") or reader.at_end():
        return None
    try:
        return reader.string()
    except _Unreadable:
        return None

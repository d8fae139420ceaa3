"""rsyslog's value types (booleans, numbers, sizes, octal modes) and the
problem list every part of the converter writes to."""

from __future__ import annotations

import dataclasses

from relay.errors import RelayError

_SIZE_UNITS = "kmgtpe"


class ValueProblem(RelayError, ValueError):
    """A value rsyslog would not take (the converter lists it and goes on)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """One line the converter could not convert, and why."""

    source: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.why}"


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """Where a statement was written: file, line and its text."""

    source: str
    line: int
    text: str


def boolean(text: str) -> bool:
    """rsyslog's on/off (RainerScript also takes yes/no and 1/0)."""
    lower = text.strip().lower()
    if lower in ("on", "yes", "1", "true"):
        return True
    if lower in ("off", "no", "0", "false"):
        return False
    raise ValueProblem(f"{text!r} is not on or off")


def number(text: str) -> int:
    """A number as rsyslog reads it: '.' and ',' are ignored, '-' may lead."""
    body = text.strip().replace(".", "").replace(",", "")
    sign = -1 if body.startswith("-") else 1
    digits = body.lstrip("-")
    if not digits.isdigit():
        raise ValueProblem(f"{text!r} is not a number")
    return sign * int(digits)


def size(text: str) -> int:
    """A size: k, m, g ... are powers of 1024, K, M, G ... of 1000 (rsyslog's doc,
    "Configuration Parameter Types")."""
    body = text.strip()
    unit = body[-1:] if body[-1:].lower() in _SIZE_UNITS else ""
    count = number(body[: len(body) - len(unit)])
    if unit:
        base = 1024 if unit.islower() else 1000
        count *= base ** (_SIZE_UNITS.index(unit.lower()) + 1)
    return count


def mode(text: str) -> int:
    """An octal file mode such as 0640."""
    body = text.strip()
    if not body or any(c not in "01234567" for c in body) or int(body, 8) > 0o7777:
        raise ValueProblem(f"{text!r} is not an octal mode such as 0640")
    return int(body, 8)


def mode_text(value: int) -> str:
    return f"{value:04o}"

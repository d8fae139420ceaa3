"""The one error hierarchy.

Every error the relay raises on purpose is a :class:`RelayError`. OS and trio
errors are translated into these at the edge of each layer, so that the CLI can
print one clear line for a user mistake instead of a traceback.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A mistake in the configuration, pointing at the key (and line) to fix.

    ``key`` is the dotted path of the offending setting, e.g. ``input.udp.url``;
    ``line`` is the 1-based line in ``source`` where the key appears, when known.
    """

    def __init__(
        self, message: str, *, key: str = "", source: str = "", line: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.source = source
        self.line = line

    def __str__(self) -> str:
        where = self.source
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        parts = [p for p in (where, self.key) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigErrors(RelayError):
    """Several configuration mistakes found in one pass (``relay check`` lists all)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class StartupError(RelayError):
    """The relay cannot start: a port in use, no permission, a missing directory."""


# Why an input cannot listen when its port is taken: the same words for every
# transport, so that one search of the log finds them all.
ADDRESS_IN_USE = "address already in use (is another syslog daemon running?)"


class ParseError(RelayError):
    """Bytes that are not a valid message of the format asked for."""


class LocalProtocolError(RelayError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(RelayError):
    """The peer did something the protocol does not allow."""

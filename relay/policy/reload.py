"""What a reload changes: the running config against the one just read.

Inputs and outputs are matched by name and compared by value (the config is
made of frozen dataclasses): an input or output whose settings are all the
same is *kept* (its sockets, sessions and spool are not touched); one whose
settings differ is *changed* (rebuilt; an output keeps its spool, which is
named after it); the rest are *added* or *removed*.

``[relay]`` settings are read once, at the start: the state directory (where
the lock and the spools are), the user and group (root is gone), and any
other that is not applied at run time. A change to one is reported as needing
a restart and otherwise ignored: the config run after the reload keeps the
old value. ``stop_timeout`` and ``log_level`` apply at once. TLS profiles are
part of the inputs and outputs that use them.

Pure: values in, values out (relay/app.py does what the plan says).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

from relay.config import Config, InputConfig, OutputConfig

# Config fields a reload applies: the endpoints, and what is read at each use.
# Every other field (state_dir, user, group, and any added later) is read at
# the start only.
APPLIED = frozenset({"inputs", "outputs", "tls", "stop_timeout", "log_level"})
# Fields that say where the config came from, not what it is.
ORIGIN = frozenset({"source", "path"})


T = TypeVar("T", InputConfig, OutputConfig)


@dataclasses.dataclass(frozen=True, slots=True)
class Changes(Generic[T]):
    """Inputs or outputs by what a reload does to them, each in the new config's order."""

    kept: tuple[T, ...] = ()
    changed: tuple[tuple[T, T], ...] = ()  # (running, new)
    added: tuple[T, ...] = ()
    removed: tuple[T, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def describe(self, kind: str) -> str:
        """``outputs: added c; changed b; removed d; 1 kept`` (what changed only)."""
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", [c.name for c in self.added]),
                ("changed", [new.name for _, new in self.changed]),
                ("removed", [c.name for c in self.removed]),
            )
            if names
        ]
        if self.kept:
            parts.append(f"{len(self.kept)} unchanged")
        return f"{kind}: {'; '.join(parts) or 'none'}"


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadPlan:
    inputs: Changes[InputConfig]
    outputs: Changes[OutputConfig]
    # One line per [relay] setting that changed and needs a restart.
    restart: tuple[str, ...]
    # What runs after the reload: the new config, with the settings that need
    # a restart as they were.
    config: Config

    @property
    def any(self) -> bool:
        """Whether any input or output changes."""
        return self.inputs.any or self.outputs.any

    def describe(self) -> str:
        return f"{self.inputs.describe('inputs')}; {self.outputs.describe('outputs')}"


def changes(running: Sequence[T], new: Sequence[T]) -> Changes[T]:
    """``running`` against ``new``, matched by name."""
    before = {c.name: c for c in running}
    after = {c.name for c in new}
    kept = tuple(c for c in new if before.get(c.name) == c)
    changed = tuple((before[c.name], c) for c in new if c.name in before and before[c.name] != c)
    added = tuple(c for c in new if c.name not in before)
    removed = tuple(c for c in running if c.name not in after)
    return Changes(kept, changed, added, removed)


def plan(running: Config, new: Config) -> ReloadPlan:
    """What reloading ``new`` over ``running`` does."""
    restart: list[str] = []
    keep: dict[str, object] = {}
    for field in dataclasses.fields(Config):
        name = field.name
        if name in APPLIED or name in ORIGIN:
            continue
        old_value, new_value = getattr(running, name), getattr(new, name)
        if old_value != new_value:
            restart.append(
                f"[relay] {name} changed from {_shown(old_value)} to {_shown(new_value)}: "
                "that needs a restart; until then it stays as it was"
            )
            keep[name] = old_value
    return ReloadPlan(
        inputs=changes(running.inputs, new.inputs),
        outputs=changes(running.outputs, new.outputs),
        restart=tuple(restart),
        config=dataclasses.replace(new, **keep),  # type: ignore[arg-type]
    )


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)

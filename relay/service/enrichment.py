"""What an output that writes JSON adds about this host, read once at start.

:func:`json_options` turns an output's :class:`~relay.jsonsettings.JsonSettings`
into the :class:`~relay.protocol.jsonform.JsonOptions` its encoder takes: the
host's name (``socket.gethostname()``), its ``/etc/machine-id`` and its kernel
release (``os.uname().release``), only those configured, and the static labels.
An output calls it in ``open()``, so a missing machine id is one
:class:`~relay.errors.StartupError` line at start (and at a reload), never a
failure per batch.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from relay.errors import StartupError
from relay.jsonsettings import JsonSettings
from relay.protocol.jsonform import Enrichment, JsonOptions

__all__ = ["MACHINE_ID", "json_options"]

MACHINE_ID = Path("/etc/machine-id")  # machine-id(5)


def json_options(
    settings: JsonSettings, *, output: str, machine_id: Path | None = None
) -> JsonOptions:
    """The encoder's options for output ``output``; StartupError if a host fact
    it asks for cannot be read."""
    host: dict[str, str] = {}
    for name in settings.host_fields:
        if name == "name":
            host[name] = socket.gethostname()
        elif name == "machine_id":
            host[name] = _machine_id(machine_id or MACHINE_ID, output)
        elif name == "kernel":
            host[name] = os.uname().release
    labels = dict(settings.labels)
    enrichment = Enrichment(host, labels) if host or labels else None
    return JsonOptions(enrichment=enrichment, parse_message=settings.parse_message)


def _machine_id(path: Path, output: str) -> str:
    why = "it is empty"
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        why = exc.strerror or str(exc)
        text = ""
    if not text:
        raise StartupError(
            f"output {output}: host_fields has machine_id but {path} cannot be read: {why} "
            "(systemd-machine-id-setup creates it; or leave machine_id out)"
        )
    return text

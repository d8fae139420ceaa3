"""relay/service/enrichment.py: the host facts an output adds, read once at start."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from relay.errors import StartupError
from relay.jsonsettings import JsonSettings
from relay.protocol.jsonform import Enrichment, JsonOptions
from relay.service.enrichment import json_options


def test_only_the_configured_host_fields_in_their_order(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    settings = JsonSettings(host_fields=("kernel", "machine_id", "name"), labels=(("env", "prod"),))
    options = json_options(settings, output="o", machine_id=machine_id)
    assert options == JsonOptions(
        Enrichment(
            {
                "kernel": os.uname().release,
                "machine_id": "0123456789abcdef0123456789abcdef",
                "name": socket.gethostname(),
            },
            {"env": "prod"},
        )
    )
    assert list(options.enrichment.host) == ["kernel", "machine_id", "name"]  # type: ignore[union-attr]


def test_nothing_configured_is_no_enrichment() -> None:
    assert json_options(JsonSettings(parse_message="app"), output="o") == JsonOptions(
        parse_message="app"
    )


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_machine_id_is_one_line(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "machine-id"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StartupError) as caught:
        json_options(JsonSettings(host_fields=("machine_id",)), output="api", machine_id=path)
    why = "No such file or directory" if content is None else "it is empty"
    assert str(caught.value) == (
        f"output api: host_fields has machine_id but {path} cannot be read: {why} "
        "(systemd-machine-id-setup creates it; or leave machine_id out)"
    )


def test_machine_id_is_not_read_unless_asked(tmp_path: Path) -> None:
    settings = JsonSettings(host_fields=("name",))
    options = json_options(settings, output="o", machine_id=tmp_path / "absent")
    assert options.enrichment == Enrichment({"name": socket.gethostname()}, {})

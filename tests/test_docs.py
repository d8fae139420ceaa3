"""The man pages tell the truth: every command, option and setting is there,
and they render without warnings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from relay import cli, config

MAN = Path(__file__).resolve().parent.parent / "man"


def man_text(page: str) -> str:
    return (MAN / page).read_text().replace("\\-", "-")


def options() -> list[tuple[str, str]]:
    found = []
    for name, command in cli.main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                found += [(name, opt) for opt in param.opts if opt.startswith("--")]
    return found


@pytest.mark.parametrize(("command", "option"), options())
def test_every_option_is_in_relay_8(command: str, option: str) -> None:
    text = man_text("relay.8")
    assert f"relay {command}" in text
    assert option in text


SETTINGS = sorted(
    {k for keys in config.INPUT_KEYS.values() for k in keys}
    | {k for keys in config.OUTPUT_KEYS.values() for k in keys}
    | set(config.TLS_KEYS)
    | {"state_dir", "stop_timeout", "log_level"}
)


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_is_in_relay_toml_5(setting: str) -> None:
    assert setting in man_text("relay.toml.5")


@pytest.mark.parametrize("page", ["relay.8", "relay.toml.5"])
def test_pages_render_without_warnings(page: str) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is missing: apt-get install groff-base (scripts/test does)")
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stderr == ""

"""The man pages tell the truth: every command, option and setting is there,
and they render without warnings."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from relay import cli, config

MAN = Path(__file__).resolve().parent.parent / "man"


def man_text(page: str) -> str:
    return (MAN / page).read_text().replace("\\-", "-")


def whole(name: str) -> re.Pattern[str]:
    """``name`` as a whole word: not part of a longer option or key."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


def section(text: str, title: str) -> str:
    """The text of the ``.SS title`` subsection of a man page."""
    found = re.search(rf"^\.SS {re.escape(title)}\n(.*?)(?=^\.S[SH] |\Z)", text, re.S | re.M)
    assert found, f"no .SS {title}"
    return found.group(1)


def terms(text: str) -> set[str]:
    """The words a man page defines: the first word of each .TP/.TQ item."""
    lines = text.splitlines()
    found = set()
    for head, line in itertools.pairwise(lines):
        term = re.match(r"\.(?:B|BR|BI) (\S+)", line)
        if head in (".TP", ".TQ") and term:
            found.add(term.group(1))
    return found


def options() -> list[tuple[str, str, tuple[str, ...]]]:
    """(command, long option, all its names) for every option of every command."""
    found = []
    for name, command in cli.main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                found += [
                    (name, opt, tuple(param.opts)) for opt in param.opts if opt.startswith("--")
                ]
    return found


@pytest.mark.parametrize(("command", "option", "names"), options())
def test_every_option_is_in_relay_8(command: str, option: str, names: tuple[str, ...]) -> None:
    text = man_text("relay.8")
    assert whole(option).search(text)
    # In the command's own section, by one of its names (relay check: "-c").
    assert any(whole(name).search(section(text, f"relay {command}")) for name in names)


SETTINGS = sorted(
    {k for keys in config.INPUT_KEYS.values() for k in keys}
    | {k for keys in config.OUTPUT_KEYS.values() for k in keys}
    | set(config.TLS_KEYS)
    | {"state_dir", "stop_timeout", "log_level"}
)


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_is_in_relay_toml_5(setting: str) -> None:
    assert setting in terms(man_text("relay.toml.5"))


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

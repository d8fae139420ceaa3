"""The man pages tell the truth: every command, option and setting is there,
and they render without warnings."""

from __future__ import annotations

import importlib
import itertools
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

import relay
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
    | set(config.RELAY_KEYS)
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


def _scheme_lists(text: str, opening: str) -> dict[str, set[str]]:
    """The per-scheme key lists of relay.toml(5) after ``opening``: one ``.TP``
    item per scheme (or "every output"), whose body lists keys in bold, names
    another scheme with "as SCHEME://", or says "the settings every output
    takes"."""
    lines = text[text.index(opening) :].splitlines()
    items: list[tuple[list[str], list[str]]] = []
    for i, line in enumerate(lines):
        if line != ".TP":
            continue
        header = lines[i + 1]
        schemes = re.findall(r"([a-z+]+)://", header)
        if header == "every output":
            schemes = ["*"]
        if not schemes or '" (' in header:  # a setting's own entry: the lists are over
            if items:
                break
            continue
        body = list(itertools.takewhile(lambda s: s not in (".TP", ".PP"), lines[i + 2 :]))
        items.append((schemes, body))
    lists: dict[str, set[str]] = {}
    for schemes, body in items:
        keys: set[str] = set()
        for line in body:
            if line.startswith((".B ", ".BR ")):
                keys.add(line.split()[1])
            keys |= {f"={scheme}" for scheme in re.findall(r"^as ([a-z+]+)://", line)}
            if "the settings every output takes" in line:
                keys.add("=*")
        lists.update(dict.fromkeys(schemes, keys))
    for keys in lists.values():  # "as tcp://": tcp's keys; several levels deep
        while refs := {k for k in keys if k.startswith("=")}:
            keys -= refs
            for ref in refs:
                keys |= lists.get(ref[1:], {f"{ref[1:]}:// (not listed)"})
    lists.pop("*", None)
    return lists


@pytest.mark.parametrize(
    ("role", "table"), [("input", config.INPUT_KEYS), ("output", config.OUTPUT_KEYS)]
)
def test_relay_toml_5_lists_the_keys_of_each_scheme(
    role: str, table: dict[str, tuple[str, ...]]
) -> None:
    opening = f"Which other settings an {role} takes depends on the scheme"
    listed = _scheme_lists(man_text("relay.toml.5"), opening)
    assert listed == {scheme: set(keys) - {"url"} for scheme, keys in table.items()}


def _counter_names() -> set[str]:
    """Every counter relay keeps: the ``*COUNTERS`` tuples of every module."""
    names: set[str] = set()
    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name.endswith(".__main__"):  # importing it runs the command
            continue
        module = importlib.import_module(info.name)
        for attribute, value in vars(module).items():
            if attribute.endswith("COUNTERS") and isinstance(value, tuple):
                names.update(value)
    return names


def test_relay_8_explains_every_counter() -> None:
    page = man_text("relay.8")
    counters = page[page.index(".SS Counters") : page.index(".SH COMMANDS")]
    documented = set(re.findall(r"^\.BR? (\w+)", counters, re.MULTILINE))
    categories = set(re.findall(r"^\.BR? (\w+)", man_text("relay.toml.5"), re.MULTILINE))
    names = _counter_names()
    assert {"received", "queued", "written_to_disk", "tls_failures"} <= names  # the walk works
    for name in sorted(names):
        if name.startswith("tls_") and name != "tls_failures":
            # tls_CATEGORY in relay(8); the categories in relay.toml(5)
            assert name.removeprefix("tls_") in categories, name
        else:
            assert name in documented, name


ROOT = MAN.parent
# Documents that live outside the repository (the team's notes): a reader of
# the repository alone cannot follow a citation of them. Cite docs/ instead.
OUTSIDE = re.compile(
    r"/work/|PEERS\.md|PAIN-POINTS|STYLE\.md|Done when \d|(?<!docs/)\b(ARCHITECTURE|TESTING)\.md"
)
# Inside docs/ the two are cited by their own names (they sit side by side).
OUTSIDE_IN_DOCS = re.compile(r"/work/|PEERS\.md|PAIN-POINTS|STYLE\.md|Done when \d")


def _repository_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "setup.cfg", ROOT / "pyproject.toml"]
    for folder in ("relay", "tests", "scripts", "etc", "man", "docs", ".ci"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file()]
    return [p for p in files if p.suffix != ".pyc" and p != Path(__file__).resolve()]


def test_nothing_cites_a_document_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _repository_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if (OUTSIDE_IN_DOCS if path.parent == ROOT / "docs" else OUTSIDE).search(line)
    ]
    assert cited == []


def test_every_cited_doc_exists() -> None:
    for path in _repository_text_files():
        for name in re.findall(r"docs/([A-Z]+\.md)", path.read_text(errors="replace")):
            assert (ROOT / "docs" / name).is_file(), f"{path.relative_to(ROOT)} cites docs/{name}"

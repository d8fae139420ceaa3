"""`relay check` over mutated configs: one line per mistake, never a traceback.

The seeds are the example configs in etc/ and configs the other tests use
(one with real certificate files, so that mutants also reach the code that
reads them). Each mutant is a few byte- or character-level edits of a seed:
a character flipped, something odd inserted (NUL, quotes, brackets, huge or
non-finite numbers, over-long names), a span deleted, a line duplicated or
dropped, the values of two keys swapped, a value replaced. The check runs in
process (click's CliRunner), seeded, so the same mutants run every time.
"""

from __future__ import annotations

import random
from pathlib import Path

from click.testing import CliRunner

from relay.cli import main
from tests.test_config import BROKEN, TLS_CONFIG
from tests.tlshelpers import Pki

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = 600
SEED = 20240611

INSERTS = [
    "\\u0000", "\0", '"', "'", '"""', "[", "]", "[[", "{", "}", "=", ",", ".", "\n", "#", "\\",
    "\\n", " ", "/", ":", "@", "%", "99999999999999999999999999999", "1e999", "-1", "nan", "inf",
    "-inf", "0x7fffffffffffffff", "true", "1979-05-27T07:32:00Z", "x" * 300, "\u00e9", "\ufeff",
]  # fmt: skip
VALUES = [
    '"/srv/relay\\u0000x"', '"/tmp/a\\nb"', '"/' + "d" * 300 + '"', '"/' + "p/" * 2100 + '"',
    '"unix:///run/' + "s" * 120 + '"', '"unix:///run/\\u0000"', '"file:///var/log/\\u0000"',
    '"file:-"', '"unix:-"', '"tcp://a..b:514"', '"tcp://[::1"', '"tcp://[fe80::1%25x]:1"',
    '"tcp://a b:1"', '"udp://\\u0000:514"', '"tls://xn--:1"', '"relp+tls://h"', '"tcp://h:0"',
    '"tcp://h:99999999999999999999"', '"tcp://u@h:1"', '"tcp://[1.2.3.4]:1"', '"9 TiB"',
    '"99999999999999999999 TiB"', "1e400", "nan", "-inf", "-0.0", "0", "-1", "9" * 40,
    "true", "[]", "{}", '["a", 1]', "1979-05-27", '""', '"' + "x" * 5000 + '"', '"\\u00e9"',
]  # fmt: skip


def seeds(pki: Pki, tmp_path: Path) -> list[str]:
    texts = [path.read_text() for path in sorted((ROOT / "etc").glob("*.toml"))]
    texts += [BROKEN, TLS_CONFIG.format(fp="ab" * 32)]
    files = pki.server
    texts.append(f"""\
[relay]
state_dir = "{tmp_path / "state"}"

[tls.listener]
cert = "{files.cert}"
key = "{files.key}"
ca = "{files.ca}"
permitted_peers = ["client.example.net"]
ciphers = "ECDHE+AESGCM"

[input.in]
url = "relp+tls://127.0.0.1:20514"
tls = "listener"

[input.log]
url = "unix://{tmp_path / "log"}"

[output.central]
targets = ["tls://127.0.0.1:6514", "tls://[::1]:6514"]
mode = "loadbalance"
tls = "listener"

[output.copy]
url = "file://{tmp_path / "all.log"}"
format = "octet-counted"
""")
    return texts


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATIONS)(text, rng)
    return text


def _flip(text: str, rng: random.Random) -> str:
    at = rng.randrange(len(text) or 1)
    return (
        text[:at] + chr(rng.choice([rng.randrange(128), rng.randrange(0x110000)])) + text[at + 1 :]
    )


def _insert(text: str, rng: random.Random) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(INSERTS) + text[at:]


def _delete(text: str, rng: random.Random) -> str:
    at = rng.randrange(len(text) or 1)
    return text[:at] + text[at + rng.randint(1, 40) :]


def _duplicate_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    at = rng.randrange(len(lines))
    lines.insert(at, lines[at])
    return "\n".join(lines)


def _drop_line(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def _settings(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if "=" in line and not line.startswith("#")]


def _swap_values(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    settings = _settings(lines)
    if len(settings) < 2:
        return text
    a, b = rng.sample(settings, 2)
    (key_a, value_a), (key_b, value_b) = lines[a].split("=", 1), lines[b].split("=", 1)
    lines[a], lines[b] = f"{key_a}={value_b}", f"{key_b}={value_a}"
    return "\n".join(lines)


def _replace_value(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    settings = _settings(lines)
    if not settings:
        return text
    at = rng.choice(settings)
    lines[at] = lines[at].split("=", 1)[0] + "= " + rng.choice(VALUES)
    return "\n".join(lines)


MUTATIONS = [  # weighted towards edits that keep the TOML valid and reach the validation
    _flip, _insert, _delete, _duplicate_line, _drop_line, _swap_values, _swap_values,
    _replace_value, _replace_value, _replace_value, _replace_value,
]  # fmt: skip


def test_check_never_crashes_on_a_mutated_config(pki: Pki, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    texts = seeds(pki, tmp_path)
    runner = CliRunner()
    path = tmp_path / "relay.toml"
    outcomes = {0: 0, 1: 0}
    for n in range(MUTANTS):
        text = mutate(rng.choice(texts), rng)
        # One in ten is not UTF-8 (a lone surrogate, written as its raw bytes).
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        if n % 10 == 0:
            path.write_bytes(path.read_bytes() + b"\xff\xfe")
        result = runner.invoke(main, ["check", "-c", str(path)])
        what = f"mutant {n}:\n{text}\n--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}"
        assert result.exception is None or isinstance(result.exception, SystemExit), what
        assert result.exit_code in (0, 1), what
        assert "Traceback" not in result.output, what
        if result.exit_code == 0:
            assert ": ok: " in result.stdout, what
        else:  # one line per mistake, each naming where it is
            lines = result.stderr.splitlines()
            assert lines and all(line.startswith("relay: error: ") for line in lines), what
        outcomes[result.exit_code] += 1
    # Enough of them are still valid TOML, and valid configs, to reach every check.
    assert outcomes[0] >= MUTANTS // 20, outcomes

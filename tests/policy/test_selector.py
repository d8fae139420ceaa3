"""relay/policy/selector.py with plain values; rsyslog itself is in tests/interop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ParseError
from relay.policy.selector import (
    DEFAULT_PRI,
    PRI_COUNT,
    SelectorError,
    parse_selector,
    pri_of,
)

MAIL, AUTH, AUTHPRIV, LOCAL7 = 2, 4, 10, 23
EMERG, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = 0, 2, 3, 4, 5, 6, 7


def pris(facilities: range | list[int], severities: range | list[int]) -> frozenset[int]:
    return frozenset(f * 8 + s for f in facilities for s in severities)


ALL_FAC = range(24)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*.*", pris(ALL_FAC, range(8))),
        ("*.info", pris(ALL_FAC, range(INFO + 1))),
        ("*.none", frozenset()),
        ("kern.=warning", pris([0], [WARNING])),
        ("*.!=debug", frozenset()),
        ("*.*;*.!=debug", pris(ALL_FAC, range(DEBUG))),
        ("mail.!info", frozenset()),
        ("mail.*;mail.!info", pris([MAIL], [DEBUG])),
        ("mail.!none", pris([MAIL], range(8))),
        ("auth,authpriv.*", pris([AUTH, AUTHPRIV], range(8))),
        ("mail,news.=crit", pris([MAIL, 7], [CRIT])),
        ("local7.*;local7.!=debug", pris([LOCAL7], range(DEBUG))),
        (
            "*.info;mail.none;authpriv.*",
            pris([f for f in ALL_FAC if f not in (MAIL, AUTHPRIV)], range(INFO + 1))
            | pris([AUTHPRIV], range(8)),
        ),
        ("security.warn", pris([AUTH], range(WARNING + 1))),
        ("*.panic", pris(ALL_FAC, [EMERG])),
        ("mail.error", pris([MAIL], range(ERR + 1))),
        ("MAIL.INFO", pris([MAIL], range(INFO + 1))),
        ("kern,16.*", pris([0, MAIL], range(8))),  # 16 is LOG_MAIL
        ("mail.16", frozenset()),  # 16 is rsyslog's "none"
        ("mail.12", pris([MAIL], range(8))),
        ("mail.=12", frozenset()),
        ("mail.3abc", pris([MAIL], range(ERR + 1))),
        ("mail,news;kern.info", pris([MAIL, 7], range(INFO + 1))),
        ("mail.info,news.crit", pris([MAIL], range(INFO + 1)) | pris([7], range(CRIT + 1))),
        ("mark.*", frozenset()),
        ("*mail.=info", pris(ALL_FAC, [INFO])),
    ],
)
def test_selects(text: str, expected: frozenset[int]) -> None:
    assert parse_selector(text).privals() == expected


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "empty"),
        (" mail.info", 0, "facility name"),
        ("mail", 4, "'.' or ','"),
        ("local8.*", 5, "'.' or ','"),
        ("mail.", 5, "priority"),
        ("mail.info /x", 9, "unexpected character ' '"),
        ("mail.bogus", 5, "unknown priority name 'bogus'"),
        ("*.info;bogus.crit", 7, "unknown facility name 'bogus'"),
        ("mail,news", 9, "priority"),
        ("mail.info;", 9, "trailing ';'"),
        ("mail.=*", 6, "'=*'"),
        ("mail.!=40", 7, "40"),
        ("kern,300.*", 5, "above 207"),
    ],
)
def test_refuses_with_position(text: str, position: int, words: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert caught.value.position == position
    assert words in caught.value.message
    assert f"offset {position}" in str(caught.value)
    assert isinstance(caught.value, ParseError)
    assert isinstance(caught.value, ValueError)


def test_a_message_without_a_valid_pri_is_user_notice() -> None:
    assert DEFAULT_PRI == 1 * 8 + NOTICE
    only = parse_selector("user.=notice")
    for raw in (b"no pri at all", b"", b"<abc>x", b"<200>x", b"<013>x"):
        assert pri_of(raw) == DEFAULT_PRI
        assert only.matches(raw)
    assert not only.matches(b"<14>x")


def test_matches_everything_and_nothing() -> None:
    assert parse_selector("*.*").matches_everything
    assert parse_selector("*.debug").matches_everything
    assert not parse_selector("*.info").matches_everything
    assert parse_selector("*.none").matches_nothing
    assert not parse_selector("mail.=crit").matches_nothing


names = st.sampled_from(["mail", "auth", "local7", "*", "kern", "news"])
levels = st.sampled_from(["emerg", "crit", "err", "warning", "info", "debug", "*", "none"])
parts = st.tuples(
    st.lists(names, min_size=1, max_size=3), st.sampled_from(["", "!", "=", "!="]), levels
)


@given(st.lists(parts, min_size=1, max_size=4), st.integers(0, PRI_COUNT - 1))
def test_each_part_decides_only_for_its_facilities(
    given_parts: list[tuple[list[str], str, str]], pri: int
) -> None:
    """A reference model: later parts set or clear bits of earlier ones."""
    text = ";".join(f"{','.join(f)}.{prefix}{level}" for f, prefix, level in given_parts)
    codes = {"mail": 2, "auth": 4, "local7": 23, "kern": 0, "news": 7}
    ranks = {"emerg": 0, "crit": 2, "err": 3, "warning": 4, "info": 6, "debug": 7}
    facility, severity = divmod(pri, 8)
    selected = False
    for facs, prefix, level in given_parts:
        if not any(f == "*" or codes[f] == facility for f in facs):
            continue
        if level == "none" or (level == "*" and "=" not in prefix):
            selected = ("!" in prefix) == (level == "none")
            continue
        if level == "*":  # "=*" is refused below
            continue
        hit = severity == ranks[level] if "=" in prefix else severity <= ranks[level]
        if hit:
            selected = "!" not in prefix
    if any(level == "*" and "=" in prefix for _, prefix, level in given_parts):
        with pytest.raises(SelectorError):
            parse_selector(text)
        return
    assert parse_selector(text).matches_pri(pri) == selected


@given(st.text(alphabet="*.,;!=aeilmnortu0123457 ", max_size=20))
def test_any_text_parses_or_raises_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as e:
        assert 0 <= e.position <= len(text)
    else:
        assert len(selector.table) == PRI_COUNT
        assert set(selector.table) <= {0, 1}

"""relay/importer/selectors.py: a PRI set written back as a selector that
relay's filter (rsyslog's reading) takes to exactly that set."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.importer.selectors import ALL, minus, render, table
from relay.policy.selector import PRI_COUNT


@pytest.mark.parametrize(
    ("selector", "written"),
    [
        ("*.*", "*.*"),
        ("*.none", "*.none"),
        ("*.info", "*.info"),
        ("mail.*", "mail.*"),
        ("*.*;auth,authpriv.none", "*.*;auth,authpriv.none"),
        ("kern.=warning", "kern.=warning"),
        ("*.info;mail.none", "*.info;mail.none"),
    ],
)
def test_plain_selectors_come_back_as_written(selector: str, written: str) -> None:
    assert render(table(selector)) == written


def test_unnamed_facilities_are_written_as_numbers() -> None:
    # Facilities 13 and 15 have no name in rsyslog: their code (13 * 8) stands in.
    pris = bytes(1 if p >> 3 == 13 else 0 for p in range(PRI_COUNT))
    assert render(pris) == "*.none;104.*"
    assert table(render(pris)) == pris


@given(st.binary(min_size=PRI_COUNT, max_size=PRI_COUNT).map(lambda b: bytes(x & 1 for x in b)))
def test_any_pri_set_round_trips(pris: bytes) -> None:
    assert table(render(pris)) == pris


@given(st.sampled_from(["mail.*", "*.info", "kern,auth.!err", "*.=debug", "*.none"]))
def test_minus_removes_exactly(removed: str) -> None:
    rest = minus(ALL, table(removed))
    assert table(render(rest)) == rest
    assert all(a != b for a, b in zip(rest, table(removed), strict=True))

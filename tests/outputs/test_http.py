"""relay/outputs/http.py: the token file and how a take is cut into requests.

What the output does with each answer is proven against real peers (nginx and
a recording API) in tests/interop/test_http_output.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Endpoint, OutputConfig
from relay.errors import StartupError
from relay.outputs.http import HttpOutput, _Token
from relay.policy.http import HttpSettings
from relay.spool import spool as spools
from relay.spool.settings import SpoolSettings
from relay.spool.spool import Spool
from relay.stats import Counters


def test_token_is_read_and_refused_when_others_may_read_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc\n")
    path.chmod(0o600)
    token = _Token(str(path))
    token.load()
    assert token.value == "abc"
    path.chmod(0o640)
    with pytest.raises(StartupError, match=r"readable by others \(mode 0640\); chmod 600 it"):
        _Token(str(path)).load()


def test_a_refused_replacement_keeps_the_token_read_before(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old\n")
    path.chmod(0o600)
    token = _Token(str(path))
    token.load()
    assert token.refresh() is None  # unchanged
    replacement = tmp_path / "new"
    replacement.write_text("new\n")
    replacement.chmod(0o644)
    replacement.replace(path)
    reason = token.refresh()
    assert reason is not None and "keeping the token read before" in reason
    assert "new" not in reason and token.value == "old"
    assert token.refresh() is None  # said once
    path.chmod(0o600)
    path.write_text("newer\n")
    assert token.refresh() is None
    assert token.value == "newer"


def output(tmp_path: Path, **settings: object) -> HttpOutput:
    config = OutputConfig(
        "api",
        Endpoint("http", "127.0.0.1", 8080, "/ingest"),
        http=HttpSettings(**settings),  # type: ignore[arg-type]
    )
    spool = Spool("api", SpoolSettings(), Counters("spool", "api", spools.COUNTERS))
    return HttpOutput(config, spool, Counters("output", "api", HttpOutput.COUNTERS))


def test_a_take_is_cut_by_messages_and_by_bytes(tmp_path: Path) -> None:
    records = [b"x" * 99] * 10  # 100 bytes a line with its LF
    by_count = output(tmp_path, batch_max_messages=4)
    assert by_count._requests(records) == [(0, 4), (4, 8), (8, 10)]
    by_bytes = output(tmp_path, batch_max_bytes=1024)  # 10 lines a request
    assert by_bytes._requests(records * 3) == [(0, 10), (10, 20), (20, 30)]
    assert by_count._requests(records[:4]) == [(0, 4)]
    assert by_count._requests([]) == []
    one_too_big = output(tmp_path, batch_max_bytes=1024)
    assert one_too_big._requests([b"y" * 5000, b"z"]) == [(0, 1), (1, 2)]

"""Fixtures shared by the test suite.

The interop tests (tests/interop/) meet real peers: rsyslogd with its imrelp,
omrelp and ossl modules, and util-linux ``logger``. ``scripts/test`` installs
the Debian packages they come in (rsyslog, rsyslog-relp, rsyslog-openssl,
bsdutils); a test that finds one missing fails loudly rather than skipping,
so a green run always means the peers were really met. There is deliberately
no session-wide check: each test asks for what it uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.interop.peers import RsyslogCollector, require_program
from tests.tlshelpers import Pki

# No per-example deadline: on a busy 2-core CI machine an example can take
# longer than hypothesis's default 200 ms without anything being wrong; the
# properties themselves are what the tests check.
settings.register_profile("relay", deadline=None)
settings.load_profile("relay")

__all__ = ["pki", "require_program", "rsyslog_collector"]

_BYTECODE_ENV = "RELAY_TESTS_BYTECODE"  # the directory this run made, if it made one


def pytest_configure(config: pytest.Config) -> None:
    """Let the relay processes the tests start share compiled bytecode.

    With PYTHONDONTWRITEBYTECODE set (as in many containers) each of the
    hundreds of ``python -m relay`` a run starts compiled relay/ from source
    again: 0.35 s of CPU a start. An installed relay has its .pyc files; here
    they go to a directory of this run (PYTHONPYCACHEPREFIX), not beside the
    sources, which is what PYTHONDONTWRITEBYTECODE is for. xdist's workers
    inherit it from the controller, which removes it at the end.
    """
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        return
    directory = tempfile.mkdtemp(prefix="relay-tests-pyc-")
    os.environ.pop("PYTHONDONTWRITEBYTECODE")
    os.environ.update(PYTHONPYCACHEPREFIX=directory, **{_BYTECODE_ENV: directory})


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = os.environ.pop(_BYTECODE_ENV, None)
    if directory is not None and not hasattr(config, "workerinput"):  # xdist's controller
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rsyslog_collector(tmp_path: Path) -> Iterator[RsyslogCollector]:
    """A started rsyslogd collecting imtcp, imudp and imrelp into its sink.log."""
    with RsyslogCollector(tmp_path) as collector:
        yield collector


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """The relay.tls* tests' certificates (tests/tlshelpers.py); interop has its own."""
    return Pki.create(tmp_path)

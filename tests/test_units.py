"""etc/relay.service and etc/relay-local.service, as systemd reads them.

``systemd-analyze verify`` loads each unit (the ExecStart= binary must exist:
the test points it at this machine's relay), and ``systemd-analyze security
--offline=true`` rates its hardening from the file alone, with no running
systemd. Neither starts the unit: that needs systemd as PID 1, which the
test machine does not have (relay's side of Type=notify is tested over a
real NOTIFY_SOCKET in tests/interop/test_systemd.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.peers import require_program

ETC = Path(__file__).resolve().parent.parent / "etc"

# The exposure `systemd-analyze security` gives each unit (systemd 252), with
# a little room: a change that weakens the unit must show here.
EXPOSURE = {"relay.service": 1.4, "relay-local.service": 2.1}


def relay_binary() -> str:
    beside = Path(sys.executable).with_name("relay")
    found = str(beside) if beside.exists() else shutil.which("relay")
    assert found, "the relay command is not installed (pip install -e .)"
    return found


def installed(tmp_path: Path, name: str) -> Path:
    """The unit, with ExecStart= and ExecStartPre= pointing at a relay that exists."""
    unit = tmp_path / name
    unit.write_text((ETC / name).read_text().replace("/usr/local/bin/relay", relay_binary()))
    return unit


def settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (ETC / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", sorted(EXPOSURE))
def test_systemd_analyze_verify_loads_the_unit_without_a_warning(tmp_path: Path, name: str) -> None:
    analyze = require_program("systemd-analyze", "systemd")
    # --man=no: the man pages named in Documentation= are not installed here.
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(installed(tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(("name", "most"), sorted(EXPOSURE.items()))
def test_systemd_analyze_security_exposure(tmp_path: Path, name: str, most: float) -> None:
    analyze = require_program("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(installed(tmp_path, name))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", result.stdout)
    assert result.returncode == 0 and found, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= most, f"{name}: exposure {exposure} > {most}:\n{result.stdout}"


def test_relay_service_runs_as_its_own_user_and_tells_systemd() -> None:
    unit = settings("relay.service")
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "User": "relay",
        "Group": "relay",
        "StateDirectory": "relay",
        "RuntimeDirectory": "relay",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "WatchdogSec": "30",
    }.items():
        assert unit.get(key) == [value], key
    assert "@system-service" in unit["SystemCallFilter"]
    # The user the unit names is the one etc/relay.sysusers creates.
    assert re.search(r"^u relay ", (ETC / "relay.sysusers").read_text(), re.M)


def test_relay_local_service_keeps_root_for_dev_log_and_var_log() -> None:
    unit = settings("relay-local.service")
    assert "User" not in unit
    assert (unit["Type"], unit["PrivateDevices"]) == (["notify"], ["no"])
    assert unit["ReadWritePaths"] == ["/var/log -/run/systemd/journal"]

"""relay/service/privileges.py: who the relay becomes, and what it hands over.

The tests run as root (as the project's test machine does); the drop itself
is irreversible, so it runs in a child process.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.errors import StartupError
from relay.service import privileges
from relay.service.privileges import Identity

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def test_resolve_names_and_numbers() -> None:
    nobody = Identity("nobody", NOBODY.pw_uid, "nogroup", NOBODY.pw_gid)
    assert privileges.resolve("nobody") == nobody
    assert privileges.resolve(str(NOBODY.pw_uid)) == nobody
    assert privileges.resolve("nobody", "root") == Identity("nobody", NOBODY.pw_uid, "root", 0)
    assert privileges.resolve("nobody", "0") == Identity("nobody", NOBODY.pw_uid, "root", 0)


@pytest.mark.parametrize(
    ("user", "group", "message"),
    [
        ("no-such-user", "", "user no-such-user: no such user"),
        ("nobody", "no-such-group", "group no-such-group: no such group"),
    ],
)
def test_resolve_unknown_is_one_line(user: str, group: str, message: str) -> None:
    with pytest.raises(StartupError) as info:
        privileges.resolve(user, group)
    assert str(info.value) == message


def test_changing_user_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    with pytest.raises(StartupError) as info:
        privileges.check_root(privileges.resolve("nobody"))
    assert str(info.value) == (
        "user nobody: changing user needs root (running as uid 1000); start as root, "
        "or leave out --user and [relay] user"
    )
    # Being that user already is no change.
    privileges.check_root(Identity("me", 1000, "me", 1000))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that other users may enter (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="relay-privileges-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@needs_root
def test_state_dir_made_by_root_is_given_to_the_user(open_dir: Path) -> None:
    state = open_dir / "state"
    (state / "spool" / "up").mkdir(parents=True)
    (state / "lock").touch()
    (state / "spool" / "up" / "00000001.seg").write_bytes(b"x")
    (state / "spool" / "up" / "link").symlink_to("/etc/passwd")
    nobody = privileges.resolve("nobody")
    privileges.give_state_dir(state, nobody)
    for path in [state, *state.rglob("*")]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (nobody.uid, nobody.gid), path
    assert os.stat("/etc/passwd").st_uid == 0  # a link is changed, not what it points to


@needs_root
def test_state_dir_with_a_third_owner_is_refused(open_dir: Path) -> None:
    state = open_dir / "state"
    (state / "spool").mkdir(parents=True)
    os.chown(state / "spool", 4242, 4242)
    with pytest.raises(StartupError) as info:
        privileges.give_state_dir(state, privileges.resolve("nobody"))
    assert str(info.value) == (
        f"state_dir {state}: {state / 'spool'} belongs to uid 4242, not to nobody or root; "
        f"give it to the relay's user (chown -R nobody:nogroup {state}) or use another state_dir"
    )


DROP = """\
import os, sys
from pathlib import Path
from relay.errors import StartupError
from relay.service import privileges
identity = privileges.resolve("nobody")
privileges.drop(identity)
print(os.getresuid(), os.getresgid(), os.getgroups())
try:
    privileges.check_state_dir(Path(sys.argv[1]), identity)
except StartupError as exc:
    print(exc)
"""


@needs_root
def test_drop_takes_for_good(open_dir: Path, tmp_path: Path) -> None:
    """In a child: every uid and gid is nobody's, no supplementary group is left,
    and a state_dir behind a directory closed to nobody is one line."""
    nobody = (NOBODY.pw_uid,) * 3, (NOBODY.pw_gid,) * 3
    for state, verdict in [
        (open_dir, ""),
        (
            tmp_path,
            f"user nobody: cannot write state_dir {tmp_path} as nobody (it or a parent "
            "directory is closed to it); use a state_dir the user can reach",
        ),
    ]:
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        result = subprocess.run(
            [sys.executable, "-c", DROP, str(state)],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        lines = result.stdout.splitlines()
        assert lines[0] == f"{nobody[0]} {nobody[1]} []", result.stderr
        assert lines[1:] == ([verdict] if verdict else [])

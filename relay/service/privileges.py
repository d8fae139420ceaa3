"""Dropping root after the start: ``relay run --user NAME [--group NAME]``.

Started as root, the relay binds every input (ports below 1024, /dev/log),
opens its outputs, locks the state directory and opens the spools; then,
before it reads any message, it becomes the user: supplementary groups
cleared, then group, then user (the order that works: setgid needs root),
each checked to have taken, and a way back to root checked to be closed.

What root created in the state directory (the directory itself, the lock,
spool directories and segments) is given to the user first, so the spools
keep working; anything there that belongs to a third user ends the start
with one line, as it may be another relay's or another program's.

Under systemd use ``User=`` in the unit instead (etc/relay.service):
systemd gives the relay its state directory and the one capability it needs.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
from pathlib import Path

from relay.errors import StartupError


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who the relay becomes."""

    user: str
    uid: int
    group: str
    gid: int


def resolve(user: str, group: str = "") -> Identity:
    """The user (name or number) and group (default: the user's own); StartupError if unknown."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"user {user}: no such user") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"group {group}: no such group") from None
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:  # a primary group without an entry in /etc/group
        group_name = str(gid)
    return Identity(entry.pw_name, entry.pw_uid, group_name, gid)


def check_root(identity: Identity) -> None:
    """Changing user needs root; being that user already is fine."""
    if os.geteuid() == identity.uid and os.getegid() == identity.gid:
        return
    if os.geteuid() != 0:
        raise StartupError(
            f"user {identity.user}: changing user needs root (running as uid {os.geteuid()}); "
            "start as root, or leave out --user and [relay] user"
        )


def give_state_dir(state_dir: Path, identity: Identity) -> None:
    """Hand what root created in ``state_dir`` (and the directory) to the user.

    StartupError if something there belongs to anyone else: one line naming
    it and the command that fixes it.
    """
    for path in [state_dir, *_tree(state_dir)]:
        st = os.lstat(path)
        if st.st_uid == identity.uid:
            continue
        if st.st_uid != 0:
            raise StartupError(
                f"state_dir {state_dir}: {path} belongs to uid {st.st_uid}, not to "
                f"{identity.user} or root; give it to the relay's user "
                f"(chown -R {identity.user}:{identity.group} {state_dir}) or use another state_dir"
            )
        os.lchown(path, identity.uid, identity.gid)


def _tree(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        found += [Path(root, name) for name in dirs + files]
    return found


def drop(identity: Identity) -> None:
    """Become ``identity`` for good; StartupError if any step did not take."""
    if os.geteuid() == identity.uid and os.getegid() == identity.gid:
        return
    try:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise StartupError(
            f"user {identity.user}: cannot change to uid {identity.uid} gid {identity.gid}: "
            f"{exc.strerror or exc}"
        ) from None
    took = (
        os.getresuid() == (identity.uid,) * 3
        and os.getresgid() == (identity.gid,) * 3
        and set(os.getgroups()) <= {identity.gid}
    )
    if took and identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # a way back to root is open: never serve like this
            took = False
    if not took:
        raise StartupError(
            f"user {identity.user}: the change to uid {identity.uid} gid {identity.gid} "
            f"did not take (now uid {os.getresuid()}, gid {os.getresgid()})"
        )


def check_state_dir(state_dir: Path, identity: Identity) -> None:
    """After the drop: the user can write the state directory (its parents let it in)."""
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise StartupError(
            f"user {identity.user}: cannot write state_dir {state_dir} as {identity.user} "
            "(it or a parent directory is closed to it); use a state_dir the user can reach"
        )

"""Who the daemon runs as, and the one-way trip from root to that identity.

Theory of operation: as root, the daemon binds every listener (low ports need it), makes the
API socket and its directory, and reads its certificates and keys; then, once every service's
privilegedStartService has run, it becomes `[daemon] user` / `group` for good: supplementary
groups, then the gid, then the uid (each step needs the privilege the next one takes away), and
it checks that the way back is closed (`setuid(0)` must fail) or refuses to go on.  Everything
the daemon does afterwards (accepting, relaying, removing its socket at stop, reloading files)
happens as that identity.

The supplementary groups are the user's own (initgroups, as `twistd --uid`, `runuser` and
systemd's `User=` do): membership in a group such as `ssl-cert` is how an admin lets the daemon
read its keys again on reload, and a user without extra groups gets none.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Optional

import attrs

from ssaproxy.errors import ConfigError, SsaproxyError


class PrivilegeError(SsaproxyError):
    """The daemon could not become, or stay, the identity it was told to run as."""


@attrs.frozen(kw_only=True)
class Identity:
    """A user to become: ids, and the supplementary groups that go with them."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def resolve(cls, user: str, group: Optional[str] = None) -> Identity:
        """`[daemon] user` / `group` (names, or numbers without a passwd entry) as ids.

        Errors name the key, like every configuration error: an unknown user is a mistake in
        the config file, found before anything listens.
        """
        try:
            entry: Optional[pwd.struct_passwd] = pwd.getpwnam(user)
        except KeyError:
            entry = None
        if entry is not None:
            name, uid, primary = entry.pw_name, entry.pw_uid, entry.pw_gid
        elif user.isdigit():
            uid = int(user)
            try:
                entry = pwd.getpwuid(uid)
            except KeyError:
                entry = None
            name = entry.pw_name if entry is not None else user
            primary = entry.pw_gid if entry is not None else -1
        else:
            raise ConfigError("daemon.user", f"no such user {user!r}")
        gid = primary if group is None else group_id(group)
        if gid is None:
            raise ConfigError("daemon.group", f"no such group {group!r}")
        if gid < 0:
            raise ConfigError("daemon.group", f"user {user!r} has no passwd entry: name its group")
        groups = os.getgrouplist(name, gid) if entry is not None else [gid]
        return cls(name=name, uid=uid, gid=gid, groups=tuple(sorted(set(groups))))

    @classmethod
    def of_ids(cls, uid: int, gid: Optional[int]) -> Identity:
        """The identity `twistd --uid/--gid` switches to (twistd's own rules: the user's primary
        group when --gid is absent, and the user's supplementary groups)."""
        try:
            entry: Optional[pwd.struct_passwd] = pwd.getpwuid(uid)
        except KeyError:
            entry = None
        if gid is None:
            if entry is None:
                raise PrivilegeError(f"uid {uid} has no passwd entry: give --gid too")
            gid = entry.pw_gid
        name = entry.pw_name if entry is not None else str(uid)
        groups = os.getgrouplist(name, gid) if entry is not None else [gid]
        return cls(name=name, uid=uid, gid=gid, groups=tuple(sorted(set(groups))))

    def is_current(self) -> bool:
        """Whether the process already is this identity (nothing to drop)."""
        return os.getresuid() == (self.uid,) * 3 and os.getresgid() == (self.gid,) * 3


def group_id(group: str) -> Optional[int]:
    """A group's id by its name, or its number when no group has that name (None: neither)."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return int(group) if group.isdigit() else None


def drop(identity: Identity) -> None:
    """Become `identity` for good: setgroups, setgid, setuid, in that order, then check.

    The order matters: setgroups and setgid need the privilege that setuid gives up, and a
    process that set its uid first would keep root's groups.  setuid as root sets the real,
    effective and saved uid alike, which is what makes it permanent.
    """
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    check_dropped(identity)


def check_dropped(identity: Identity) -> None:
    """Refuse to go on unless the process is `identity` and cannot become root again.

    Called after our own drop and after twistd's (`--uid`): `twistd --euid` changes only the
    effective ids, which a later `setuid(0)` undoes, and this is where that shows.
    """
    ids = os.getresuid(), os.getresgid()
    if ids != ((identity.uid,) * 3, (identity.gid,) * 3):
        raise PrivilegeError(f"running as uid/gid {ids[0]}/{ids[1]}, not {identity.uid}/{identity.gid} "
                             f"({identity.name}) in all of real, effective and saved")
    if identity.uid == 0:
        return  # told to stay root: nothing to give up
    regains = [os.setuid] if identity.gid == 0 else [os.setuid, os.setgid]
    for regain in regains:
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"{regain.__name__}(0) succeeded after dropping to {identity.name}: "
                             "privileges could be regained")

"""Which `[[profile]]` applies to a program on the socket API: the first, in file order, whose
match_users, match_groups and match_executables all match its SO_PEERCRED credentials.

Names are looked up in the user and group databases once, when the API's generation is made
(a lookup can be slow with a directory service, and must not happen per connection); a reload
looks them up again.  The gid matched is the one SO_PEERCRED gives (the program's effective
gid), as the iptables owner match does for redirected traffic; supplementary groups are not
consulted.  The executable is /proc/PID/exe when the program connected: the kernel vouches for
uid and gid, while a program can choose which binary it runs, so match_executables gives a
program its settings but is not a boundary against that program.
"""

from __future__ import annotations

import grp
import pwd
from typing import Optional

from ssaproxy.config import Profile
from ssaproxy.kernel import Creds


def _number(text: str, lookup: str) -> Optional[int]:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if lookup == "user" else grp.getgrnam(text).gr_gid
    except KeyError:
        return None  # gone since check-config: it matches nobody


class Chooser:
    """The profiles of one configuration, with their users and groups as numbers."""

    def __init__(self, profiles: tuple[Profile, ...]) -> None:
        self.table = [(p, frozenset(n for n in (_number(u, "user") for u in p.users) if n is not None),
                       frozenset(n for n in (_number(g, "group") for g in p.groups) if n is not None))
                      for p in profiles]

    def choose(self, creds: Creds) -> Optional[Profile]:
        for profile, uids, gids in self.table:
            if profile.selects(uids, gids, creds.uid, creds.gid, creds.exe):
                return profile
        return None

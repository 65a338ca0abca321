"""The daemon process's side of starting: becoming its own user, and telling the service
manager when it is ready and when it is stopping.  Wiring only: the platform calls are in
ssaproxy.privileges and ssaproxy.kernel."""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.application import service
from twisted.logger import Logger

from ssaproxy.kernel import Notifier
from ssaproxy.privileges import Identity, PrivilegeError, check_dropped, drop


class Process(service.Service):
    """Starts after every service that binds or loads something, and stops before them.

    privilegedStartService runs once all of theirs have (the listeners are bound, the
    API socket exists, the certificates are loaded): it connects to the manager's notification
    socket while it still may, then drops to `identity` for good.  startService checks the drop
    (whoever made it: this service, or `twistd --uid` in between) and only then says READY=1;
    a daemon that could become root again refuses to run.  stopService says STOPPING=1.

    `identity` None: the daemon runs as whoever started it.  `by_twistd`: twistd drops
    privileges itself (--uid/--gid), so only the check is ours.  `read_later`: files the daemon
    reads again after the drop (the trust store: the API builds a context per program's
    settings), as (config key, path): one its user cannot read is found now, not by a program.
    """

    log = Logger()

    def __init__(self, identity: Optional[Identity], by_twistd: bool = False,
                 notifier: Optional[Notifier] = None, read_later: tuple[tuple[str, str], ...] = ()) -> None:
        self.identity = identity
        self.by_twistd = by_twistd
        self.read_later = read_later
        self.notifier = notifier if notifier is not None else Notifier()
        self.prepared = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.prepared:
            return
        self.prepared = True
        try:
            self.notifier.open()
        except OSError as e:
            self._refuse(f"cannot reach the service manager at NOTIFY_SOCKET={self.notifier.address}: {e}")
        identity = self.identity
        if identity is None or self.by_twistd or identity.is_current():
            return
        try:
            drop(identity)
        except (OSError, PrivilegeError) as e:
            self._refuse(f"cannot run as {identity.name} (uid {identity.uid}, gid {identity.gid}): {e}")
        self.log.info("privileges dropped: now uid={uid} gid={gid} groups={groups} ({user})", uid=identity.uid,
                      gid=identity.gid, groups=",".join(map(str, identity.groups)) or "(none)", user=identity.name)

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()  # started without twistd (tests): nothing was privileged-started
        if self.identity is not None:
            try:
                check_dropped(self.identity)
            except PrivilegeError as e:
                self._refuse(str(e))
            for key, path in self.read_later:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as e:
                    self._refuse(f"{key}: {path} cannot be read as {self.identity.name}, who reads it again "
                                 f"after start ({e.strerror})")
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", "STATUS=serving")

    def stopService(self) -> Any:
        super().stopService()
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        return None

    def _refuse(self, problem: str) -> None:
        """Stop before the reactor runs: nothing is served by a daemon in the wrong state."""
        self.log.critical("{problem}: not starting", problem=problem)
        raise SystemExit(1)

"""A worker process of a daemon with `[daemon] workers` above 1: `python -m ssaproxy.worker`,
started by the main process (ssaproxy.supervisor), never by hand.

Theory of operation.  The main process has bound every listener (one SO_REUSEPORT socket per
worker for each TCP listener, one API socket for all) and started this process with them as
inherited descriptors.  Before anything else the worker reads its start-up facts (a JSON
document: the config file, whom to run as, which descriptor is which listener) from
descriptor 3 until end of file; then it builds the
very service a single-process daemon builds (ssaproxy.service.make_service), whose listeners
adopt the inherited sockets instead of binding, drops privileges as that daemon does, and runs
the reactor until SIGTERM, after which it drains like it.  Its log events go to descriptor 1 as
JSON lines, which the main process logs as its own with the worker's number and pid; readiness
(READY=1) goes to descriptor 4, which the main process reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any, Optional

from ssaproxy.kernel import Notifier

START_FD = 3  # the start-up document, read until end of file
NOTIFY_FD = 4  # READY=1 / STOPPING=1 lines to the main process
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ToMain(Notifier):
    """The readiness protocol, spoken to the main process instead of the service manager."""

    def __init__(self, fd: int) -> None:
        super().__init__({})
        self.fd: Optional[int] = fd

    def open(self) -> None:
        pass

    def send(self, *assignments: str) -> bool:
        if self.fd is None:
            return False
        try:
            os.write(self.fd, ("\t".join(assignments) + "\n").encode())
        except OSError:
            return False  # the main process is gone: nobody to tell
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def read_start(fd: int = START_FD) -> dict[str, Any]:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    start: dict[str, Any] = json.loads(b"".join(chunks))
    return start


def _die_with_main() -> None:
    """A worker whose main process is gone (killed outright) stops too: nobody would restart,
    signal or answer for it (PR_SET_PDEATHSIG; the parent may have gone just before)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        raise SystemExit(1)


def main() -> None:
    _die_with_main()
    # A process group of its own: Ctrl-C at a terminal signals the foreground group, and a worker
    # must hear of a stop once, from the main process (a second stop signal ends its drain).
    os.setpgid(0, 0)
    start = read_start()
    from twisted.internet import epollreactor  # noqa: PLC0415 - entry point: the reactor is chosen here

    epollreactor.install()
    from twisted.internet import reactor  # noqa: PLC0415
    from twisted.logger import globalLogBeginner, jsonFileLogObserver  # noqa: PLC0415

    out = open(1, "w", buffering=1, closefd=False, encoding="utf-8")  # noqa: SIM115 - for the process's life
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(out, recordSeparator="")], redirectStandardIO=False)

    from ssaproxy.capacity import Listener, Port  # noqa: PLC0415 - after the reactor is installed
    from ssaproxy.errors import ConfigError, StartupError  # noqa: PLC0415
    from ssaproxy.privileges import Identity  # noqa: PLC0415
    from ssaproxy.service import make_service, refuse_to_start  # noqa: PLC0415
    from ssaproxy.state import WorkerRole  # noqa: PLC0415
    from ssaproxy.tls.load import read_config  # noqa: PLC0415

    Listener.inherited = {(interface, port): fd for interface, port, fd in start["listeners"]}
    Listener.bind_late = True
    Port.reuse_port = True
    role = WorkerRole(index=start["index"], workers=start["workers"], api_fd=start["api_fd"], notify_fd=NOTIFY_FD,
                      shared_dir=start["shared_dir"])
    ids = start["identity"]
    identity = Identity(name=ids["name"], uid=ids["uid"], gid=ids["gid"], groups=tuple(ids["groups"])) if ids else None
    try:
        config = read_config(start["config"])
        top = make_service(config, reactor, identity, start["by_twistd"], worker=role, notifier=ToMain(NOTIFY_FD))
    except (ConfigError, StartupError) as e:
        refuse_to_start(e)
    top.privilegedStartService()
    _die_with_main()  # again: a change of credentials (the privilege drop) clears the setting
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
    sys.exit(0)

"""`twistd ssaproxy`: options and the service maker (the reactor is imported only here)."""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.application import service
from twisted.python import usage

from ssaproxy import __version__
from ssaproxy.config import DEFAULT_SOURCE
from ssaproxy.config.host import MAX_WORKERS
from ssaproxy.errors import ConfigError, StartupError
from ssaproxy.privileges import Identity, PrivilegeError
from ssaproxy.service import Startup, make_service, refuse_to_start
from ssaproxy.supervisor import Supervisor
from ssaproxy.tls.load import check_config, read_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (f"Run the ssaproxy {__version__} daemon: transparent outbound upgrade to verified TLS, TLS "
                "termination for [[inbound]] listeners, and the local socket API.  Without --config it runs on "
                "the embedded default (loopback listener, system trust store, TLS 1.2+).  A configuration the "
                "daemon refuses, or a listener or socket path it cannot use (a port in use, a low port without "
                "root, an API socket another daemon serves), ends the start with one line on stderr and exit "
                "status 2.  Check a file first with `ssaproxy check-config FILE`; the example "
                "config/ssaproxy.toml shows every key.  With [daemon] workers above 1 (the default: one per CPU; "
                "SSAPROXY_WORKERS in the environment sets it when the file does not) a main process binds "
                "every listener and runs that many worker processes, restarting one that dies; SIGTERM drains "
                "them all and SIGHUP reloads them all.")
    optParameters = [["config", "c", None,
                      "TOML configuration file (default: the embedded default; see `man ssaproxy`)"]]

    def postOptions(self) -> None:
        try:
            self.config = read_config(self["config"])
            self.identity, self.by_twistd = self._identity()
        except (ConfigError, PrivilegeError) as e:
            # One line and exit 2, as `ssaproxy check-config` says it; a UsageError would print
            # the whole of --help first.
            refuse_to_start(f"{self['config'] or DEFAULT_SOURCE}: {e}", logging=False)

    def _identity(self) -> tuple[Optional[Identity], bool]:
        """Whom the daemon becomes after binding, and whether twistd makes the switch.

        `[daemon] user` is the recommended way (the daemon drops, checks, and owns its API
        socket); `twistd --uid/--gid` works too, and is then only checked.  Both at once would
        be two answers to one question, so that is refused, like a switch only root can make.
        """
        twistd: Any = getattr(self, "parent", None)
        uid = twistd.get("uid") if twistd is not None else None
        gid = twistd.get("gid") if twistd is not None else None
        daemon = self.config.daemon
        if daemon.user is not None:
            if uid is not None or gid is not None:
                raise ConfigError("daemon.user", "twistd --uid/--gid says the same thing: use one of them")
            identity = Identity.resolve(daemon.user, daemon.group)
            if os.geteuid() != 0 and not identity.is_current():
                raise ConfigError("daemon.user", f"becoming {identity.name} needs root (running as uid {os.geteuid()})")
            return identity, False
        if uid is not None:
            return Identity.of_ids(uid, gid), True
        return None, False


def worker_count(configured: Optional[int], environ: Optional[dict[str, str]] = None) -> int:
    """`[daemon] workers`, or when the file does not say: SSAPROXY_WORKERS from the environment
    (a default for a whole host or test run; the file wins), else one per CPU."""
    if configured is not None:
        return configured
    text = (os.environ if environ is None else environ).get("SSAPROXY_WORKERS", "")
    if text:
        if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
            raise ConfigError("daemon.workers", f"SSAPROXY_WORKERS must be 1-{MAX_WORKERS}, got {text!r}")
        return int(text)
    return len(os.sched_getaffinity(0)) or 1


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor  # noqa: PLC0415 - the reactor twistd installed, at run time only

    try:
        workers = worker_count(options.config.daemon.workers)
        if workers > 1:
            check_config(options.config)
            top = Startup()
            Supervisor(options.config, reactor, options.identity, options.by_twistd, workers).setServiceParent(top)
            return top
        return make_service(options.config, reactor, options.identity, options.by_twistd)
    except (ConfigError, StartupError) as e:
        refuse_to_start(f"{options.config.source}: {e}" if isinstance(e, ConfigError) else e)

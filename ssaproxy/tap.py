"""`twistd ssaproxy`: options and the service maker (the reactor is imported only here)."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from ssaproxy import __version__
from ssaproxy.config import DEFAULT_SOURCE
from ssaproxy.errors import ConfigError, StartupError
from ssaproxy.service import make_service, refuse_to_start
from ssaproxy.tls.load import read_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (f"Run the ssaproxy {__version__} daemon: transparent outbound upgrade to verified TLS, TLS "
                "termination for [[inbound]] listeners, and the local socket API.  Without --config it runs on "
                "the embedded default (loopback listener, system trust store, TLS 1.2+).  A configuration the "
                "daemon refuses, or a listener or socket path it cannot use (a port in use, a low port without "
                "root, an API socket another daemon serves), ends the start with one line on stderr and exit "
                "status 2.  Check a file first with `ssaproxy check-config FILE`; the example "
                "config/ssaproxy.toml shows every key.")
    optParameters = [["config", "c", None,
                      "TOML configuration file (default: the embedded default; see `man ssaproxy`)"]]

    def postOptions(self) -> None:
        try:
            self.config = read_config(self["config"])
        except ConfigError as e:
            # One line and exit 2, as `ssaproxy check-config` says it; a UsageError would print
            # the whole of --help first.
            refuse_to_start(f"{self['config'] or DEFAULT_SOURCE}: {e}", logging=False)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor  # noqa: PLC0415 - the reactor twistd installed, at run time only

    try:
        return make_service(options.config, reactor)
    except (ConfigError, StartupError) as e:
        refuse_to_start(f"{options.config.source}: {e}" if isinstance(e, ConfigError) else e)

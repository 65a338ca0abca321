"""`twistd ssaproxy`: options and the service maker (the reactor is imported only here)."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from ssaproxy import __version__
from ssaproxy.errors import ConfigError
from ssaproxy.service import make_service
from ssaproxy.tls.load import read_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (f"Run the ssaproxy {__version__} daemon.  Without --config it runs on the embedded default "
                "(loopback listener, system trust store, TLS 1.2+).")
    optParameters = [["config", "c", None, "TOML configuration file"]]

    def postOptions(self) -> None:
        try:
            self.config = read_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"bad configuration {self['config'] or ''}: {e}") from None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor  # noqa: PLC0415 - the reactor twistd installed, at run time only

    return make_service(options.config, reactor)
